//! The local agent API (axum): how an agent registers itself and calls other agents through its
//! node, and how operators look at the mesh. It binds `127.0.0.1:7600` by default; a
//! non-loopback bind needs `api.insecure_bind` plus `api.token` (see [`crate::config`]).
//!
//! Every error is JSON `{code, message, field?, status?, body?, attempts}` with a stable `code`
//! ([`ErrorCode`]) and the HTTP status of [`ErrorCode::http_status`], the framework's own
//! rejections included ([`edge::json_rejections`]). Bad input changes nothing.
//! The OpenAPI 3.1 description is `openapi.json` beside this file, served at
//! `/v1/openapi.json`; a test checks that every route below appears in it.

pub mod a2a;
pub mod edge;
pub mod mcp;
pub mod obs;
pub mod query;
pub mod workflow;

use crate::api::workflow as wf;
use crate::contract::names::{is_capability_name, ATTR_LEN_MAX};
use crate::contract::validate_registration;
use crate::contract::{AgentRegistration, CallError, CallRequest, ErrorCode, BODY_BYTES_MAX};
use crate::runtime::MeshHandle;
use agentmesh_gossip::record::Proficiency;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest `PUT /v1/agent` body accepted, in bytes.
pub const API_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest call body accepted, in bytes (the mesh's own limit).
pub const CALL_BODY_BYTES_MAX: usize = BODY_BYTES_MAX;
/// Most attribute constraints on one call.
pub const CALL_ATTRS_MAX: usize = 32;
/// Largest deadline a caller may ask for, in ms.
pub const DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest `x-mesh-prefer` / `x-mesh-policy` value, in bytes.
pub const ROUTING_HINT_LEN_MAX: usize = 128;
/// Longest `tracestate` forwarded, in bytes (W3C allows 512).
pub const TRACESTATE_LEN_MAX: usize = 512;
/// Most request headers accepted; more get the node's JSON 431 (hyper's own parser is raised
/// to [`edge::HYPER_HEADERS_MAX`] so this check answers).
pub const API_HEADERS_MAX: usize = 64;
/// Most bytes of all header names and values of one request together; more get 431.
pub const API_HEADER_BYTES_MAX: usize = 16 * 1024;
/// Largest request body on any route, in bytes (a backstop: each route reads with its own,
/// smaller or equal, named limit and answers 413 past it).
pub const API_REQUEST_BODY_BYTES_MAX: usize = CALL_BODY_BYTES_MAX;
/// Most bytes of an oversize body the API reads and drops before answering 413, so a client
/// that sends a little too much gets the answer rather than a reset connection.
pub const BODY_DRAIN_BYTES_MAX: usize = API_REQUEST_BODY_BYTES_MAX + 1024 * 1024;

/// Header prefix of attribute constraints (`x-mesh-attr-region: eu`); keys arrive lowercased.
pub const ATTR_HEADER_PREFIX: &str = "x-mesh-attr-";
/// Query prefix of attribute constraints (`?attr.region=eu`).
pub const ATTR_QUERY_PREFIX: &str = "attr.";
/// Response header naming `"<node id>/<agent>"` that served a call.
pub const SERVED_BY_HEADER: &str = "x-mesh-served-by";
/// Response header counting the attempts a call took.
pub const ATTEMPTS_HEADER: &str = "x-mesh-attempts";
/// Response header: hedged attempts started, when any were.
pub const HEDGES_HEADER: &str = "x-mesh-hedges";
/// Response header naming the policy that picked the agent.
pub const POLICY_HEADER: &str = "x-mesh-policy";
/// Response header saying why the pinned agent (`x-mesh-prefer`) was not used.
pub const PREFER_FALLBACK_HEADER: &str = "x-mesh-prefer-fallback";
/// Response header naming the error code of a failed call (agents copy it when they pass a
/// failed onward call back, so the code survives the hop).
pub const ERROR_HEADER: &str = crate::agent::client::H_ERROR;

mod security;
pub use security::parse_audit_query;

/// The OpenAPI 3.1 document served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Shared state of the API handlers.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) mesh: MeshHandle,
    /// The workflows served by `POST /v1/workflows/{name}/run`.
    pub(crate) workflows: Arc<crate::workflow::WorkflowSet>,
    token: Option<Arc<str>>,
    /// The MCP servers joined through this node (`/v1/mcp/…`).
    pub(crate) mcp: Arc<crate::mcp::agents::McpAgents>,
}

