"""The client: one node API base URL, an optional bearer token, stdlib urllib underneath."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from .propagation import outbound_headers

#: The node API used when neither ``api=`` nor ``$AGENTMESH_API`` is given.
API_DEFAULT = "http://127.0.0.1:7600"
#: Extra time the HTTP request gets beyond the call's own deadline, in seconds: the node
#: answers with a typed ``deadline_exceeded`` at the deadline, and that answer must get through.
DEADLINE_SLACK_S = 5.0
#: Timeout of requests without a deadline, in seconds.
REQUEST_TIMEOUT_S = 35.0
#: Largest response body read, in bytes (the node's own call body limit is smaller).
RESPONSE_BYTES_MAX = 64 * 1024 * 1024
#: Largest line of a streamed answer read, in bytes (the node bounds its events too).
STREAM_LINE_BYTES_MAX = 1024 * 1024

Deadline = Union[float, int, timedelta, None]
Capabilities = Sequence[Union[str, Mapping[str, Any]]]


class MeshError(Exception):
    """A failed request. ``code`` is the node's stable error code (``no_candidates``,
    ``deadline_exceeded``, ``bad_request``, ...); ``unreachable`` when the node itself could not
    be reached, ``bad_response`` when it answered something that is not the API's JSON."""

    def __init__(
        self,
        code: str,
        message: str,
        status: Optional[int] = None,
        field: Optional[str] = None,
        attempts: Optional[int] = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.attempts = attempts
        self.body = body


@dataclass
class CallResult:
    """A successful call: the decoded answer and who served it."""

    #: The answer, JSON-decoded when the agent answered JSON, else bytes.
    body: Any
    #: ``<node id>/<agent>`` that served the call.
    served_by: str = ""
    #: Attempts the call took (retries included).
    attempts: int = 1
    #: The HTTP status.
    status: int = 200
    #: Every response header, lowercased.
    headers: Dict[str, str] = field(default_factory=dict)


def _deadline_ms(deadline: Deadline) -> Optional[int]:
    if deadline is None:
        return None
    seconds = deadline.total_seconds() if isinstance(deadline, timedelta) else float(deadline)
    if seconds <= 0:
        raise ValueError("deadline must be positive (seconds or a timedelta)")
    return max(1, int(round(seconds * 1000)))


def _encode(payload: Any) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":")).encode()


