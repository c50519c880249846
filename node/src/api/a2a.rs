//! A2A on the node's local API:
//!
//! - `GET /.well-known/agent-card.json`: the aggregate Agent Card of the whole mesh, one skill
//!   per capability that a live member offers; its JSON-RPC interface is `POST /a2a`.
//! - `POST /a2a`: A2A JSON-RPC (`SendMessage`, `SendStreamingMessage`; v0.3 `message/send`,
//!   `message/stream`). The capability is named in message metadata `agentmesh.skill` (the
//!   extension [`crate::a2a::SKILL_EXTENSION_URI`]); the call is routed through the mesh with
//!   every policy, breaker, retry and deadline of a `POST /v1/call`. A stream request asks the
//!   mesh for a streamed answer: if the routed agent streams, the client gets a `task`, one
//!   `artifactUpdate` per piece as it arrives, and a final `statusUpdate`
//!   ([`crate::a2a::stream`]); otherwise one SSE event carrying the final message.
//! - `PUT /v1/a2a/agent`: registers this node's agent from its Agent Card,
//!   `{"card_url": …}` or `{"card": {…}}`, with optional `skills` overrides and
//!   `max_concurrency` (see [`crate::a2a::bridge`]).

use crate::a2a::bridge::{self, Bridge};
use crate::a2a::stream::{
    SseParser, StreamEvent, StreamReply, STREAM_CONTENT_TYPE, STREAM_EVENTS_MAX,
};
use crate::a2a::{self, Inbound, SkillOverride};
use crate::contract::{CallError, CallRequest};
use crate::runtime::MeshHandle;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Path of the mesh's JSON-RPC endpoint.
pub const RPC_PATH: &str = "/a2a";
/// Path of the A2A agent registration.
pub const AGENT_PATH: &str = "/v1/a2a/agent";
/// Every `(method, path)` [`routes`] serves, for the OpenAPI coverage test.
pub const ROUTES: [(&str, &str); 3] = [
    ("get", a2a::WELL_KNOWN_CARD_PATH),
    ("post", RPC_PATH),
    ("put", AGENT_PATH),
];

#[derive(Clone)]
struct A2aState {
    mesh: MeshHandle,
    http: reqwest::Client,
    /// The forwarder of the agent registered through `PUT /v1/a2a/agent`.
    bridge: Arc<Mutex<Option<Bridge>>>,
}

/// The A2A routes, to merge into the API router (any router state).
pub fn routes<S: Clone + Send + Sync + 'static>(mesh: MeshHandle) -> Router<S> {
    let st = A2aState {
        mesh,
        http: crate::agent::client::client(),
        bridge: Arc::new(Mutex::new(None)),
    };
    Router::new()
        .route(a2a::WELL_KNOWN_CARD_PATH, get(get_card))
        .route(RPC_PATH, post(post_rpc))
        .route(AGENT_PATH, put(put_agent))
        .with_state(st)
}

async fn get_card(State(st): State<A2aState>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .unwrap_or("127.0.0.1:7600");
    let card = a2a::aggregate_card(
        &st.mesh.node_id().to_string(),
        &format!("http://{host}{RPC_PATH}"),
        &st.mesh.capabilities(),
    );
    Json(card).into_response()
}

fn rpc_response(v: serde_json::Value) -> Response {
    (StatusCode::OK, Json(v)).into_response()
}

async fn post_rpc(State(st): State<A2aState>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, a2a::RPC_BYTES_MAX).await {
        Ok(b) => b,
        Err(e) => {
            return rpc_response(a2a::rpc_err(
                &serde_json::Value::Null,
                a2a::RPC_INVALID_REQUEST,
                &format!("body: {e}"),
                None,
            ))
        }
    };
    let inbound = match a2a::parse_inbound(&bytes) {
        Ok(i) => i,
        Err((id, code, msg)) => return rpc_response(a2a::rpc_err(&id, code, &msg, None)),
    };
    let answer = match route(&st, &inbound).await {
        Ok(resp) if inbound.streaming && is_stream(&resp) => return stream_reply(inbound, resp),
        Ok(resp) => collect(resp).await,
        Err(e) => Err(e),
    };
    let reply = match answer {
        Ok(answer) => a2a::rpc_ok(&inbound.id, a2a::reply_result(&answer, &inbound)),
        Err((code, msg, data)) => a2a::rpc_err(&inbound.id, code, &msg, data),
    };
    if inbound.streaming {
        // The routed agent did not stream: one event, the final message (or the error).
        return sse_response(Body::from(format!("data: {reply}\n\n")));
    }
    rpc_response(reply)
}

fn is_stream(resp: &crate::contract::CallResponse) -> bool {
    resp.status < 400
        && resp
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with(STREAM_CONTENT_TYPE))
}

fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    r
}

/// What [`stream_reply`] carries between the mesh stream's chunks.
struct Relay {
    body: crate::contract::ResponseBody,
    parser: SseParser,
    reply: StreamReply,
    id: serde_json::Value,
    ready: VecDeque<serde_json::Value>,
    events: usize,
    ended: bool,
}