/// An API error: a [`CallError`] and, when it differs from the code's, the HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: Option<StatusCode>,
    pub(crate) err: CallError,
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        ApiError { status: None, err }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.err.code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        });
        let attempts = self.err.attempts;
        let code = serde_json::to_value(self.err.code)
            .ok()
            .and_then(|v| v.as_str().map(header_text));
        let mut resp = (status, Json(self.err)).into_response();
        resp.headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
        if let Some(c) = code {
            resp.headers_mut().insert(ERROR_HEADER, c);
        }
        resp
    }
}

/// The API's JSON error response for `err` (for routes defined in other modules).
pub fn error_response(err: CallError) -> Response {
    ApiError::from(err).into_response()
}

fn bad(field: &str, message: impl Into<String>) -> ApiError {
    CallError::bad_field(field, message).into()
}

/// The API's router over a running mesh, serving `workflows`. `token`, when set, is required
/// as `Authorization: Bearer <token>` on every route except `/healthz` and `/readyz`.
pub fn router(
    mesh: MeshHandle,
    token: Option<String>,
    workflows: crate::workflow::WorkflowSet,
) -> Router {
    let mcp = crate::mcp::agents::McpAgents::new(mesh.clone(), "mcp".into(), 64);
    router_with_mcp(mesh, token, workflows, mcp)
}

/// [`router`] with the node's MCP servers (`[mcp]` in `node.toml`).
pub fn router_with_mcp(
    mesh: MeshHandle,
    token: Option<String>,
    workflows: crate::workflow::WorkflowSet,
    mcp: Arc<crate::mcp::agents::McpAgents>,
) -> Router {
    api_with_mcp(mesh, token, workflows, mcp).router
}

/// The API as the node serves it ([`edge::serve`]): the router, and the call route's state
/// for [`edge::Api::handle`], which serves `POST /v1/call/{capability}` without the router.
pub fn api_with_mcp(
    mesh: MeshHandle,
    token: Option<String>,
    workflows: crate::workflow::WorkflowSet,
    mcp: Arc<crate::mcp::agents::McpAgents>,
) -> edge::Api {
    let state = ApiState {
        mesh,
        workflows: Arc::new(workflows),
        token: token.map(Arc::from),
        mcp,
    };
    edge::Api {
        router: routes(state.clone()),
        state,
    }
}

fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/v1/agent", put(put_agent).get(get_agent))
        .route("/v1/call/{capability}", post(post_call))
        .route("/v1/members", get(get_members))
        .route("/v1/capabilities", get(get_capabilities))
        .route("/v1/routes/{capability}", get(get_routes))
        .route("/v1/config", get(get_config))
        .route("/v1/config/reload", post(post_config_reload))
        .route("/v1/workflows", get(wf::get_workflows))
        .route("/v1/workflows/run", post(wf::post_adhoc_run))
        .route("/v1/workflows/{name}/run", post(wf::post_run))
        .route("/v1/quorum/{capability}", post(wf::post_quorum))
        .route("/v1/openapi.json", get(get_openapi))
        .route("/v1/security", get(security::get_security))
        .route("/v1/revocations", post(security::post_revocation))
        .route("/v1/policy", post(security::post_policy))
        .route("/v1/audit", get(security::get_audit))
        .route("/v1/audit/witnessed", get(security::get_witnessed))
        .route("/readyz", get(get_readyz))
        .route("/healthz", get(get_healthz))
        .route("/metrics", get(get_metrics))
        .route("/v1/mesh/matrix", get(get_mesh_matrix))
        .route("/v1/mesh/summary", get(get_mesh_summary))
        .route("/ui", get(get_ui))
        .merge(crate::api::a2a::routes(state.mesh.clone()))
        .route_service("/mcp", crate::mcp::http_service(state.mesh.clone()).0)
        .route("/v1/mcp/server", put(mcp::put_server))
        .route("/v1/mcp/servers", get(mcp::get_servers))
        .route("/v1/mcp/server/{name}", delete(mcp::delete_server))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(axum::extract::DefaultBodyLimit::max(
            API_REQUEST_BODY_BYTES_MAX,
        ))
        .layer(axum::middleware::from_fn(edge::json_rejections))
        .with_state(state)
}

