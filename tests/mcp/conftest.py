"""Fixtures for the MCP proofs: a real 3-node cluster (clients/python/tests/cluster.py) where
node1 serves a demo agent (`echo`), node2 joins a FastMCP server (fastmcp_server.py, its own
process) through `[mcp]` with an RBAC policy that allows `tools.add` and denies `tools.secret`,
and node3 serves a demo agent registered at run time with a typed capability
(`weather.forecast`, description and input schema). MCP clients are the official `mcp` SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "clients/python/src"))
sys.path.insert(0, str(ROOT / "clients/python/tests"))

from cluster import Cluster, agentmesh_bin, free_port, wait_until  # noqa: E402

POLICY = """
version = 1
[[deny]]
caller_roles = ["*"]
capabilities = ["tools.secret"]
[[allow]]
caller_roles = ["*"]
"""

#: The typed capability's input schema.
FORECAST_SCHEMA = {
    "type": "object",
    "required": ["city"],
    "additionalProperties": False,
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
}


def start_fastmcp(d: Path, procs: list) -> str:
    port = free_port()
    url_file = d / f"fastmcp-{port}.url"
    log = open(d / f"fastmcp-{port}.log", "wb")
    p = subprocess.Popen(
        [sys.executable, str(HERE / "fastmcp_server.py"), str(port), str(url_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    procs.append(p)
    return wait_until("fastmcp up", 20, lambda: url_file.exists() and url_file.read_text())


def http_json(method: str, url: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def tools_of(api: str) -> set:
    v = http_json("GET", f"{api}/v1/capabilities")
    return set(v["capabilities"].keys())  # type: ignore[index]


@pytest.fixture(scope="session")
def mesh():
    if not Path(agentmesh_bin()).exists():
        pytest.fail(f"agentmesh binary not found at {agentmesh_bin()}")
    d = Path(tempfile.mkdtemp(prefix="agentmesh-mcp-"))
    c = Cluster(d)
    extra: list = []
    try:
        (d / "policy.toml").write_text(POLICY)
        secured = (
            f'[audit]\ndir = "audit"\nfsync = "always"\n'
            f'[rbac]\npolicy_file = "{d / "policy.toml"}"\n'
        )
        fast_url = start_fastmcp(d, extra)
        c.node(["echo"], extra_toml=secured)
        c.node(
            [],
            extra_toml=(
                secured + f'[mcp]\nagent = "py-tools"\n[[mcp.servers]]\nname = "py"\n'
                f'url = "{fast_url}"\n'
                f'[mcp.servers.tools.add]\ncapability = "tools.add"\nproficiency = "expert"\n'
                f'[mcp.servers.tools.secret]\ncapability = "tools.secret"\n'
            ),
        )
        c.node([])
        weather = c.agent("weather")
        http_json(
            "PUT",
            f"{c.nodes[2]['api']}/v1/agent",
            {
                "name": "weather",
                "handler": weather,
                "capabilities": [
                    {
                        "name": "weather.forecast",
                        "description": "Forecast for a city",
                        "input_schema": FORECAST_SCHEMA,
                    }
                ],
            },
        )
        c.converge()
        want = {"echo", "tools.add", "tools.secret", "weather.forecast"}
        for n in c.nodes:
            wait_until(f"{n['api']} sees {want}", 30, lambda n=n: want <= tools_of(n["api"]))
        c.fast_url = fast_url  # type: ignore[attr-defined]
        c.extra = extra  # type: ignore[attr-defined]
        yield c
    finally:
        c.close()
        for p in extra:
            p.kill()
            p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)
