"""The round trip of an MCP tools/call through the mesh against the same tool called directly,
both with the official MCP SDK's client, sequential, in one run.

Direct: SDK client -> FastMCP server. Mesh: SDK client -> node1 /mcp -> (QUIC) node2 ->
node2's MCP client -> the same FastMCP server. Run: python bench_mcp.py [calls]; prints p50/p99.
Not part of the test run (it measures; it asserts nothing)."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import Cluster, start_fastmcp, tools_of, wait_until  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402


async def measure(url: str, tool: str, n: int) -> list:
    async with streamable_http_client(url) as (r, w, _):
        async with ClientSession(r, w) as s:
            await s.initialize()
            await s.list_tools()
            for _ in range(20):  # warm-up
                await s.call_tool(tool, {"a": 1, "b": 2})
            out = []
            for i in range(n):
                t = time.perf_counter()
                res = await s.call_tool(tool, {"a": i, "b": 1})
                out.append((time.perf_counter() - t) * 1000)
                assert not res.isError and res.structuredContent == {"result": i + 1}, res
            return out


def pct(xs: list, p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    d = Path(tempfile.mkdtemp(prefix="agentmesh-mcp-bench-"))
    c = Cluster(d)
    extra: list = []
    try:
        fast = start_fastmcp(d, extra)
        c.node([])
        c.node([], extra_toml=f'[mcp]\n[[mcp.servers]]\nname = "py"\nurl = "{fast}"\n')
        c.converge()
        wait_until("add visible", 30, lambda: "add" in tools_of(c.nodes[0]["api"]))
        direct = asyncio.run(measure(fast, "add", n))
        mesh = asyncio.run(measure(f"{c.nodes[0]['api']}/mcp", "add", n))
        for name, xs in (("direct (SDK -> FastMCP)", direct), ("mesh (SDK -> node1 -> node2 -> FastMCP)", mesh)):
            print(f"{name:45} n={len(xs)} p50={pct(xs, 50):.2f} ms p99={pct(xs, 99):.2f} ms "
                  f"mean={statistics.mean(xs):.2f} ms")
    finally:
        c.close()
        for p in extra:
            p.kill()
            p.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