/// Refuses requests past [`API_HEADERS_MAX`] headers or [`API_HEADER_BYTES_MAX`] header bytes
/// with 431, before any handler (or the token check) sees them.
async fn limit_headers(req: Request, next: Next) -> Response {
    match headers_refusal(req.headers()) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    }
}

/// The 431 for headers past [`API_HEADERS_MAX`] or [`API_HEADER_BYTES_MAX`], if they are.
fn headers_refusal(h: &HeaderMap) -> Option<Response> {
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if h.len() > API_HEADERS_MAX || bytes > API_HEADER_BYTES_MAX {
        return Some(
            ApiError {
                status: Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                err: CallError::bad_field(
                    "headers",
                    format!(
                        "{} headers of {bytes} bytes exceed {API_HEADERS_MAX} headers or \
                     {API_HEADER_BYTES_MAX} bytes",
                        h.len()
                    ),
                ),
            }
            .into_response(),
        );
    }
    None
}

async fn require_token(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    match token_refusal(&st, &req) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    }
}

/// The 403 for a request without the API token, when one is set and the path needs it.
fn token_refusal<B>(st: &ApiState, req: &axum::http::Request<B>) -> Option<Response> {
    let token = st.token.as_ref()?;
    // Probes carry no token (a kubelet httpGet cannot read a Secret); both reveal only
    // liveness, readiness and the public node id. The dashboard page holds no data; its
    // script sends the token (from `#token=`).
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/ui") {
        return None;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
        _ => Some(
            ApiError::from(CallError::new(
                ErrorCode::Forbidden,
                "missing or wrong `Authorization: Bearer` token (api.token)",
            ))
            .into_response(),
        ),
    }
}

/// Compares without an early exit, so timing does not leak how much of the token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> Response {
    error_response(CallError::new(
        ErrorCode::NotFound,
        "no such endpoint; see /v1/openapi.json",
    ))
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad("body", format!("could not read body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > BODY_DRAIN_BYTES_MAX {
            // Beyond the drain bound the connection is cut (hyper closes it unread).
            break;
        }
    }
    if seen > limit {
        // The rest of an oversize body was read and dropped, up to the drain bound, so the
        // client finishes sending and reads this 413 instead of a reset connection.
        return Err(ApiError {
            status: Some(StatusCode::PAYLOAD_TOO_LARGE),
            err: CallError::bad_field("body", format!("body exceeds {limit} bytes")),
        });
    }
    Ok(buf.freeze())
}

/// Parses and validates a `PUT /v1/agent` body. Pure, so the table of bad inputs is testable.
pub fn parse_registration(bytes: &[u8]) -> Result<AgentRegistration, CallError> {
    if bytes.len() > API_BODY_BYTES_MAX {
        return Err(CallError::bad_field(
            "body",
            format!("body exceeds {API_BODY_BYTES_MAX} bytes"),
        ));
    }
    let reg: AgentRegistration = serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let field = quoted_field(&msg).unwrap_or_else(|| "body".to_string());
        CallError::bad_field(&field, format!("invalid agent registration: {msg}"))
    })?;
    validate_registration(&reg)?;
    Ok(reg)
}

/// A `bad_request` for a body serde could not decode, naming the field serde names (an
/// unknown or missing one), else `body`.
pub(crate) fn json_error(e: &serde_json::Error) -> CallError {
    let msg = e.to_string();
    let field = quoted_field(&msg).unwrap_or_else(|| "body".to_string());
    CallError::bad_field(&field, msg)
}

/// The field serde names in "unknown field `x`" / "missing field `x`" messages.
fn quoted_field(msg: &str) -> Option<String> {
    for pat in ["unknown field `", "missing field `"] {
        if let Some(rest) = msg.split(pat).nth(1) {
            return rest.split('`').next().map(str::to_string);
        }
    }
    None
}

