"""Fixtures of the client tests: a real three-node cluster (see cluster.py)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import Cluster, agentmesh_bin  # noqa: E402


@pytest.fixture(scope="session")
def cluster():
    """Three nodes: node1 offers echo (fast), node2 echo and slow.op (300 ms), node3 none."""
    if not Path(agentmesh_bin()).exists():
        pytest.fail(f"agentmesh binary not found at {agentmesh_bin()}; build it or set AGENTMESH_BIN")
    d = Path(tempfile.mkdtemp(prefix="agentmesh-py-"))
    c = Cluster(d)
    try:
        c.node(["echo"])
        c.node(["echo", "slow.op"], agent_latency_ms=300)
        c.node([])
        c.converge()
        yield c
    finally:
        c.close()
        shutil.rmtree(d, ignore_errors=True)
