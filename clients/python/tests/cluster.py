"""A real local cluster for the Python tests: a mesh root, three nodes with enforced admission on
loopback, demo agents, all started from the built `agentmesh` binary and killed at the end.

The binary is `$AGENTMESH_BIN`, else `$CARGO_TARGET_DIR/debug/agentmesh` (scripts/test builds
it); it is copied first, since a shared target dir may be rebuilt while the tests run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from agentmesh import Client  # noqa: E402

#: How long a node or agent may take to come up, in seconds.
START_TIMEOUT_S = 20.0
#: How long membership may take to converge, in seconds.
CONVERGE_TIMEOUT_S = 30.0

T = TypeVar("T")


def wait_until(what: str, timeout: float, cond: Callable[[], Optional[T]]) -> T:
    """Polls ``cond`` every 100 ms until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def agentmesh_bin() -> str:
    b = os.environ.get("AGENTMESH_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/agentmesh-target"))
    return str(Path(target) / "debug" / "agentmesh")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """Nodes and agents in a temp dir; :meth:`close` kills them all."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.procs: List[subprocess.Popen] = []
        self.bin = str(root / "agentmesh")
        shutil.copy2(agentmesh_bin(), self.bin)
        self.root_pub = self.cli("mesh", "init", "--dir", str(root / "root"), "--mesh-id", "py")
        self.nodes: List[Dict[str, str]] = []

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [self.bin, *args], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.strip()

    def spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        p = subprocess.Popen(
            [self.bin, *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs.append(p)
        return p

    def agent(self, name: str, latency_ms: float = 0.0, error_rate: float = 0.0) -> str:
        """Starts a demo agent; returns its base URL."""
        addr_file = self.dir / f"{name}.addr"
        self.spawn(
            name,
            "demo-agent",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--latency-ms-p50",
            str(latency_ms),
            "--latency-ms-p99",
            str(latency_ms * 1.5),
            "--error-rate",
            str(error_rate),
            "--addr-file",
            str(addr_file),
        )
        addr = wait_until(
            f"{name} address",
            START_TIMEOUT_S,
            lambda: addr_file.exists() and addr_file.read_text().strip(),
        )
        return f"http://{addr}"

    def node(
        self, caps: List[str], agent_latency_ms: float = 0.0, extra_toml: str = ""
    ) -> Dict[str, str]:
        """Starts a node (and, when ``caps`` is non-empty, its demo agent)."""
        i = len(self.nodes) + 1
        d = self.dir / f"node{i}"
        d.mkdir()
        node_id = self.cli("keygen", "--out", str(d / "node.key"))
        self.cli(
            "admit",
            "--root",
            str(self.dir / "root" / "root.key"),
            "--node-pub",
            node_id,
            "--roles",
            "agent",
            "--ttl",
            "1d",
            "--out",
            str(d / "node.cert"),
        )
        port = free_port(socket.SOCK_DGRAM)
        seeds = f'"{self.nodes[0]["addr"]}"' if self.nodes else ""
        toml = (
            f'[node]\nkey_file = "node.key"\ncert_file = "node.cert"\nstate_dir = "state"\n'
            f'listen = ["/ip4/127.0.0.1/udp/{port}/quic-v1"]\napi_listen = "127.0.0.1:0"\n'
            f"seeds = [{seeds}]\ndrain_timeout_ms = 1000\n\n"
            f'[mesh]\nadmission = "enforced"\nroot_pub = "{self.root_pub}"\nmesh_id = "py"\n'
        )
        agent = f"py-agent-{i}"
        if caps:
            handler = self.agent(agent, latency_ms=agent_latency_ms)
            toml += f'\n[agent]\nname = "{agent}"\nhandler = "{handler}"\n'
            for c in caps:
                toml += f'\n[[agent.capabilities]]\nname = "{c}"\n'
        toml += "\n" + extra_toml
        (d / "node.toml").write_text(toml)
        self.spawn(f"node{i}", "node", "--config", str(d / "node.toml"))
        state = d / "state" / "node.json"
        api = wait_until(
            f"node{i} state",
            START_TIMEOUT_S,
            lambda: state.exists() and json.loads(state.read_text()).get("api"),
        )
        n = {
            "id": node_id,
            "api": api,
            "agent": agent,
            "addr": f"/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{node_id}",
        }
        self.nodes.append(n)
        return n

    def client(self, i: int) -> Client:
        return Client(self.nodes[i]["api"], token="")

    def converge(self) -> None:
        want = len(self.nodes)
        for i in range(want):
            c = self.client(i)
            wait_until(
                f"node{i + 1} sees {want} alive",
                CONVERGE_TIMEOUT_S,
                lambda: sum(m["state"] == "alive" for m in c.members()) == want,
            )

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(timeout=10)


def endpoint_exists(client: Client, path: str) -> bool:
    """Whether the node's OpenAPI document lists ``path`` (every route is listed; a test of the
    node checks that)."""
    doc = client._json("GET", "/v1/openapi.json")
    return path in doc.get("paths", {})