async fn put_agent(State(st): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, API_BODY_BYTES_MAX).await?;
    let reg = parse_registration(&bytes)?;
    let name = reg.name.clone();
    let caps: Vec<String> = reg.capabilities.iter().map(|c| c.name.clone()).collect();
    st.mesh.register_agent(reg).await?;
    tracing::info!(agent = %name, capabilities = ?caps, "agent registered");
    let body = serde_json::json!({
        "node_id": st.mesh.node_id().to_string(),
        "agent": name,
        "capabilities": caps,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `GET /v1/agent`: the local agent's registration (if any) and the calls in flight to it.
async fn get_agent(State(st): State<ApiState>) -> Response {
    let body = serde_json::json!({
        "node_id": st.mesh.node_id().to_string(),
        "registration": st.mesh.agent_registration(),
        "in_flight": st.mesh.local_in_flight(),
    });
    Json(body).into_response()
}

/// Builds a [`CallRequest`] from the path, query string and headers of a call or a routes
/// query, validating each. Pure, so the table of bad inputs is testable.
pub fn parse_call_request(
    capability: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<CallRequest, CallError> {
    if !is_capability_name(capability) {
        return Err(CallError::bad_field(
            "capability",
            format!("{capability:?} is not a capability name: 1 to 128 characters of [a-z0-9_.-]"),
        ));
    }
    let mut req = CallRequest {
        capability: capability.to_string(),
        ..CallRequest::default()
    };
    apply_headers(&mut req, headers)?;
    if let Some(q) = query {
        apply_query(&mut req, q)?;
    }
    if req.attrs.len() > CALL_ATTRS_MAX {
        return Err(CallError::bad_field(
            "attr",
            format!("at most {CALL_ATTRS_MAX} attribute constraints"),
        ));
    }
    Ok(req)
}

/// A locality mode from a header or query value, named in the error when unknown.
fn parse_locality(field: &str, v: &str) -> Result<String, CallError> {
    crate::routing::locality::LocalityMode::parse(v)
        .map(|m| m.name().to_string())
        .map_err(|e| CallError::bad_field(field, e.message))
}

fn apply_query(req: &mut CallRequest, query: &str) -> Result<(), CallError> {
    for (k, v) in query::query_pairs(query)? {
        match k.as_str() {
            "min_proficiency" => {
                req.min_proficiency = Some(parse_proficiency("min_proficiency", &v)?)
            }
            "policy" => req.policy = Some(routing_hint("policy", &v)?),
            "locality" => req.locality = Some(parse_locality("locality", &v)?),
            "prefer" => req.prefer = Some(routing_hint("prefer", &v)?),
            "deadline_ms" => req.deadline_ms = Some(parse_deadline("deadline_ms", &v)?),
            "complexity" => req.complexity = Some(parse_complexity("complexity", &v)?),
            k => match k.strip_prefix(ATTR_QUERY_PREFIX) {
                Some(name) => insert_attr(req, &format!("attr.{name}"), name, &v)?,
                None => {
                    return Err(CallError::bad_field(
                        k,
                        format!(
                            "unknown query parameter {k:?}; expected attr.<key>, \
                             min_proficiency, policy, locality, prefer, complexity or deadline_ms"
                        ),
                    ))
                }
            },
        }
    }
    Ok(())
}

fn apply_headers(req: &mut CallRequest, headers: &HeaderMap) -> Result<(), CallError> {
    for (name, value) in headers {
        let n = name.as_str();
        let mesh_header = n.starts_with("x-mesh-") || n == "traceparent" || n == "tracestate";
        if !mesh_header {
            continue;
        }
        let v = value
            .to_str()
            .map_err(|_| CallError::bad_field(n, format!("header {n} must be visible ASCII")))?;
        match n {
            "x-mesh-deadline-ms" => req.deadline_ms = Some(parse_deadline(n, v)?),
            "x-mesh-prefer" => req.prefer = Some(routing_hint(n, v)?),
            "x-mesh-policy" => req.policy = Some(routing_hint(n, v)?),
            "x-mesh-locality" => req.locality = Some(parse_locality(n, v)?),
            "x-mesh-min-proficiency" => req.min_proficiency = Some(parse_proficiency(n, v)?),
            "x-mesh-complexity" => req.complexity = Some(parse_complexity(n, v)?),
            "x-mesh-chain" => {
                crate::resilience::chain::decode(v)?;
                req.chain = Some(v.to_string());
            }
            "traceparent" => req.traceparent = valid_traceparent(v).then(|| v.to_string()),
            "tracestate" => req.tracestate = (v.len() <= TRACESTATE_LEN_MAX).then(|| v.to_string()),
            // Other x-mesh-* headers are the mesh's own (responses); they are ignored.
            _ => {
                if let Some(key) = n.strip_prefix(ATTR_HEADER_PREFIX) {
                    insert_attr(req, n, key, v)?;
                }
            }
        }
    }
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        req.content_type = Some(ct.to_string());
    }
    // Only a stream request is passed on (normalised, so the header stays within its limit).
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if crate::a2a::stream::wants_stream(accept) {
        req.accept = Some(crate::a2a::stream::STREAM_CONTENT_TYPE.to_string());
    }
    Ok(())
}

fn insert_attr(req: &mut CallRequest, field: &str, key: &str, v: &str) -> Result<(), CallError> {
    if key.is_empty() || key.len() > ATTR_LEN_MAX || v.len() > ATTR_LEN_MAX {
        return Err(CallError::bad_field(
            field,
            format!("attribute keys and values are 1 to {ATTR_LEN_MAX} bytes"),
        ));
    }
    if key.chars().chain(v.chars()).any(char::is_control) {
        return Err(CallError::bad_field(
            field,
            "attribute keys and values must not contain control characters",
        ));
    }
    req.attrs.insert(key.to_string(), v.to_string());
    Ok(())
}

fn parse_deadline(field: &str, v: &str) -> Result<u64, CallError> {
    match v.trim().parse::<u64>() {
        Ok(ms) if (1..=DEADLINE_MS_MAX).contains(&ms) => Ok(ms),
        _ => Err(CallError::bad_field(
            field,
            format!("{v:?} is not a deadline: expected whole milliseconds, 1 to {DEADLINE_MS_MAX}"),
        )),
    }
}

fn parse_complexity(field: &str, v: &str) -> Result<crate::contract::Complexity, CallError> {
    v.parse()
        .map_err(|e: String| CallError::bad_field(field, e))
}

fn parse_proficiency(field: &str, v: &str) -> Result<Proficiency, CallError> {
    v.parse::<Proficiency>()
        .map_err(|e| CallError::bad_field(field, e))
}

fn routing_hint(field: &str, v: &str) -> Result<String, CallError> {
    if v.is_empty() || v.len() > ROUTING_HINT_LEN_MAX || v.chars().any(char::is_control) {
        return Err(CallError::bad_field(
            field,
            format!("must be 1 to {ROUTING_HINT_LEN_MAX} printable bytes"),
        ));
    }
    Ok(v.to_string())
}

/// W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all
/// zero. An invalid one is dropped (the spec says restart the trace), not refused.
pub(crate) fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// A header value from arbitrary text: visible ASCII kept, anything else percent-encoded.
fn header_text(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("-"))
}

/// A header value kept as is when it is valid (spaces included), else [`header_text`].
fn plain_header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s.trim()).unwrap_or_else(|_| header_text(s))
}

