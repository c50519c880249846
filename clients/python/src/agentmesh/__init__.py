"""Python client for an agentmesh node's local API.

An agent talks to the mesh through the node beside it (``http://127.0.0.1:7600`` by default,
or ``$AGENTMESH_API``; the bearer token, if the node sets one, from ``$AGENTMESH_API_TOKEN``)::

    import agentmesh

    agentmesh.register(["inventory.query"], name="inventory-bot", handler="http://127.0.0.1:8101")
    answer = agentmesh.call("inventory.query", {"sku": "A-1"}, policy="latency", deadline=2.0)

An agent that calls other agents while serving a call wraps its handler in
:class:`ASGIMiddleware` / :class:`WSGIMiddleware` (or uses :func:`serving`): its calls then carry
the inbound chain, deadline and trace headers, so loops are refused, deadlines shrink and traces
continue (see :mod:`agentmesh.propagation`).

Every failure raises :class:`MeshError` with the node's stable error ``code``.
The module-level functions use one default :class:`Client`; make your own for another node.
"""

from .client import (
    Client,
    MeshError,
    Quorum,
    call,
    default_client,
    quorum,
    register,
    run_workflow,
    stream,
)
from .propagation import ASGIMiddleware, WSGIMiddleware, outbound_headers, serving

__all__ = [
    "ASGIMiddleware",
    "WSGIMiddleware",
    "outbound_headers",
    "serving",
    "Client",
    "MeshError",
    "Quorum",
    "call",
    "default_client",
    "quorum",
    "register",
    "run_workflow",
    "stream",
]
