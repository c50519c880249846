//! The node's side of an A2A agent: learns its skills from its Agent Card, registers them as
//! the node's capabilities, and forwards inbound mesh calls to it as A2A JSON-RPC
//! (`SendMessage`, or `SendStreamingMessage` when the card says it streams; v0.3's
//! `message/send` / `message/stream` for v0.3 cards). When the caller accepts
//! `text/event-stream` and the agent streams, its events are passed on as they arrive
//! ([`crate::a2a::stream`]); otherwise the node collects them into one answer.
//!
//! The forwarding is a small HTTP server on `127.0.0.1:0`, registered as the agent's handler:
//! the callee path of the node stays unchanged (`POST {handler}/{capability}`), and this
//! server translates each call to JSON-RPC and the answer back ([`crate::a2a`]).
//!
//! ```toml
//! [a2a]
//! card_url = "http://127.0.0.1:9999/.well-known/agent-card.json"
//! # or: handler = "http://127.0.0.1:9999"   (card discovered at {handler}/.well-known/agent-card.json)
//! max_concurrency = 64
//! streaming = true                  # use streaming when the card supports it
//! [a2a.skills.translate]            # keyed by skill id; A2A has no fields for these
//! capability = "text.translate"
//! proficiency = "expert"
//! cost = 0.2
//! attributes = { languages = ["fr"] }
//! ```

use crate::a2a::stream::{
    self as a2a_stream, Forwarding, SseParser, StreamEvent, STREAM_CONTENT_TYPE,
};
use crate::a2a::{self, Answer, CardInfo, SkillOverride, Version};
use crate::agent::client::{H_DEADLINE, H_ERROR};
use crate::contract::{AgentRegistration, CallError, ErrorCode};
use crate::runtime::MeshHandle;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Timeout of fetching an Agent Card.
pub const CARD_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline used when a forwarded call carries none, in ms.
pub const FORWARD_DEADLINE_MS_DEFAULT: u64 = 30_000;
/// Most attempts to fetch the configured card at start-up (the agent may start later).
pub const CONFIG_FETCH_ATTEMPTS_MAX: u32 = 30;
/// Pause between those attempts.
pub const CONFIG_FETCH_RETRY: Duration = Duration::from_secs(2);

fn default_max_concurrency() -> u32 {
    64
}
fn default_streaming() -> bool {
    true
}

/// `[a2a]` in `node.toml`: the node's agent is an A2A agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct A2aSection {
    /// The agent's card URL.
    pub card_url: Option<String>,
    /// The agent's base URL; its card is at `{handler}/.well-known/agent-card.json`.
    pub handler: Option<String>,
    /// Calls the agent accepts at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Use streaming when the card supports it.
    #[serde(default = "default_streaming")]
    pub streaming: bool,
    /// Per-skill capability name, proficiency, cost and attributes.
    #[serde(default)]
    pub skills: BTreeMap<String, SkillOverride>,
}

impl A2aSection {
    /// The card URL: `card_url`, or discovery under `handler`. Exactly one must be set.
    pub fn card_url(&self) -> Result<String, String> {
        let url = match (&self.card_url, &self.handler) {
            (Some(u), None) => u.clone(),
            (None, Some(h)) => format!("{}{}", h.trim_end_matches('/'), a2a::WELL_KNOWN_CARD_PATH),
            _ => return Err("a2a: set exactly one of card_url or handler".into()),
        };
        let field = if self.card_url.is_some() {
            "a2a.card_url"
        } else {
            "a2a.handler"
        };
        crate::contract::check_http_url(field, &url).map_err(|e| e.to_string())?;
        Ok(url)
    }
}

/// What to forward to: the agent's endpoint and which skill each capability stands for.
#[derive(Debug, Clone)]
struct Target {
    card: CardInfo,
    skill_of: HashMap<String, String>,
    streaming: bool,
    http: reqwest::Client,
}

