"""Names shared by the A2A fixtures and tests."""

#: The skill id of the SDK agent.
SKILL = "translate"
#: The capability the skill is offered as in the mesh.
CAPABILITY = "text.translate"
