"""An A2A agent built with the official a2a-sdk: one skill (`translate`) that answers with a
Message echoing the text and the data it got. Serves its card at
/.well-known/agent-card.json and JSON-RPC at /. Usage: sdk_agent.py PORT [ADDR_FILE]."""

from __future__ import annotations

import sys

import uvicorn
from a2a.helpers import get_data_parts, get_message_text, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.server.routes.jsonrpc_routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette


class Translator(AgentExecutor):
    """Answers every message at once with `translated: <text>` (and the data parts, as text)."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        msg = context.message
        text = get_message_text(msg) if msg else ""
        data = get_data_parts(msg.parts) if msg else []
        reply = f"translated: {text}" if text else f"translated data: {data}"
        await event_queue.enqueue_event(new_text_message(reply, context_id=context.context_id))

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
            )
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
