"""Names shared by the A2A fixtures and tests."""

#: The skill id of the SDK agent.
SKILL = "translate"
#: The capability the skill is offered as in the mesh.
CAPABILITY = "text.translate"
#: The SDK agent's streaming skill, and the capability it is offered as (default mapping).
STREAM_SKILL = "narrate"
STREAM_CAPABILITY = "narrate"