def _capability(c: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(c, str):
        return {"name": c}
    if "name" not in c:
        raise ValueError(f"capability {c!r} has no name")
    return dict(c)


def _is_card(x: Any) -> bool:
    return isinstance(x, Mapping) and "skills" in x


class Client:
    """A node's local API. ``api`` defaults to ``$AGENTMESH_API`` or :data:`API_DEFAULT`,
    ``token`` to ``$AGENTMESH_API_TOKEN``."""

    def __init__(self, api: Optional[str] = None, token: Optional[str] = None) -> None:
        self.api = (api or os.environ.get("AGENTMESH_API") or API_DEFAULT).rstrip("/")
        self.token = token if token is not None else os.environ.get("AGENTMESH_API_TOKEN")

    # -- transport ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> "tuple[int, Dict[str, str], bytes]":
        h = {"content-type": "application/json", "accept": "application/json"}
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        h.update(headers or {})
        req = urllib.request.Request(self.api + path, data=body, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read(
                    RESPONSE_BYTES_MAX
                )
        except urllib.error.HTTPError as e:
            data = e.read(RESPONSE_BYTES_MAX)
            raise self._error(e.code, data) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise MeshError("unreachable", f"{method} {self.api}{path}: {reason}") from None

    @staticmethod
    def _error(status: int, data: bytes) -> MeshError:
        try:
            v = json.loads(data)
        except ValueError:
            v = None
        if isinstance(v, dict) and isinstance(v.get("code"), str):
            return MeshError(
                v["code"],
                str(v.get("message", "")),
                status=status,
                field=v.get("field"),
                attempts=v.get("attempts"),
                body=v.get("body"),
            )
        text = data[:512].decode(errors="replace")
        return MeshError("bad_response", f"HTTP {status} without an error code: {text}", status)

    def _json(self, method: str, path: str, doc: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        body = None if doc is None else _encode(doc)
        status, _, data = self._request(method, path, body, timeout=timeout)
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise MeshError("bad_response", f"{path} answered non-JSON", status) from None

    # -- API ---------------------------------------------------------------------------------

    def register(
        self,
        card_or_capabilities: Union[str, Mapping[str, Any], Capabilities],
        *,
        name: Optional[str] = None,
        handler: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        skills: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """Registers this node's agent.

        - Capabilities: a list of names or ``{"name", "proficiency", "cost", "attributes"}``
          dicts, with ``name=`` and ``handler=`` (the base URL the node forwards calls to, as
          ``POST {handler}/{capability}``). ``PUT /v1/agent``.
        - An A2A Agent Card (a dict with ``skills``) or its URL: the node maps each skill to a
          capability and forwards calls as A2A ``message/send``; ``skills=`` adds proficiency,
          cost and attributes per skill id. ``PUT /v1/a2a/agent``.
        """
        if isinstance(card_or_capabilities, str) or _is_card(card_or_capabilities):
            doc: Dict[str, Any] = {}
            if isinstance(card_or_capabilities, str):
                doc["card_url"] = card_or_capabilities
            else:
                doc["card"] = dict(card_or_capabilities)  # type: ignore[arg-type]
            if skills:
                doc["skills"] = {k: dict(v) for k, v in skills.items()}
            if max_concurrency is not None:
                doc["max_concurrency"] = max_concurrency
            return self._json("PUT", "/v1/a2a/agent", doc)
        if not name or not handler:
            raise ValueError("registering capabilities needs name= and handler=")
        caps: Iterable[Union[str, Mapping[str, Any]]] = card_or_capabilities  # type: ignore[assignment]
        reg: Dict[str, Any] = {
            "name": name,
            "handler": handler,
            "capabilities": [_capability(c) for c in caps],
        }
        if max_concurrency is not None:
            reg["max_concurrency"] = max_concurrency
        return self._json("PUT", "/v1/agent", reg)

    def stream(
        self,
        capability: str,
        payload: Any,
        *,
        policy: Optional[str] = None,
        deadline: Deadline = None,
    ) -> Iterator[Dict[str, Any]]:
        """Calls ``capability`` asking for the answer as it comes (``accept:
        text/event-stream``). Yields mesh stream events as they arrive: ``{"chunk": body}``,
        then ``{"done": body_or_None}`` or ``{"error": message}``. An agent that does not stream
        yields one ``{"done": answer}``. Failures before the stream starts raise
        :class:`MeshError`."""
        h, ms = outbound_headers(_deadline_ms(deadline))
        h["accept"] = "text/event-stream"
        if ms is not None:
            h["x-mesh-deadline-ms"] = str(ms)
        if policy:
            h["x-mesh-policy"] = policy
        if self.token:
            h["authorization"] = f"Bearer {self.token}"
        h["content-type"] = "application/json"
        timeout = REQUEST_TIMEOUT_S if ms is None else ms / 1000 + DEADLINE_SLACK_S
        path = "/v1/call/" + urllib.parse.quote(capability, safe="")
        req = urllib.request.Request(self.api + path, data=_encode(payload), headers=h, method="POST")
        try:
            r = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise self._error(e.code, e.read(RESPONSE_BYTES_MAX)) from None
        except (urllib.error.URLError, OSError) as e:
            raise MeshError("unreachable", f"POST {self.api}{path}: {getattr(e, 'reason', e)}") from None
        with r:
            if not r.headers.get("content-type", "").startswith("text/event-stream"):
                data = r.read(RESPONSE_BYTES_MAX)
                yield {"done": json.loads(data) if data else None}
                return
            data_lines: List[str] = []
            while True:
                line = r.readline(STREAM_LINE_BYTES_MAX)
                if not line:
                    return
                text = line.decode().rstrip("\r\n")
                if text.startswith("data:"):
                    data_lines.append(text[5:].lstrip(" "))
                elif not text and data_lines:
                    event = json.loads("\n".join(data_lines))
                    data_lines = []
                    yield event
                    if "chunk" not in event:
                        return

    def call_raw(
        self,
        capability: str,
        payload: Any,
        *,
        policy: Optional[str] = None,
        deadline: Deadline = None,
        prefer: Optional[str] = None,
        attrs: Optional[Mapping[str, str]] = None,
        headers: Optional[Mapping[str, str]] = None,
        locality: Optional[str] = None,
    ) -> CallResult:
        """Like :meth:`call`, returning the answer with who served it and the attempts. While
        serving a mesh call (see :mod:`agentmesh.propagation`), its chain, deadline and trace
        headers are sent on."""
        h, ms = outbound_headers(_deadline_ms(deadline))
        h.update(headers or {})
        if ms is not None:
            h["x-mesh-deadline-ms"] = str(ms)
        if policy:
            h["x-mesh-policy"] = policy
        if prefer:
            h["x-mesh-prefer"] = prefer
        if locality:
            h["x-mesh-locality"] = locality
        for k, v in (attrs or {}).items():
            h[f"x-mesh-attr-{k}"] = str(v)
        timeout = REQUEST_TIMEOUT_S if ms is None else ms / 1000 + DEADLINE_SLACK_S
        path = "/v1/call/" + urllib.parse.quote(capability, safe="")
        status, rh, data = self._request("POST", path, _encode(payload), h, timeout)
        body: Any = data
        if rh.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(data) if data else None
            except ValueError:
                body = data
        return CallResult(
            body=body,
            served_by=rh.get("x-mesh-served-by", ""),
            attempts=int(rh.get("x-mesh-attempts", "1") or 1),
            status=status,
            headers=rh,
        )

    def call(
        self,
        capability: str,
        payload: Any,
        *,
        policy: Optional[str] = None,
        deadline: Deadline = None,
        prefer: Optional[str] = None,
        attrs: Optional[Mapping[str, str]] = None,
        locality: Optional[str] = None,
    ) -> Any:
        """Calls ``capability`` anywhere in the mesh with a JSON ``payload`` (bytes are sent as
        they are) and returns the decoded answer. ``deadline`` is seconds (or a timedelta) for
        the whole call, retries included; ``policy`` names a routing policy (``latency``,
        ``least_loaded``, ``cost``, ...); ``attrs`` are attribute constraints; ``locality``
        (``zone``, ``region``, ``rtt``, ``off``) overrides the capability's locality."""
        return self.call_raw(
            capability,
            payload,
            policy=policy,
            deadline=deadline,
            prefer=prefer,
            attrs=attrs,
            locality=locality,
        ).body

    def quorum(
        self,
        capability: str,
        payload: Any,
        n: int = 3,
        f: Optional[int] = None,
        key: Optional[str] = None,
        deadline: Deadline = None,
    ) -> Dict[str, Any]:
        """Asks ``n`` distinct agents in parallel and returns the node's decision (votes,
        dissenters, or ``needs_review``). ``f`` asks for ``2f+1`` agreeing votes instead of a
        majority; ``key`` compares answers by that field. ``POST /v1/quorum/{capability}``."""
        ms = _deadline_ms(deadline)
        doc = {"payload": payload, "n": n, "f": f, "key": key, "deadline_ms": ms}
        timeout = REQUEST_TIMEOUT_S if ms is None else ms / 1000 + DEADLINE_SLACK_S
        path = "/v1/quorum/" + urllib.parse.quote(capability, safe="")
        return self._json("POST", path, doc, timeout)

    def run_workflow(self, name: str, input: Any, deadline: Deadline = None) -> Dict[str, Any]:
        """Runs the workflow ``name`` on this node with ``input``.
        ``POST /v1/workflows/{name}/run``."""
        ms = _deadline_ms(deadline)
        timeout = REQUEST_TIMEOUT_S if ms is None else ms / 1000 + DEADLINE_SLACK_S
        path = "/v1/workflows/" + urllib.parse.quote(name, safe="") + "/run"
        return self._json("POST", path, {"input": input}, timeout)

    def members(self) -> List[Dict[str, Any]]:
        """The members this node sees. ``GET /v1/members``."""
        return list(self._json("GET", "/v1/members")["members"])

    def ready(self) -> bool:
        """Whether the node has joined and is admitted. ``GET /readyz``."""
        try:
            return bool(self._json("GET", "/readyz").get("ready"))
        except MeshError:
            return False


_default: Optional[Client] = None


def default_client() -> Client:
    """The client the module-level functions use (created on first use from the environment)."""
    global _default
    if _default is None:
        _default = Client()
    return _default


def register(
    card_or_capabilities: Union[str, Mapping[str, Any], Capabilities],
    *,
    name: Optional[str] = None,
    handler: Optional[str] = None,
    max_concurrency: Optional[int] = None,
    skills: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """:meth:`Client.register` on the default client."""
    return default_client().register(
        card_or_capabilities,
        name=name,
        handler=handler,
        max_concurrency=max_concurrency,
        skills=skills,
    )


def call(
    capability: str,
    payload: Any,
    *,
    policy: Optional[str] = None,
    deadline: Deadline = None,
    prefer: Optional[str] = None,
    attrs: Optional[Mapping[str, str]] = None,
) -> Any:
    """:meth:`Client.call` on the default client."""
    return default_client().call(
        capability, payload, policy=policy, deadline=deadline, prefer=prefer, attrs=attrs
    )


def quorum(
    capability: str,
    payload: Any,
    n: int = 3,
    f: Optional[int] = None,
    key: Optional[str] = None,
    deadline: Deadline = None,
) -> Dict[str, Any]:
    """:meth:`Client.quorum` on the default client."""
    return default_client().quorum(capability, payload, n=n, f=f, key=key, deadline=deadline)


def stream(
    capability: str, payload: Any, *, policy: Optional[str] = None, deadline: Deadline = None
) -> Iterator[Dict[str, Any]]:
    """:meth:`Client.stream` on the default client."""
    return default_client().stream(capability, payload, policy=policy, deadline=deadline)


def run_workflow(name: str, input: Any, deadline: Deadline = None) -> Dict[str, Any]:
    """:meth:`Client.run_workflow` on the default client."""
    return default_client().run_workflow(name, input, deadline=deadline)


#: Kept for type hints of quorum answers.
Quorum = Dict[str, Any]
