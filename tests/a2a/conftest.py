"""Fixtures for the A2A proof: the client tests' real cluster (clients/python/tests/conftest.py)
plus an agent built with the official a2a-sdk (sdk_agent.py), started as its own process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "clients/python/src"))
sys.path.insert(0, str(ROOT / "clients/python/tests"))
sys.path.insert(0, str(HERE))

from cluster import Cluster, agentmesh_bin, free_port, wait_until  # noqa: E402

from a2a_names import CAPABILITY, SKILL  # noqa: E402


def start_sdk_agent(d: Path, procs: list) -> str:
    """Starts sdk_agent.py on a free port; returns its base URL."""
    port = free_port()
    addr_file = d / f"sdk-{port}.addr"
    log = open(d / f"sdk-{port}.log", "wb")
    p = subprocess.Popen(
        [sys.executable, str(HERE / "sdk_agent.py"), str(port), str(addr_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    procs.append(p)
    wait_until("sdk agent up", 20, lambda: addr_file.exists() and addr_file.read_text())
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def mesh():
    """node1: demo agent with `echo`; node2: the SDK agent, registered through its card by
    PUT /v1/a2a/agent; node3: no agent (the A2A client's entry); node4: the same SDK agent,
    learnt at start-up from `[a2a] handler` (card discovery)."""
    if not Path(agentmesh_bin()).exists():
        pytest.fail(f"agentmesh binary not found at {agentmesh_bin()}")
    d = Path(tempfile.mkdtemp(prefix="agentmesh-a2a-"))
    c = Cluster(d)
    extra = []
    try:
        agent_url = start_sdk_agent(d, extra)
        c.node(["echo"])
        c.node([])
        c.node([])
        c.node(
            [],
            extra_toml=(
                f'[a2a]\nhandler = "{agent_url}"\n'
                f'[a2a.skills.{SKILL}]\ncapability = "{CAPABILITY}"\nproficiency = "expert"\n'
            ),
        )
        c.converge()
        c.agent_url = agent_url  # type: ignore[attr-defined]
        yield c
    finally:
        c.close()
        for p in extra:
            p.kill()
            p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)
