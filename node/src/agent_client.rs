//! The HTTP client to the local agent: `POST {handler}/{capability}` with the mesh headers.
//!
//! Used by the callee side for inbound mesh calls and by the router when the local agent is the
//! chosen candidate. One pooled client per node.

use crate::call_proto::{truncate, ERROR_BODY_BYTES_MAX};
use crate::contract::{CallError, ErrorCode};
use futures::StreamExt;
use std::time::Duration;

/// Idle pooled connections kept to the agent.
pub const AGENT_POOL_IDLE_MAX: usize = 64;
/// Time to establish a TCP connection to the agent.
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Header carrying the remaining deadline in ms.
pub const H_DEADLINE: &str = "x-mesh-deadline-ms";
/// Header carrying the caller node id.
pub const H_CALLER_NODE: &str = "x-mesh-caller-node";
/// Header carrying the caller agent name.
pub const H_CALLER_AGENT: &str = "x-mesh-caller-agent";
/// Header carrying the caller roles, comma separated.
pub const H_CALLER_ROLES: &str = "x-mesh-caller-roles";
/// Header carrying the call id (hex).
pub const H_CALL_ID: &str = "x-mesh-call-id";
/// Header carrying the opaque call-chain token an agent copies into its onward calls.
pub const H_CHAIN: &str = "x-mesh-chain";
/// Header naming a mesh error code on an error answer (the node's API sets it; an agent that
/// passes a failed onward call back sets it too, so `loop_detected` and `deadline_exceeded`
/// stay typed across hops).
pub const H_ERROR: &str = "x-mesh-error";

/// Builds the pooled client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(AGENT_POOL_IDLE_MAX)
        .connect_timeout(AGENT_CONNECT_TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// One request to the local agent.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    /// The agent's handler base URL.
    pub handler: String,
    /// Capability (the path segment).
    pub capability: String,
    /// Body.
    pub body: bytes::Bytes,
    /// Content type.
    pub content_type: Option<String>,
    /// Time the agent has.
    pub deadline: Duration,
    /// Caller node id.
    pub caller_node: String,
    /// Caller agent name.
    pub caller_agent: Option<String>,
    /// Caller roles.
    pub caller_roles: Vec<String>,
    /// Call id, hex.
    pub call_id: String,
    /// W3C traceparent.
    pub traceparent: Option<String>,
    /// W3C tracestate.
    pub tracestate: Option<String>,
    /// Call-chain token for onward calls.
    pub chain: Option<String>,
    /// What the caller accepts back (`accept` header).
    pub accept: Option<String>,
}

/// Sends the request. A status below 500 comes back as the live response (body still
/// streaming; the deadline keeps applying to it). 5xx becomes `agent_error` with status and
/// body; a connection failure `agent_unreachable`; a timeout `deadline_exceeded`.
pub async fn send(
    client: &reqwest::Client,
    req: AgentRequest,
) -> Result<reqwest::Response, CallError> {
    let url = format!(
        "{}/{}",
        req.handler.trim_end_matches('/'),
        req.capability.trim_start_matches('/')
    );
    let mut b = client
        .post(&url)
        .timeout(req.deadline)
        .header(H_DEADLINE, req.deadline.as_millis().to_string())
        .header(H_CALLER_NODE, &req.caller_node)
        .header(H_CALLER_ROLES, req.caller_roles.join(","))
        .header(H_CALL_ID, &req.call_id)
        .header(
            "content-type",
            req.content_type.as_deref().unwrap_or("application/json"),
        );
    if let Some(a) = &req.caller_agent {
        b = b.header(H_CALLER_AGENT, a);
    }
    if let Some(t) = &req.traceparent {
        b = b.header("traceparent", t);
    }
    if let Some(t) = &req.tracestate {
        b = b.header("tracestate", t);
    }
    if let Some(c) = &req.chain {
        b = b.header(H_CHAIN, c);
    }
    if let Some(a) = &req.accept {
        b = b.header("accept", a);
    }
    let resp = b.body(req.body).send().await.map_err(map_err)?;
    let status = resp.status().as_u16();
    if status >= 500 {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retryable = header(crate::retry::H_RETRYABLE).is_some_and(|v| v == "true");
        let code = match header(H_ERROR).as_deref() {
            Some("loop_detected") => ErrorCode::LoopDetected,
            Some("deadline_exceeded") => ErrorCode::DeadlineExceeded,
            _ => ErrorCode::AgentError,
        };
        let body = read_capped(resp, ERROR_BODY_BYTES_MAX).await;
        let message = match code {
            ErrorCode::AgentError => format!("agent answered {status}"),
            _ => format!("agent answered {status}: an onward call failed downstream"),
        };
        return Err(CallError {
            status: Some(status),
            body: Some(body),
            retryable,
            ..CallError::new(code, message)
        });
    }
    Ok(resp)
}

/// Maps a client error to the caller-visible code.
pub fn map_err(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::new(
            ErrorCode::DeadlineExceeded,
            "the agent did not answer in time",
        )
    } else if e.is_connect() {
        CallError::new(
            ErrorCode::AgentUnreachable,
            format!("agent handler unreachable: {e}"),
        )
    } else {
        CallError::new(
            ErrorCode::AgentUnreachable,
            format!("agent request failed: {e}"),
        )
    }
}

async fn read_capped(resp: reqwest::Response, max: usize) -> String {
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(Ok(chunk)) = s.next().await {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    truncate(&String::from_utf8_lossy(&out), max)
}

/// The content type of a response, if any.
pub fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string())
}
