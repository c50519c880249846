"""The mesh through the official MCP Python SDK: tools/list over a 3-node mesh, tools/call
routed to another node, typed mesh errors as tool errors, schema validation before routing,
a FastMCP server joined as an agent with RBAC allowing one tool and denying the other (both
audited), the stdio bridge, and list_changed when a new agent joins."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any, List

import mcp.types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from conftest import http_json, tools_of, wait_until


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def with_session(url: str, f, handler=None) -> Any:
    async with streamable_http_client(url) as (r, w, _):
        async with ClientSession(r, w, message_handler=handler) as s:
            await s.initialize()
            return await f(s)


def mcp_url(mesh, i: int) -> str:
    return f"{mesh.nodes[i]['api']}/mcp"


def error_of(res: types.CallToolResult) -> dict:
    assert res.isError, res
    return res.structuredContent or json.loads(res.content[0].text)  # type: ignore[union-attr]


def test_tools_list_shows_the_whole_mesh_with_schemas(mesh):
    async def f(s: ClientSession):
        return (await s.list_tools()).tools

    tools = {t.name: t for t in run(with_session(mcp_url(mesh, 0), f))}
    # One capability from each node: node1's own agent, node2's MCP server, node3's agent.
    assert {"echo", "tools.add", "tools.secret", "weather.forecast"} <= set(tools)
    fc = tools["weather.forecast"]
    assert fc.description == "Forecast for a city"
    assert fc.inputSchema["required"] == ["city"]
    assert fc.inputSchema["properties"]["days"]["maximum"] == 14
    # The FastMCP tool's own description and schema crossed two nodes intact.
    add = tools["tools.add"]
    assert add.description == "Adds two integers."
    assert set(add.inputSchema["properties"]) == {"a", "b"}


def test_capabilities_cli_and_api_show_descriptions_and_schemas(mesh):
    # node1 holds none of these schemas: it fetched them from their owners by hash.
    v = http_json("GET", f"{mesh.nodes[0]['api']}/v1/capabilities")
    d = {c["name"]: c for c in v["details"]}  # type: ignore[index]
    fc = d["weather.forecast"]
    assert fc["description"] == "Forecast for a city"
    assert fc["input_schema"]["properties"]["days"]["maximum"] == 14
    assert len(fc["input_schema_hash"]) == 64
    assert d["tools.add"]["output_schema"]["properties"]["result"]["type"] == "integer"
    out = mesh.cli("capabilities", "--api", mesh.nodes[0]["api"])
    line = next(l for l in out.splitlines() if l.startswith("weather.forecast"))
    assert "weather@" in line and "Forecast for a city" in line
    assert '"maximum":14' in out


def test_call_is_routed_to_another_node(mesh):
    async def f(s: ClientSession):
        return await s.call_tool(
            "weather.forecast", {"city": "Paris", "days": 3}, meta={"agentmesh.deadline_ms": 5000}
        )

    res = run(with_session(mcp_url(mesh, 0), f))
    assert not res.isError, res
    out = res.structuredContent
    # node1's client, node3's agent: the demo agent echoes what it got and who it is.
    assert out["agent"] == "weather"
    assert out["capability"] == "weather.forecast"
    assert out["input"] == {"city": "Paris", "days": 3}
    assert "x-mesh-chain" in out["received_headers"]


def test_unknown_tool_is_a_tool_error_with_no_capability(mesh):
    async def f(s: ClientSession):
        return await s.call_tool("no.such.tool", {})

    e = error_of(run(with_session(mcp_url(mesh, 0), f)))
    assert e["code"] == "no_capability"


def test_schema_breaking_input_is_bad_request_naming_the_path(mesh):
    async def f(s: ClientSession):
        return [
            await s.call_tool("weather.forecast", {"city": 5}),
            await s.call_tool("weather.forecast", {"city": "P", "days": 15}),
            await s.call_tool("weather.forecast", {}),
        ]

    e1, e2, e3 = (error_of(r) for r in run(with_session(mcp_url(mesh, 0), f)))
    assert e1["code"] == "bad_request" and e1["field"] == "$.city"
    assert e1["message"] == (
        '$.city: 5 is not of type "string" (rule: type at /properties/city/type)'
    )
    assert e2["field"] == "$.days"
    assert e2["message"] == (
        "$.days: 15 is greater than the maximum of 14 (rule: maximum at /properties/days/maximum)"
    )
    assert e3["field"] == "$"
    assert "required" in e3["message"]
    # No hop was made: the agent on node3 saw none of these calls (no inbound on node3).
    metrics = urllib.request.urlopen(f"{mesh.nodes[0]['api']}/metrics", timeout=10).read().decode()
    line = [
        l for l in metrics.splitlines()
        if l.startswith("agentmesh_input_rejected_total") and "weather.forecast" in l
    ]
    assert line and float(line[0].split()[-1]) >= 3, line


def test_http_api_validates_the_same_way(mesh):
    req = urllib.request.Request(
        f"{mesh.nodes[1]['api']}/v1/call/weather.forecast",
        data=json.dumps({"city": 5}).encode(),
        method="POST",
    )
    req.add_header("content-type", "application/json")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("expected 400")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        body = json.loads(e.read())
    assert body["code"] == "bad_request" and body["field"] == "$.city"


def audit(mesh, i: int, capability: str) -> List[dict]:
    v = http_json("GET", f"{mesh.nodes[i]['api']}/v1/audit?capability={capability}")
    return v["entries"]  # type: ignore[index]


def test_fastmcp_tools_through_the_mesh_with_rbac_and_audit(mesh):
    async def f(s: ClientSession):
        return (
            await s.call_tool("tools.add", {"a": 2, "b": 3}),
            await s.call_tool("tools.secret", {"name": "x"}),
        )

    ok, denied = run(with_session(mcp_url(mesh, 0), f))
    assert not ok.isError, ok
    assert ok.structuredContent == {"result": 5}
    assert error_of(denied)["code"] == "forbidden"
    # Both audited on the calling node; the allowed one also on the serving node.
    wait_until("add audited", 10, lambda: any(
        e["decision"] == "allow" and e["outcome"] == "ok" for e in audit(mesh, 0, "tools.add")))
    wait_until("secret audited", 10, lambda: any(
        e["decision"] == "deny" for e in audit(mesh, 0, "tools.secret")))
    wait_until("add audited inbound", 10, lambda: any(
        e.get("side") == "inbound" and e["outcome"] == "ok" for e in audit(mesh, 1, "tools.add")))
    # The node lists the server and what it registered from it.
    servers = http_json("GET", f"{mesh.nodes[1]['api']}/v1/mcp/servers")["servers"]  # type: ignore[index]
    assert servers[0]["status"] == "connected"
    assert servers[0]["tools"] == {"add": "tools.add", "secret": "tools.secret"}


def test_stdio_bridge_with_the_sdk_stdio_client(mesh):
    params = StdioServerParameters(
        command=mesh.bin, args=["mcp", "stdio", "--api", mesh.nodes[2]["api"]]
    )

    async def go():
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                names = {t.name for t in (await s.list_tools()).tools}
                res = await s.call_tool("tools.add", {"a": 40, "b": 2})
                bad = await s.call_tool("weather.forecast", {"city": 5})
                return names, res, bad

    names, res, bad = run(go())
    assert {"echo", "tools.add", "weather.forecast"} <= names
    assert res.structuredContent == {"result": 42}
    assert error_of(bad)["field"] == "$.city"


def test_list_changed_when_an_agent_joins(mesh):
    got: List[Any] = []

    async def handler(msg: Any) -> None:
        if isinstance(msg, types.ServerNotification) and isinstance(
            msg.root, types.ToolListChangedNotification
        ):
            got.append(msg)

    async def f(s: ClientSession):
        before = {t.name for t in (await s.list_tools()).tools}
        assert "late.cap" not in before
        # A new node joins with an agent offering a new capability.
        await asyncio.to_thread(mesh.node, ["late.cap"])
        for _ in range(300):
            if got:
                break
            await asyncio.sleep(0.1)
        assert got, "no notifications/tools/list_changed arrived"
        for _ in range(100):
            after = {t.name for t in (await s.list_tools()).tools}
            if "late.cap" in after:
                return after
            await asyncio.sleep(0.1)
        return after

    after = run(with_session(mcp_url(mesh, 0), f, handler))
    assert "late.cap" in after


def test_a_server_that_goes_away_is_unregistered(mesh):
    """Runs last: stops the FastMCP server; node2 unregisters its tools and the mesh stops
    offering them."""
    for p in mesh.extra:
        p.kill()
        p.wait(timeout=10)
    wait_until("tools.add gone from node1", 30, lambda: "tools.add" not in tools_of(mesh.nodes[0]["api"]))
    servers = http_json("GET", f"{mesh.nodes[1]['api']}/v1/mcp/servers")["servers"]  # type: ignore[index]
    assert servers[0]["tools"] == {}
    assert servers[0]["status"] != "connected"

    async def f(s: ClientSession):
        return await s.call_tool("tools.add", {"a": 1, "b": 1})

    assert error_of(run(with_session(mcp_url(mesh, 0), f)))["code"] == "no_capability"