/// A running forwarder; dropping it stops the server.
#[derive(Debug)]
pub struct Bridge {
    /// Its address (the registered handler).
    pub addr: std::net::SocketAddr,
    /// The registration it made.
    pub registration: AgentRegistration,
    /// Skill id per capability.
    pub skills: BTreeMap<String, String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> CallError {
    CallError::new(code, msg)
}

/// Fetches a card (size-capped). Only an `http(s)` URL is fetched; anything else is a
/// `bad_request` naming `card_url`, before any I/O.
pub async fn fetch_card(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, CallError> {
    crate::contract::check_http_url("card_url", url)?;
    let resp = http
        .get(url)
        .timeout(CARD_FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            err(
                ErrorCode::AgentUnreachable,
                format!("agent card {url}: {e}"),
            )
        })?;
    if !resp.status().is_success() {
        return Err(err(
            ErrorCode::AgentError,
            format!("agent card {url}: HTTP {}", resp.status()),
        ));
    }
    read_capped(resp, a2a::CARD_BYTES_MAX)
        .await
        .map_err(|e| CallError::bad_field("card_url", format!("agent card {url}: {e}")))
}

async fn read_capped(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > max {
            return Err(format!("larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Maps `card` to capabilities, starts a forwarder and registers the agent with the mesh.
pub async fn register(
    mesh: &MeshHandle,
    card_bytes: &[u8],
    overrides: &BTreeMap<String, SkillOverride>,
    max_concurrency: u32,
    streaming: bool,
) -> Result<Bridge, CallError> {
    let card =
        a2a::parse_card(card_bytes).map_err(|e| CallError::bad_field("card", e.to_string()))?;
    let caps = a2a::capabilities(&card, overrides)
        .map_err(|e| CallError::bad_field("skills", e.to_string()))?;
    let skills: BTreeMap<String, String> = caps
        .iter()
        .map(|(c, id)| (c.name.clone(), id.clone()))
        .collect();
    let target = Arc::new(Target {
        streaming: streaming && card.streaming,
        skill_of: skills.clone().into_iter().collect(),
        http: crate::agent::client::client(),
        card: card.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| err(ErrorCode::Internal, format!("a2a forwarder: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    let app = Router::new()
        .route("/{capability}", post(forward))
        .with_state(target);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let registration = AgentRegistration {
        name: card.name.clone(),
        handler: format!("http://{addr}"),
        capabilities: caps
            .into_iter()
            .map(|(c, _)| crate::contract::CapabilitySpec {
                name: c.name,
                proficiency: c.proficiency,
                attributes: c.attributes,
                cost: c.cost,
                description: c.description,
                ..Default::default()
            })
            .collect(),
        max_concurrency,
    };
    mesh.register_agent(registration.clone()).await?;
    tracing::info!(agent = %card.name, rpc = %card.rpc_url, ?skills, "A2A agent registered from its card");
    Ok(Bridge {
        addr,
        registration,
        skills,
        task,
    })
}

/// Registers the agent named by `[a2a]` at start-up, retrying while its card is unreachable.
/// The returned bridge lives as long as the node.
pub async fn register_from_config(mesh: MeshHandle, cfg: A2aSection) {
    let url = match cfg.card_url() {
        Ok(u) => u,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let http = crate::agent::client::client();
    for attempt in 1..=CONFIG_FETCH_ATTEMPTS_MAX {
        let result = match fetch_card(&http, &url).await {
            Ok(bytes) => {
                register(
                    &mesh,
                    &bytes,
                    &cfg.skills,
                    cfg.max_concurrency,
                    cfg.streaming,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(bridge) => {
                // Lives until the process ends.
                std::mem::forget(bridge);
                return;
            }
            Err(e) if e.code == ErrorCode::BadRequest => {
                tracing::error!(card = %url, error = %e.message, "A2A card unusable");
                return;
            }
            Err(e) => {
                tracing::warn!(card = %url, attempt, error = %e.message, "A2A card not reachable yet");
                tokio::time::sleep(CONFIG_FETCH_RETRY).await;
            }
        }
    }
    tracing::error!(card = %url, "gave up fetching the A2A agent card");
}

fn fail(status: StatusCode, code: Option<&str>, msg: String) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": msg }))).into_response();
    if let Some(c) = code.and_then(|c| c.parse().ok()) {
        r.headers_mut().insert(H_ERROR, c);
    }
    r
}

/// One inbound mesh call, forwarded as A2A JSON-RPC.
async fn forward(
    State(t): State<Arc<Target>>,
    Path(capability): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(skill) = t.skill_of.get(&capability) else {
        return fail(
            StatusCode::NOT_FOUND,
            None,
            format!("the A2A agent has no skill for {capability}"),
        );
    };
    let deadline_ms = headers
        .get(H_DEADLINE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(FORWARD_DEADLINE_MS_DEFAULT);
    let payload: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| serde_json::json!({ "text": String::from_utf8_lossy(&body) }));
    let mut req = a2a::send_request(&payload, t.card.version, t.streaming);
    req["params"]["message"]["metadata"] = serde_json::json!({ a2a::META_SKILL: skill });
    let mut b = t
        .http
        .post(&t.card.rpc_url)
        .timeout(Duration::from_millis(deadline_ms))
        .header("content-type", "application/json")
        .body(req.to_string());
    if t.card.version == Version::V1 {
        b = b.header(a2a::VERSION_HEADER, "1.0");
    }
    if t.streaming {
        b = b.header("accept", STREAM_CONTENT_TYPE);
    }
    // The caller wants the answer as it comes: pass the agent's events on one by one.
    let accept = headers.get("accept").and_then(|v| v.to_str().ok());
    let pass_on = t.streaming && a2a_stream::wants_stream(accept);
    let resp = match b.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return fail(
                StatusCode::GATEWAY_TIMEOUT,
                Some("deadline_exceeded"),
                "the A2A agent did not answer in time".into(),
            )
        }
        Err(e) => return fail(StatusCode::BAD_GATEWAY, None, format!("A2A agent: {e}")),
    };
    let sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(STREAM_CONTENT_TYPE));
    if sse && pass_on {
        return stream_on(resp);
    }
    let answer = if sse {
        read_sse(resp).await
    } else {
        match read_capped(resp, a2a::RPC_BYTES_MAX).await {
            Ok(b) => one_reply(&b, &mut Vec::new()),
            Err(e) => Answer::Failed(e),
        }
    };
    match answer {
        Answer::Done(v) => (StatusCode::OK, Json(v)).into_response(),
        Answer::Failed(m) => fail(StatusCode::BAD_GATEWAY, None, m),
        Answer::Pending => fail(
            StatusCode::BAD_GATEWAY,
            None,
            "A2A answer ended before a final result".into(),
        ),
    }
}

/// What [`stream_on`] carries between the agent's chunks.
struct StreamOn {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    fwd: Forwarding,
    ready: VecDeque<StreamEvent>,
    ended: bool,
}

/// Answers with a mesh stream ([`crate::a2a::stream`]): each of the agent's SSE events is
/// interpreted and sent on as soon as it is complete, until a last event.
fn stream_on(resp: reqwest::Response) -> Response {
    let st = StreamOn {
        body: resp.bytes_stream().boxed(),
        parser: SseParser::default(),
        fwd: Forwarding::default(),
        ready: VecDeque::new(),
        ended: false,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            if let Some(ev) = st.ready.pop_front() {
                st.ended = ev.is_last();
                return Some((Ok::<_, std::io::Error>(Bytes::from(ev.to_sse())), st));
            }
            let next = match st.body.next().await {
                Some(Ok(chunk)) => match st.parser.push(&chunk) {
                    Ok(datas) => {
                        st.ready.extend(datas.iter().filter_map(|d| st.fwd.step(d)));
                        continue;
                    }
                    Err(e) => st.fwd.fail(e.to_string()),
                },
                Some(Err(e)) if e.is_timeout() => st
                    .fwd
                    .fail("deadline passed while the A2A agent streamed".into()),
                Some(Err(e)) => st.fwd.fail(format!("A2A stream broke: {e}")),
                None => st.fwd.finish(),
            };
            match next {
                Some(ev) => st.ready.push_back(ev),
                None => return None,
            }
        }
    });
    let mut r = Response::new(axum::body::Body::from_stream(events));
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    r
}

/// A JSON-RPC response (or one SSE event's data): its result interpreted, or its error.
fn one_reply(bytes: &[u8], collected: &mut Vec<serde_json::Value>) -> Answer {
    let v: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Answer::Failed(format!("A2A answer is not JSON: {e}")),
    };
    if let Some(e) = v.get("error") {
        return Answer::Failed(format!("A2A error: {e}"));
    }
    a2a::interpret(&v["result"], collected)
}

/// Reads a `text/event-stream` of JSON-RPC responses until a final answer.
async fn read_sse(resp: reqwest::Response) -> Answer {
    let mut collected = Vec::new();
    let mut parser = SseParser::default();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let Ok(chunk) = chunk else {
            return Answer::Failed("A2A stream broke".into());
        };
        let datas = match parser.push(&chunk) {
            Ok(d) => d,
            Err(e) => return Answer::Failed(e.to_string()),
        };
        for data in datas {
            match one_reply(data.as_bytes(), &mut collected) {
                Answer::Pending => {}
                done => return done,
            }
        }
    }
    if collected.is_empty() {
        Answer::Pending
    } else {
        Answer::Done(a2a::parts_to_body(&collected))
    }
}
