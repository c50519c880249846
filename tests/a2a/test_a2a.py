"""A2A interoperability, proven with the official a2a-sdk: an SDK-built agent registers through
its Agent Card, an SDK client calls skills through the mesh, the answers round-trip."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import pytest
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_stream_response_text
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState

from agentmesh import Client, MeshError

from a2a_names import CAPABILITY, SKILL, STREAM_CAPABILITY, STREAM_SKILL
from cluster import wait_until


def sdk_message(text: str, skill: str | None) -> SendMessageRequest:
    m = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)])
    if skill:
        m.metadata.update({"agentmesh.skill": skill})
    return SendMessageRequest(message=m)


async def sdk_call(base_url: str, text: str, skill: str | None, streaming: bool) -> str:
    """Resolves the card at base_url with the SDK and sends one message; returns the text."""
    client = await create_client(base_url, client_config=ClientConfig(streaming=streaming))
    out = []
    async for ev in client.send_message(sdk_message(text, skill)):
        out.append(get_stream_response_text(ev))
    await client.close()
    return "".join(out)


def test_sdk_agent_registers_through_its_card(mesh):
    c2 = Client(mesh.nodes[1]["api"], token="")
    out = c2.register(
        mesh.agent_url + "/.well-known/agent-card.json",
        skills={SKILL: {"capability": CAPABILITY, "proficiency": "expert", "cost": 0.2}},
    )
    assert out["agent"] == "sdk-translator"
    assert out["capabilities"] == [CAPABILITY, STREAM_CAPABILITY]
    assert out["skills"] == {CAPABILITY: SKILL, STREAM_CAPABILITY: STREAM_SKILL}
    # The whole mesh learns it by gossip.
    c3 = Client(mesh.nodes[2]["api"], token="")
    wait_until(
        "node3 sees text.translate on node2",
        30,
        lambda: any(
            CAPABILITY in m["capabilities"] and m["node_id"] == mesh.nodes[1]["id"]
            for m in c3.members()
        ),
    )


def test_config_card_discovery_registers_the_agent(mesh):
    c4 = Client(mesh.nodes[3]["api"], token="")
    wait_until(
        "node4 learnt its agent from [a2a] handler",
        30,
        lambda: any(m["local"] and CAPABILITY in m["capabilities"] for m in c4.members()),
    )


def test_mesh_call_is_forwarded_to_the_a2a_agent(mesh):
    test_sdk_agent_registers_through_its_card(mesh)
    c1 = Client(mesh.nodes[0]["api"], token="")
    for _ in range(4):  # both A2A-backed nodes get calls
        r = c1.call_raw(CAPABILITY, {"text": "bonjour"}, deadline=10)
        assert r.body == {"text": "translated: bonjour"}, r.body


def test_aggregate_card_lists_every_capability(mesh):
    test_sdk_agent_registers_through_its_card(mesh)
    with urllib.request.urlopen(mesh.nodes[2]["api"] + "/.well-known/agent-card.json") as r:
        card = json.load(r)
    ids = {s["id"] for s in card["skills"]}
    assert {"echo", CAPABILITY} <= ids
    assert card["supportedInterfaces"][0]["url"].endswith("/a2a")
    uris = [e["uri"] for e in card["capabilities"]["extensions"]]
    assert "urn:agentmesh:a2a:skill-metadata:v1" in uris


@pytest.mark.parametrize("streaming", [False, True])
def test_sdk_client_calls_a2a_skill_through_the_mesh(mesh, streaming):
    test_sdk_agent_registers_through_its_card(mesh)
    text = asyncio.run(sdk_call(mesh.nodes[2]["api"], "hello", CAPABILITY, streaming))
    assert text == "translated: hello"


async def sdk_stream_with_gate(base_url: str, gate) -> "tuple[list, list]":
    """Streams `narrate` through the mesh with the SDK client. The agent sends its first chunk,
    then holds until the gate file exists; the gate is opened only once the first chunk has
    reached this client, so the story ends "the end" only if chunks arrive as they are sent
    (a buffered stream would deliver nothing until the agent gave up: "the gate never opened")."""
    client = await create_client(base_url, client_config=ClientConfig(streaming=True))
    kinds, chunks = [], []
    try:
        async for ev in client.send_message(sdk_message(str(gate), STREAM_CAPABILITY)):
            kind = next(k for k in ("task", "message", "status_update", "artifact_update") if ev.HasField(k))
            kinds.append(kind)
            if kind == "artifact_update":
                chunks.append(get_stream_response_text(ev))
                if len(chunks) == 1:
                    assert not gate.exists(), "the agent is still working when chunk 1 arrives"
                    gate.touch()
            if kind == "status_update":
                kinds.append(TaskState.Name(ev.status_update.status.state))
    finally:
        await client.close()
    return kinds, chunks


def test_sdk_streaming_client_gets_chunks_as_the_agent_sends_them(mesh, tmp_path):
    test_sdk_agent_registers_through_its_card(mesh)
    gate = tmp_path / "gate"
    kinds, chunks = asyncio.run(sdk_stream_with_gate(mesh.nodes[2]["api"], gate))
    assert chunks == ["once upon a time, ", "the end"], chunks
    assert kinds[0] == "task" and kinds[-1] == "TASK_STATE_COMPLETED", kinds


def test_mesh_stream_reaches_a_plain_client_incrementally(mesh, tmp_path):
    test_sdk_agent_registers_through_its_card(mesh)
    gate = tmp_path / "gate"
    c1 = Client(mesh.nodes[0]["api"], token="")
    events = []
    for ev in c1.stream(STREAM_CAPABILITY, {"text": str(gate)}, deadline=20):
        events.append(ev)
        if len(events) == 1:
            assert not gate.exists()
            gate.touch()
    assert events == [
        {"chunk": {"text": "once upon a time, "}},
        {"chunk": {"text": "the end"}},
        {"done": None},
    ], events


def test_stream_of_a_non_streaming_agent_is_one_answer(mesh):
    c3 = Client(mesh.nodes[2]["api"], token="")
    events = list(c3.stream("echo", {"x": 1}, deadline=10))
    assert len(events) == 1 and events[0]["done"]["capability"] == "echo", events


def test_sdk_client_calls_a_plain_http_agent_through_the_mesh(mesh):
    text = asyncio.run(sdk_call(mesh.nodes[2]["api"], "ping", "echo", False))
    # The demo agent echoes JSON; the node hands it back as a data part (no text).
    assert text == ""
    client = asyncio.run(_raw_rpc(mesh.nodes[2]["api"], "ping", "echo"))
    assert client["result"]["message"]["parts"][0]["data"]["capability"] == "echo"


def test_unknown_skill_is_a_jsonrpc_error(mesh):
    out = asyncio.run(_raw_rpc(mesh.nodes[2]["api"], "x", "no.such.skill"))
    assert out["error"]["code"] == -32603
    assert out["error"]["data"]["code"] == "no_capability"


def test_bad_card_is_refused_with_the_field(mesh):
    with pytest.raises(MeshError) as e:
        Client(mesh.nodes[2]["api"], token="").register({"name": "x", "skills": []})
    assert e.value.status == 400 and e.value.field == "card"


async def _raw_rpc(api: str, text: str, skill: str) -> dict:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": "m1",
                "role": "ROLE_USER",
                "parts": [{"text": text}],
                "metadata": {"agentmesh.skill": skill},
            }
        },
    }
    req = urllib.request.Request(
        api + "/a2a", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.load(r)