/// Answers a streaming request with A2A events built from the mesh stream as it arrives: the
/// task first, an artifact update per piece, a final status ([`crate::a2a::stream`]).
fn stream_reply(inbound: Inbound, resp: crate::contract::CallResponse) -> Response {
    let reply = StreamReply::new(inbound.version, inbound.context_id.clone());
    let first = reply.start();
    let st = Relay {
        body: resp.body,
        parser: SseParser::default(),
        reply,
        id: inbound.id,
        ready: VecDeque::from([first]),
        events: 0,
        ended: false,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(result) = st.ready.pop_front() {
                let frame = format!("data: {}\n\n", a2a::rpc_ok(&st.id, result));
                return Some((Ok::<_, std::io::Error>(Bytes::from(frame)), st));
            }
            if st.ended {
                return None;
            }
            let mesh_events = match st.body.next().await {
                Some(Ok(chunk)) => st.parser.push(&chunk).map_err(|e| e.to_string()),
                Some(Err(e)) => Err(format!("the mesh stream broke: {e}")),
                None => Err("the mesh stream ended without a final event".into()),
            };
            match mesh_events {
                Ok(datas) => {
                    for d in datas {
                        st.events += 1;
                        let ev = serde_json::from_str::<StreamEvent>(&d).unwrap_or_else(|e| {
                            StreamEvent::Error(format!("bad mesh stream event: {e}"))
                        });
                        let ev = if st.events > STREAM_EVENTS_MAX {
                            StreamEvent::Error(format!("more than {STREAM_EVENTS_MAX} events"))
                        } else {
                            ev
                        };
                        st.ended = ev.is_last();
                        st.ready.extend(st.reply.on_event(ev));
                        if st.ended {
                            break;
                        }
                    }
                }
                Err(why) => {
                    st.ended = true;
                    st.ready.push_back(st.reply.broken(&why));
                }
            }
        }
    });
    sse_response(Body::from_stream(events))
}

type RpcFailure = (i64, String, Option<serde_json::Value>);

/// Routes the inbound message through the mesh (asking for a stream if the client did).
async fn route(st: &A2aState, i: &Inbound) -> Result<crate::contract::CallResponse, RpcFailure> {
    let capability = match &i.skill {
        Some(s) => s.clone(),
        None => {
            let caps = st.mesh.capabilities();
            match caps.keys().collect::<Vec<_>>().as_slice() {
                [only] => (*only).clone(),
                all => {
                    return Err((
                        a2a::RPC_INVALID_PARAMS,
                        format!(
                            "name the skill in message metadata \"{}\"; the mesh offers {all:?}",
                            a2a::META_SKILL
                        ),
                        None,
                    ))
                }
            }
        }
    };
    let body = serde_json::to_vec(&i.body).unwrap_or_default();
    let req = CallRequest {
        capability,
        deadline_ms: i.deadline_ms,
        policy: i.policy.clone(),
        prefer: i.prefer.clone(),
        content_type: Some("application/json".into()),
        accept: i.streaming.then(|| STREAM_CONTENT_TYPE.to_string()),
        body: Bytes::from(body),
        ..CallRequest::default()
    };
    let mesh_err = |e: CallError| -> RpcFailure {
        let code = if e.code == crate::contract::ErrorCode::BadRequest {
            a2a::RPC_INVALID_PARAMS
        } else {
            a2a::RPC_INTERNAL
        };
        let data = serde_json::to_value(&e).ok();
        (code, format!("mesh call failed: {}", e.message), data)
    };
    st.mesh.call(req).await.map_err(mesh_err)
}

/// Reads a routed answer to its end and returns it as JSON.
async fn collect(resp: crate::contract::CallResponse) -> Result<serde_json::Value, RpcFailure> {
    let mut out = Vec::new();
    let mut s = resp.body;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| (a2a::RPC_INTERNAL, format!("answer broke: {e}"), None))?;
        if out.len() + chunk.len() > a2a::RPC_BYTES_MAX {
            return Err((a2a::RPC_INTERNAL, "answer too large".into(), None));
        }
        out.extend_from_slice(&chunk);
    }
    if resp.status >= 400 {
        return Err((
            a2a::RPC_INTERNAL,
            format!("the agent answered HTTP {}", resp.status),
            Some(serde_json::json!({ "served_by": resp.served_by,
                "body": String::from_utf8_lossy(&out) })),
        ));
    }
    Ok(serde_json::from_slice(&out)
        .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&out) })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutAgent {
    card_url: Option<String>,
    card: Option<serde_json::Value>,
    #[serde(default)]
    skills: BTreeMap<String, SkillOverride>,
    max_concurrency: Option<u32>,
}

fn bad(field: &str, msg: impl Into<String>) -> Response {
    let e = CallError::bad_field(field, msg);
    (StatusCode::BAD_REQUEST, Json(e)).into_response()
}

async fn put_agent(State(st): State<A2aState>, body: Body) -> Response {
    let bytes = match crate::api::read_body(body, crate::api::API_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let p: PutAgent = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => return crate::api::error_response(crate::api::json_error(&e)),
    };
    let card = match (&p.card_url, &p.card) {
        (Some(url), None) => match bridge::fetch_card(&st.http, url).await {
            Ok(b) => b,
            Err(e) => return crate::api::error_response(e),
        },
        (None, Some(c)) => c.to_string().into_bytes(),
        _ => return bad("card_url", "give exactly one of card_url or card"),
    };
    let max = p.max_concurrency.unwrap_or(64);
    let mut slot = st.bridge.lock().await;
    match bridge::register(&st.mesh, &card, &p.skills, max, true).await {
        Ok(bridge) => {
            let out = serde_json::json!({
                "node_id": st.mesh.node_id().to_string(),
                "agent": bridge.registration.name,
                "capabilities": bridge.registration.capabilities.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                "skills": bridge.skills,
            });
            *slot = Some(bridge);
            Json(out).into_response()
        }
        Err(e) => crate::api::error_response(e),
    }
}