async fn post_call(
    State(st): State<ApiState>,
    Path(capability): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    call_route(&st, &capability, query.as_deref(), &headers, body).await
}

/// `POST /v1/call/{capability}` once the path is decoded (the router's handler and the edge's
/// direct path share it).
async fn call_route(
    st: &ApiState,
    capability: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut req = parse_call_request(capability, query, headers)?;
    req.body = read_body(body, CALL_BODY_BYTES_MAX).await?;
    let resp = st.mesh.call(req).await?;
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::new(Body::from_stream(resp.body));
    *out.status_mut() = status;
    let h = out.headers_mut();
    h.insert(SERVED_BY_HEADER, header_text(&resp.served_by));
    h.insert(ATTEMPTS_HEADER, HeaderValue::from(resp.attempts));
    if resp.hedges > 0 {
        h.insert(HEDGES_HEADER, HeaderValue::from(resp.hedges));
    }
    h.insert(POLICY_HEADER, plain_header(&resp.policy));
    if let Some(why) = resp.prefer_fallback.as_deref() {
        h.insert(PREFER_FALLBACK_HEADER, plain_header(why));
    }
    if let Some(ct) = resp.content_type.as_deref() {
        h.insert(header::CONTENT_TYPE, header_text(ct));
    }
    Ok(out)
}

/// `GET /v1/config`: the effective routing and resilience settings, per configured
/// capability and as defaults.
async fn get_config(State(st): State<ApiState>) -> Response {
    let spec = st.mesh.mesh_config();
    (StatusCode::OK, Json(&*spec)).into_response()
}

/// `POST /v1/config/reload`: re-read the node's config file and apply its resilience
/// settings; an invalid file is refused (400, the error names file and key) and nothing
/// changes.
async fn post_config_reload(State(st): State<ApiState>) -> Result<Response, ApiError> {
    match st.mesh.reload_config() {
        Ok(spec) => Ok((StatusCode::OK, Json(&*spec)).into_response()),
        Err(message) => Err(bad("config", message)),
    }
}

