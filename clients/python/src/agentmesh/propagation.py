"""Automatic propagation of the mesh headers from an agent's inbound call to its onward calls.

The mesh refuses loops, shrinks deadlines hop by hop and continues traces only when an agent
copies ``x-mesh-chain``, ``x-mesh-deadline-ms``, ``traceparent`` and ``tracestate`` from the
request it is serving onto every call it makes while serving it. Wrap the agent's handler
with one of these, and every :meth:`agentmesh.Client.call` made while serving sends them on::

    app = agentmesh.ASGIMiddleware(app)      # Starlette, FastAPI, any ASGI app
    app = agentmesh.WSGIMiddleware(app)      # Flask, Django, wsgiref
    with agentmesh.serving(request.headers): # anything else (http.server, aiohttp, ...)
        ...

The headers live in a :mod:`contextvars` context, so concurrent requests (threads or asyncio
tasks) never see each other's. The deadline sent on is what is left of the inbound one (the
time already spent serving is subtracted), or the caller's own deadline if that is shorter.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

#: The headers copied from an inbound call to its onward calls.
MESH_HEADERS: Tuple[str, ...] = ("x-mesh-chain", "x-mesh-deadline-ms", "traceparent", "tracestate")
#: Longest header value kept (a chain token of the default hop limit is far shorter).
HEADER_VALUE_LEN_MAX = 8192


class _Inbound:
    __slots__ = ("headers", "received")

    def __init__(self, headers: Dict[str, str], received: float) -> None:
        self.headers = headers
        self.received = received


_current: contextvars.ContextVar[Optional[_Inbound]] = contextvars.ContextVar(
    "agentmesh_inbound", default=None
)


def _pick(headers: Iterable[Tuple[str, str]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in headers:
        k = k.lower()
        if k in MESH_HEADERS and len(v) <= HEADER_VALUE_LEN_MAX:
            out[k] = v
    return out


def _items(headers: Any) -> Iterable[Tuple[str, str]]:
    if hasattr(headers, "items"):
        return list(headers.items())
    return list(headers)


@contextlib.contextmanager
def serving(headers: Any) -> Iterator[None]:
    """Within this block, onward calls carry the mesh headers of ``headers`` (a mapping or
    ``(name, value)`` pairs of the inbound request)."""
    token = _current.set(_Inbound(_pick(_items(headers)), time.monotonic()))
    try:
        yield
    finally:
        _current.reset(token)


def outbound_headers(deadline_ms: Optional[int] = None) -> Tuple[Dict[str, str], Optional[int]]:
    """The headers to send on from the request being served (none outside one), and the
    deadline in ms to use: the shorter of ``deadline_ms`` and what is left of the inbound one.
    What is left may be 0: the node then refuses the call with ``deadline_exceeded``."""
    inbound = _current.get()
    if inbound is None:
        return {}, deadline_ms
    h = {k: v for k, v in inbound.headers.items() if k != "x-mesh-deadline-ms"}
    left: Optional[int] = None
    raw = inbound.headers.get("x-mesh-deadline-ms")
    if raw is not None and raw.isdigit():
        spent = int((time.monotonic() - inbound.received) * 1000)
        left = max(int(raw) - spent, 1)
    if left is not None and (deadline_ms is None or left < deadline_ms):
        deadline_ms = left
    return h, deadline_ms


def current() -> Dict[str, str]:
    """The mesh headers of the request being served (empty outside one)."""
    inbound = _current.get()
    return dict(inbound.headers) if inbound else {}


class ASGIMiddleware:
    """ASGI middleware: each HTTP request is served inside :func:`serving` of its headers."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        with serving(pairs):
            await self.app(scope, receive, send)


class WSGIMiddleware:
    """WSGI middleware: each request is served inside :func:`serving` of its headers. The
    headers stay set while the response body is produced, so a streaming body's onward calls
    carry them too."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: Mapping[str, Any], start_response: Callable[..., Any]) -> Any:
        pairs = []
        for name in MESH_HEADERS:
            v = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if isinstance(v, str):
                pairs.append((name, v))
        ctx = contextvars.copy_context()
        ctx.run(_current.set, _Inbound(_pick(pairs), time.monotonic()))
        body = ctx.run(self.app, environ, start_response)
        return _InContext(ctx, body)


class _InContext:
    """Iterates a WSGI body inside the request's context, and closes it."""

    def __init__(self, ctx: contextvars.Context, body: Any) -> None:
        self.ctx = ctx
        self.body = body
        self.it = iter(body)

    def __iter__(self) -> "_InContext":
        return self

    def __next__(self) -> Any:
        return self.ctx.run(next, self.it)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            self.ctx.run(close)
