"""An A2A agent built with the official a2a-sdk. Skill `translate` answers with a Message
echoing the text and the data it got. Skill `narrate` streams: it opens a task, sends a first
artifact chunk, then waits (bounded) until the file named by the message text exists before it
sends the second chunk and completes, so a test can prove the first chunk reached the client
while the agent was still working. Serves its card at /.well-known/agent-card.json and
JSON-RPC at /. Usage: sdk_agent.py PORT [ADDR_FILE]."""

from __future__ import annotations

import asyncio
import os
import sys

import uvicorn
from a2a.helpers import get_data_parts, get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Part, Task, TaskState, TaskStatus
from starlette.applications import Starlette


#: How long `narrate` waits for its gate file.
GATE_WAIT_S = 20.0


class Translator(AgentExecutor):
    """`translate`: answers at once with `translated: <text>` (and the data parts, as text).
    `narrate`: streams two artifact chunks with a gate in between (see the module doc)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        msg = context.message
        text = get_message_text(msg) if msg else ""
        meta = msg.metadata.fields if msg else {}
        skill = meta["agentmesh.skill"].string_value if "agentmesh.skill" in meta else ""
        if skill == "narrate":
            await self.narrate(context, event_queue, text)
            return
        data = get_data_parts(msg.parts) if msg else []
        reply = f"translated: {text}" if text else f"translated data: {data}"
        await event_queue.enqueue_event(new_text_message(reply, context_id=context.context_id))

    async def narrate(self, context: RequestContext, event_queue: EventQueue, gate: str) -> None:
        task = context.current_task or Task(
            id=context.task_id,
            context_id=context.context_id,
            status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED),
            history=[context.message],
        )
        await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        await up.start_work()
        await up.add_artifact([Part(text="once upon a time, ")], artifact_id="story", append=False)
        waited = 0.0
        while not os.path.exists(gate) and waited < GATE_WAIT_S:
            await asyncio.sleep(0.02)
            waited += 0.02
        ending = "the end" if os.path.exists(gate) else "the gate never opened"
        await up.add_artifact([Part(text=ending)], artifact_id="story", append=True, last_chunk=True)
        await up.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def card(url: str) -> AgentCard:
    return AgentCard(
        name="sdk-translator",
        description="Translates text (a2a-sdk test agent)",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="translate",
                name="Translate",
                description="Translate text to French",
                tags=["language"],
            ),
            AgentSkill(
                id="narrate",
                name="Narrate",
                description="Tells a story in streamed chunks",
                tags=["streaming"],
            ),
        ],
    )


def app(port: int) -> Starlette:
    c = card(f"http://127.0.0.1:{port}/")
    handler = DefaultRequestHandler(agent_executor=Translator(), task_store=InMemoryTaskStore(), agent_card=c)
    routes = create_agent_card_routes(c) + create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True)
    return Starlette(routes=routes)


if __name__ == "__main__":
    port = int(sys.argv[1])
    config = uvicorn.Config(app(port), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    if len(sys.argv) > 2:
        import asyncio

        async def main() -> None:
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.05)
            with open(sys.argv[2], "w") as f:
                f.write(f"127.0.0.1:{port}")
            await task

        asyncio.run(main())
    else:
        server.run()
