"""Header propagation: a Python agent behind WSGIMiddleware whose onward calls carry the
inbound chain, deadline and trace, against a real two-node cluster; plus the middlewares'
isolation between concurrent requests."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

import agentmesh
from agentmesh import MeshError
from agentmesh.propagation import current

from cluster import Cluster, agentmesh_bin, wait_until

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # noqa: D401 - silence the access log
        pass


def _relay_app(api: str):
    """An agent offering ``py.relay``: ``{"to": capability}`` calls that capability through
    its node with the plain client and answers with what came back (or the error code)."""
    client = agentmesh.Client(api, token="")

    def app(environ, start_response):
        size = int(environ.get("CONTENT_LENGTH") or 0)
        req = json.loads(environ["wsgi.input"].read(size) or b"{}")
        try:
            out = {"answer": client.call(req["to"], {"to": req["to"], "via": "relay"})}
        except MeshError as e:
            out = {"code": e.code, "message": str(e)}
        body = json.dumps(out).encode()
        start_response("200 OK", [("content-type", "application/json")])
        return [body]

    return agentmesh.WSGIMiddleware(app)


@pytest.fixture(scope="module")
def relay_cluster():
    """node1: the demo echo agent; node2: the Python relay agent behind WSGIMiddleware."""
    if not Path(agentmesh_bin()).exists():
        pytest.fail(f"agentmesh binary not found at {agentmesh_bin()}")
    d = Path(tempfile.mkdtemp(prefix="agentmesh-prop-"))
    c = Cluster(d)
    server = None
    try:
        c.node(["echo"])
        n2 = c.node([])
        server = make_server(
            "127.0.0.1", 0, _relay_app(n2["api"]), _ThreadingServer, handler_class=_Quiet
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        c.client(1).register(["py.relay"], name="py-relay", handler=url)
        c.converge()
        wait_until(
            "node1 sees py.relay",
            30,
            lambda: any(
                "py.relay" in json.dumps(m) for m in c.client(0).members()
            ),
        )
        yield c
    finally:
        if server is not None:
            server.shutdown()
        c.close()
        shutil.rmtree(d, ignore_errors=True)


def test_onward_call_carries_chain_deadline_and_trace(relay_cluster):
    r = relay_cluster.client(0).call_raw(
        "py.relay", {"to": "echo"}, deadline=4, headers={"traceparent": TRACE}
    )
    seen = r.body["answer"]
    text = json.dumps(seen)
    # The echo agent shows the headers it received: the trace continues, the chain arrived, and
    # the deadline shrank below what the relay was given.
    assert TRACE.split("-")[1] in text, text
    assert "x-mesh-chain" in text, text
    headers = seen["received_headers"]
    deadline = int(headers["x-mesh-deadline-ms"])
    assert 0 < deadline < 4000, headers


def test_a_loop_through_a_python_agent_is_refused(relay_cluster):
    started = time.monotonic()
    r = relay_cluster.client(0).call_raw("py.relay", {"to": "py.relay"}, deadline=5)
    # Without propagation the relay would call itself until the deadline; with it the node
    # sees the chain and refuses the second visit at once.
    # The second visit's onward call is refused; that relay answers with the code, and the
    # first relay passes it back as its answer.
    assert r.body["answer"]["code"] == "loop_detected", r.body
    assert time.monotonic() - started < 4.0


def test_outside_a_request_nothing_is_added():
    assert agentmesh.outbound_headers(1500) == ({}, 1500)
    assert current() == {}


def test_deadline_sent_on_is_what_is_left():
    with agentmesh.serving({"X-Mesh-Deadline-Ms": "1000", "traceparent": TRACE, "host": "x"}):
        time.sleep(0.05)
        h, ms = agentmesh.outbound_headers(None)
        assert h == {"traceparent": TRACE}, "only mesh headers, deadline recomputed"
        assert ms is not None and 800 <= ms <= 960, ms
        assert agentmesh.outbound_headers(200)[1] == 200, "a shorter own deadline wins"
    assert agentmesh.outbound_headers(None) == ({}, None)


def test_oversized_header_values_are_dropped():
    with agentmesh.serving({"x-mesh-chain": "a" * 10_000, "traceparent": TRACE}):
        assert "x-mesh-chain" not in current()


def test_concurrent_asgi_requests_do_not_mix():
    seen = {}

    async def app(scope, receive, send):
        await asyncio.sleep(0.01)
        seen[scope["path"]] = current().get("traceparent")

    mw = agentmesh.ASGIMiddleware(app)

    async def one(i):
        tp = f"00-{i:032x}-00f067aa0ba902b7-01"
        scope = {"type": "http", "path": f"/{i}", "headers": [(b"traceparent", tp.encode())]}
        await mw(scope, None, None)
        return tp

    async def main():
        return await asyncio.gather(*(one(i) for i in range(1, 20)))

    tps = asyncio.run(main())
    for i, tp in enumerate(tps, start=1):
        assert seen[f"/{i}"] == tp


def test_wsgi_body_is_produced_inside_the_context():
    def app(environ, start_response):
        start_response("200 OK", [])
        yield current().get("x-mesh-chain", "none").encode()

    mw = agentmesh.WSGIMiddleware(app)
    body = mw({"HTTP_X_MESH_CHAIN": "tok"}, lambda *a: None)
    assert b"".join(body) == b"tok"
    assert current() == {}
