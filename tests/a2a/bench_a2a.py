"""A2A round trip through the mesh versus a direct A2A call, both with the official a2a-sdk
client against the same SDK-built agent. Sequential calls; prints p50/p90/p99 in ms.
Usage (scripts/bench-a2a): bench_a2a.py [CALLS]"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "clients/python/src"))
sys.path.insert(0, str(ROOT / "clients/python/tests"))
sys.path.insert(0, str(HERE))

from a2a.client import ClientConfig, create_client  # noqa: E402
from a2a.helpers import get_stream_response_text  # noqa: E402

from a2a_names import CAPABILITY, SKILL  # noqa: E402
from agentmesh import Client  # noqa: E402
from cluster import Cluster, wait_until  # noqa: E402
from conftest import start_sdk_agent  # noqa: E402
from test_a2a import sdk_message  # noqa: E402


async def measure(base_url: str, skill: str | None, calls: int) -> list[float]:
    client = await create_client(base_url, client_config=ClientConfig(streaming=False))
    out = []
    for i in range(calls + 20):
        t0 = time.perf_counter()
        text = ""
        async for ev in client.send_message(sdk_message(f"hello {i}", skill)):
            text += get_stream_response_text(ev)
        dt = (time.perf_counter() - t0) * 1000
        assert text == f"translated: hello {i}", text
        if i >= 20:  # warm-up excluded
            out.append(dt)
    await client.close()
    return out


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(len(s) * p))]


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    d = Path(tempfile.mkdtemp(prefix="agentmesh-a2a-bench-"))
    c = Cluster(d)
    procs: list = []
    try:
        agent = start_sdk_agent(d, procs)
        c.node([])  # node1: the agent's node
        c.node([])  # node2: the caller's node
        c.converge()
        Client(c.nodes[0]["api"], token="").register(
            agent + "/.well-known/agent-card.json", skills={SKILL: {"capability": CAPABILITY}}
        )
        c2 = Client(c.nodes[1]["api"], token="")
        wait_until(
            "node2 routes the skill",
            30,
            lambda: any(CAPABILITY in m["capabilities"] for m in c2.members()),
        )
        rows = [
            ("direct A2A (SDK client -> SDK agent)", agent, None),
            ("via the agent's own node (1 node)", c.nodes[0]["api"], CAPABILITY),
            ("via the mesh (caller node -> QUIC -> agent node)", c.nodes[1]["api"], CAPABILITY),
        ]
        print(f"A2A round trip, {calls} sequential calls each (a2a-sdk client, streaming off):")
        for name, url, skill in rows:
            v = asyncio.run(measure(url, skill, calls))
            print(
                f"  {name:50s} p50={statistics.median(v):6.2f} ms  p90={pct(v, 0.9):6.2f} ms"
                f"  p99={pct(v, 0.99):6.2f} ms"
            )
    finally:
        c.close()
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