async fn get_routes(
    State(st): State<ApiState>,
    Path(capability): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let req = parse_call_request(&capability, query.as_deref(), &headers)?;
    Ok(Json(st.mesh.routes(&req)?).into_response())
}

async fn get_members(State(st): State<ApiState>) -> Response {
    let body = serde_json::json!({
        "node_id": st.mesh.node_id().to_string(),
        "members": st.mesh.members(),
    });
    Json(body).into_response()
}

async fn get_capabilities(State(st): State<ApiState>) -> Response {
    let caps: BTreeMap<String, Vec<String>> = st.mesh.capabilities();
    let details = st.mesh.capability_details().await;
    Json(serde_json::json!({ "capabilities": caps, "details": details })).into_response()
}

async fn get_openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn get_metrics(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    obs::metrics_response(&st.mesh, accept)
}

async fn get_mesh_matrix(State(st): State<ApiState>) -> Response {
    obs::matrix_response(&st.mesh)
}

async fn get_mesh_summary(State(st): State<ApiState>) -> Response {
    obs::summary_response(&st.mesh)
}

async fn get_ui() -> Response {
    obs::ui_response()
}

async fn get_healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

async fn get_readyz(State(st): State<ApiState>) -> Response {
    let node_id = st.mesh.node_id().to_string();
    if st.mesh.is_ready() {
        let body = serde_json::json!({
            "ready": true,
            "node_id": node_id,
            "admission": serde_json::to_value(st.mesh.admission_report()).unwrap_or_default(),
        });
        return Json(body).into_response();
    }
    let admission = st.mesh.admission_report();
    let body = serde_json::json!({
        "ready": false,
        "code": "not_ready",
        "node_id": node_id,
        "message": format!("not joined or not admitted: {admission}"),
        "admission": serde_json::to_value(&admission).unwrap_or_default(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn call_request_from_query_and_headers() {
        let h = headers(&[
            ("x-mesh-attr-region", "eu"),
            ("x-mesh-deadline-ms", "1500"),
            ("x-mesh-prefer", "inv-2"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("content-type", "application/json"),
        ]);
        let r = parse_call_request(
            "inventory.query",
            Some("attr.warehouse=A&min_proficiency=expert&policy=round_robin"),
            &h,
        )
        .unwrap();
        assert_eq!(r.attrs.get("region").unwrap(), "eu");
        assert_eq!(r.attrs.get("warehouse").unwrap(), "A");
        assert_eq!(r.deadline_ms, Some(1500));
        assert_eq!(r.prefer.as_deref(), Some("inv-2"));
        assert_eq!(r.policy.as_deref(), Some("round_robin"));
        assert_eq!(r.min_proficiency, Some(Proficiency::Expert));
        assert!(r.traceparent.is_some());
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn invalid_traceparent_is_dropped_not_refused() {
        let h = headers(&[("traceparent", "00-0000-zz-01")]);
        let r = parse_call_request("a", None, &h).unwrap();
        assert!(r.traceparent.is_none());
    }

    /// Each bad call input, and the field its `bad_request` must name.
    #[test]
    fn bad_call_inputs() {
        let long = "x".repeat(ROUTING_HINT_LEN_MAX + 1);
        type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("Bad Cap", None, &[], "capability"),
            ("a/b", None, &[], "capability"),
            ("a", Some("min_proficiency=guru"), &[], "min_proficiency"),
            ("a", Some("deadline_ms=0"), &[], "deadline_ms"),
            ("a", Some("deadline_ms=soon"), &[], "deadline_ms"),
            ("a", Some("colour=red"), &[], "colour"),
            (
                "a",
                None,
                &[("x-mesh-deadline-ms", "-5")],
                "x-mesh-deadline-ms",
            ),
            (
                "a",
                None,
                &[("x-mesh-deadline-ms", "999999999")],
                "x-mesh-deadline-ms",
            ),
            (
                "a",
                None,
                &[("x-mesh-min-proficiency", "x")],
                "x-mesh-min-proficiency",
            ),
            ("a", None, &[("x-mesh-prefer", &long)], "x-mesh-prefer"),
            ("a", Some("attr.=x"), &[], "attr."),
        ];
        for (cap, q, h, field) in cases {
            let e = parse_call_request(cap, *q, &headers(h)).expect_err(field);
            assert_eq!(e.code, ErrorCode::BadRequest, "{field}");
            assert_eq!(e.field.as_deref(), Some(*field), "{e:?}");
        }
        let many: String = (0..=CALL_ATTRS_MAX)
            .map(|i| format!("attr.k{i}=v&"))
            .collect();
        let e = parse_call_request("a", Some(&many), &HeaderMap::new()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("attr"));
    }

    /// Each bad registration body, and the field its `bad_request` must name.
    #[test]
    fn bad_registrations() {
        let ok = r#"{"name":"a","handler":"http://127.0.0.1:9","capabilities":[{"name":"x.y"}]}"#;
        parse_registration(ok.as_bytes()).unwrap();
        let big = format!(
            r#"{{"name":"{}","handler":"http://h","capabilities":[]}}"#,
            "a".repeat(API_BODY_BYTES_MAX)
        );
        let cases: &[(&str, &str)] = &[
            ("{", "body"),
            ("[]", "body"),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[],"extra":1}"#,
                "extra",
            ),
            (r#"{"handler":"http://h","capabilities":[]}"#, "name"),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[{"name":"x.y","colour":"red"}]}"#,
                "colour",
            ),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[{"name":"x.y","proficency":"expert"}]}"#,
                "proficency",
            ),
            (
                r#"{"name":"","handler":"http://h","capabilities":[]}"#,
                "name",
            ),
            (
                r#"{"name":"a","handler":"not a url","capabilities":[]}"#,
                "handler",
            ),
            (
                r#"{"name":"a","handler":"file:///etc","capabilities":[]}"#,
                "handler",
            ),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[{"name":"Bad Name"}]}"#,
                "capabilities[0].name",
            ),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[{"name":"a"},{"name":"a"}]}"#,
                "capabilities[1].name",
            ),
            (
                r#"{"name":"a","handler":"http://h","capabilities":[{"name":"a","cost":-1}]}"#,
                "capabilities[0].cost",
            ),
            (
                r#"{"name":"a","handler":"http://h","max_concurrency":0,"capabilities":[]}"#,
                "max_concurrency",
            ),
            (&big, "body"),
        ];
        for (body, field) in cases {
            let e = parse_registration(body.as_bytes()).expect_err(field);
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert_eq!(e.field.as_deref(), Some(*field), "{e:?}");
        }
    }

    #[test]
    fn served_by_header_is_always_valid() {
        assert_eq!(header_text("12D3/inv").to_str().unwrap(), "12D3/inv");
        assert_eq!(header_text("a b/é").to_str().unwrap(), "a%20b/%C3%A9");
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    /// The token guards every route but the probes; checked against a real (single, open) mesh.
    #[tokio::test(flavor = "multi_thread")]
    async fn bearer_token_is_required_when_set() {
        let key = agentmesh_crypto::Keypair::generate(&mut rand::rngs::OsRng);
        let mesh = MeshHandle::start(crate::runtime::RuntimeConfig::new(key))
            .await
            .unwrap();
        let token = "0123456789abcdef-token";
        let app = router(mesh.clone(), Some(token.to_string()), Default::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        let http = reqwest::Client::new();
        let status =
            |rb: reqwest::RequestBuilder| async move { rb.send().await.unwrap().status().as_u16() };
        assert_eq!(status(http.get(format!("{base}/healthz"))).await, 200);
        assert_eq!(status(http.get(format!("{base}/readyz"))).await, 200);
        assert_eq!(status(http.get(format!("{base}/v1/members"))).await, 403);
        let wrong = http.get(format!("{base}/v1/members")).bearer_auth("nope");
        assert_eq!(status(wrong).await, 403);
        let right = http.get(format!("{base}/v1/members")).bearer_auth(token);
        assert_eq!(status(right).await, 200);
        let r = http
            .get(format!("{base}/readyz"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a node without seeds is ready at once");
        server.abort();
        mesh.shutdown(Duration::from_millis(100)).await;
    }

    /// Oversized bodies, too many or too large headers, malformed JSON and bad signed
    /// envelopes get a 4xx with a JSON error, and change nothing the API shows.
    #[tokio::test(flavor = "multi_thread")]
    async fn bad_input_gets_4xx_and_changes_nothing() {
        let key = agentmesh_crypto::Keypair::generate(&mut rand::rngs::OsRng);
        let mesh = MeshHandle::start(crate::runtime::RuntimeConfig::new(key))
            .await
            .unwrap();
        let app = router(mesh.clone(), None, Default::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(l, app).await });
        let http = reqwest::Client::new();
        let state = || async {
            let a: serde_json::Value = http
                .get(format!("{base}/v1/agent"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .map(|b| serde_json::from_slice(&b).unwrap())
                .unwrap();
            let s: serde_json::Value = http
                .get(format!("{base}/v1/security"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .map(|b| serde_json::from_slice(&b).unwrap())
                .unwrap();
            (
                a["registration"].clone(),
                s["revoked"].clone(),
                s["policy"].clone(),
            )
        };
        let before = state().await;
        assert!(before.0.is_null(), "no agent yet: {before:?}");
        let ok_reg =
            r#"{"name":"a","handler":"http://127.0.0.1:9","capabilities":[{"name":"x.y"}]}"#;
        let huge = format!("{{\"name\":\"{}\"}}", "a".repeat(API_BODY_BYTES_MAX));
        let bad_json = "{\"name\": \"a\", ";
        let expect = |status: u16| {
            move |r: reqwest::Response| {
                assert_eq!(r.status().as_u16(), status, "{r:?}");
                assert!(r
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.to_str().unwrap().contains("json")));
            }
        };
        let put = |b: String| http.put(format!("{base}/v1/agent")).body(b).send();
        expect(413)(put(huge).await.unwrap());
        expect(400)(put(bad_json.into()).await.unwrap());
        expect(400)(put(ok_reg.replace("x.y", "Bad Name")).await.unwrap());
        let revoke = http
            .post(format!("{base}/v1/revocations"))
            .body("zz")
            .send();
        expect(400)(revoke.await.unwrap());
        let policy = http.post(format!("{base}/v1/policy")).body("00ff").send();
        expect(400)(policy.await.unwrap());
        let call = http
            .post(format!("{base}/v1/call/x.y"))
            .body(vec![0u8; CALL_BODY_BYTES_MAX + 1])
            .send();
        expect(413)(call.await.unwrap());
        let mut many = http.get(format!("{base}/v1/members"));
        for i in 0..=API_HEADERS_MAX {
            many = many.header(format!("x-pad-{i}"), "1");
        }
        expect(431)(many.send().await.unwrap());
        let long = http
            .get(format!("{base}/v1/members"))
            .header("x-pad", "v".repeat(API_HEADER_BYTES_MAX + 1));
        expect(431)(long.send().await.unwrap());
        expect(400)(
            http.get(format!("{base}/v1/audit?bogus=1"))
                .send()
                .await
                .unwrap(),
        );
        assert_eq!(state().await, before, "bad input changed the node");
        // The same route still takes good input.
        expect(200)(put(ok_reg.into()).await.unwrap());
        assert_eq!(state().await.0["name"], "a");
        server.abort();
        mesh.shutdown(Duration::from_millis(100)).await;
    }

    /// Every `.route(path, method(..))` in [`router`] must be described in `openapi.json`.
    #[test]
    fn openapi_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"].as_str().unwrap(), "3.1.0");
        let src = include_str!("mod.rs");
        let body = src.split("fn routes(").nth(1).unwrap();
        let body = body.split("\n}\n").next().unwrap();
        // rustfmt may break a long `.route(` over lines: read it as one line.
        let body = body
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .replace("( ", "(")
            .replace(", )", ")");
        let mut seen = 0;
        for chunk in body.split(".route(\"").skip(1) {
            let path = chunk.split('"').next().unwrap();
            let method = chunk.split(", ").nth(1).unwrap().split('(').next().unwrap();
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path} missing from openapi.json");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            seen += 1;
        }
        assert_eq!(seen, 26, "router routes parsed");
        // `/mcp` is a service (rmcp's Streamable HTTP), not a `.route`.
        assert!(body.contains(".route_service(\"/mcp\""));
        assert!(doc["paths"]["/mcp"]["post"].is_object());
        for (method, path) in crate::api::a2a::ROUTES {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(
            paths.len(),
            seen + crate::api::a2a::ROUTES.len() + 1,
            "openapi.json documents a route the router lacks"
        );
    }
}
