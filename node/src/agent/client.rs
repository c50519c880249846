//! The HTTP client to the local agent: `POST {handler}/{capability}` with the mesh headers.
//!
//! Used by the callee side for inbound mesh calls and by the router when the local agent is the
//! chosen candidate. One pooled client per node.

use crate::contract::{CallError, ErrorCode};
use crate::net::call_proto::{truncate, ERROR_BODY_BYTES_MAX};
use futures::StreamExt;
use http_body::Body as _;
use std::future::Future as _;
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
/// Response header an agent sets on a 5xx to say the request may be retried elsewhere.
pub const H_RETRYABLE: &str = "x-mesh-retryable";
/// Header naming a mesh error code on an error answer (the node's API sets it; an agent that
/// passes a failed onward call back sets it too, so `loop_detected` and `deadline_exceeded`
/// stay typed across hops).
pub const H_ERROR: &str = "x-mesh-error";

/// The pooled HTTP/1 client to the local agent: hyper directly. reqwest cost ~10 % of a
/// callee's CPU per call in URL parsing, redirect policy and wrappers (measured with perf at 64
/// in flight); the handler URL here is parsed once per call as an `http::Uri`, without IDNA.
pub type AgentPool = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// Builds the pooled client to the local agent.
pub fn pool() -> AgentPool {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(AGENT_CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(AGENT_POOL_IDLE_MAX)
        .build(connector)
}

/// A reqwest client for the other HTTP the node does towards agents (A2A cards and bridges).
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

/// The agent's answer: status and headers, with the body still streaming. The body is bound
/// by the request's deadline.
pub struct AgentResponse {
    head: http::response::Parts,
    body: DeadlineBody,
}

impl AgentResponse {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    /// A header's value, if it is present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The content type, if any.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(str::to_string)
    }

    /// The body length when the agent declared it.
    pub fn content_length(&self) -> Option<u64> {
        http_body::Body::size_hint(&self.body.inner).exact()
    }

    /// The body as a stream of chunks; a failure or the deadline ends it with an error.
    pub fn into_stream(self) -> DeadlineBody {
        self.body
    }
}

/// An agent's response body that fails with `deadline_exceeded` once the call's deadline has
/// passed (one timer for the whole body, as the call has one deadline).
pub struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl futures::Stream for DeadlineBody {
    type Item = Result<bytes::Bytes, CallError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(CallError::new(
                        ErrorCode::AgentUnreachable,
                        format!("agent response failed: {e}"),
                    ))))
                }
                // Trailers carry nothing the mesh passes on.
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(_) => continue,
                },
                Poll::Pending => break,
            }
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(timeout_err()))),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timeout_err() -> CallError {
    CallError::new(
        ErrorCode::DeadlineExceeded,
        "the agent did not answer in time",
    )
}

/// Sends the request. A status below 500 comes back as the live response (body still
/// streaming; the deadline keeps applying to it). 5xx becomes `agent_error` with status and
/// body; a connection failure `agent_unreachable`; a timeout `deadline_exceeded`.
pub async fn send(pool: &AgentPool, req: AgentRequest) -> Result<AgentResponse, CallError> {
    let deadline = tokio::time::Instant::now() + req.deadline;
    let uri = format!(
        "{}/{}",
        req.handler.trim_end_matches('/'),
        req.capability.trim_start_matches('/')
    );
    let uri = http::Uri::try_from(uri).map_err(|e| {
        CallError::new(
            ErrorCode::AgentUnreachable,
            format!("agent handler URL: {e}"),
        )
    })?;
    let mut b = http::Request::post(uri)
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
    // A header value the agent could not receive (a control character) is a bad request.
    let request = b
        .body(http_body_util::Full::new(req.body))
        .map_err(|e| CallError::new(ErrorCode::BadRequest, format!("agent request: {e}")))?;
    let resp = tokio::time::timeout_at(deadline, pool.request(request))
        .await
        .map_err(|_| timeout_err())?
        .map_err(map_err)?;
    let (head, inner) = resp.into_parts();
    let resp = AgentResponse {
        head,
        body: DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        },
    };
    let status = resp.status();
    if status >= 500 {
        let retryable = resp.header(H_RETRYABLE).is_some_and(|v| v == "true");
        let no_retry = resp.header(H_RETRYABLE).is_some_and(|v| v == "false");
        let code = match resp.header(H_ERROR) {
            Some("loop_detected") => ErrorCode::LoopDetected,
            Some("deadline_exceeded") => ErrorCode::DeadlineExceeded,
            _ => ErrorCode::AgentError,
        };
        let body = read_capped(resp, ERROR_BODY_BYTES_MAX).await;
        if code != ErrorCode::AgentError {
            if let Some(mut root) = lift_downstream(code, &body) {
                root.status = Some(status);
                root.push_hop(format!("{} answered {status}", req.capability));
                return Err(root);
            }
        }
        let message = match code {
            ErrorCode::AgentError => format!("agent answered {status}"),
            _ => format!("agent answered {status}: an onward call failed downstream"),
        };
        return Err(CallError {
            status: Some(status),
            body: Some(body),
            retryable,
            no_retry,
            ..CallError::new(code, message)
        });
    }
    Ok(resp)
}

/// A typed mesh error passed back by an agent from its onward call: the node's JSON error
/// (`{"code", "message", "path"?}`) lifted to the top level, so the caller reads the root
/// cause, not escaped JSON nested once per hop. `None` if the body is not such an error.
pub fn lift_downstream(code: ErrorCode, body: &str) -> Option<CallError> {
    #[derive(serde::Deserialize)]
    struct Downstream {
        code: ErrorCode,
        message: String,
        #[serde(default)]
        path: Vec<String>,
    }
    let d: Downstream = serde_json::from_str(body).ok()?;
    if d.code != code {
        return None;
    }
    let mut e = CallError::new(code, truncate(&d.message, 4096));
    for hop in d.path {
        e.push_hop(hop);
    }
    Some(e)
}

/// Maps a client error to the caller-visible code.
fn map_err(e: hyper_util::client::legacy::Error) -> CallError {
    if e.is_connect() {
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

async fn read_capped(resp: AgentResponse, max: usize) -> String {
    let mut out = Vec::new();
    let mut s = resp.into_stream();
    while let Some(Ok(chunk)) = s.next().await {
        let room = max.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= max {
            break;
        }
    }
    truncate(&String::from_utf8_lossy(&out), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_errors_are_lifted_not_nested() {
        let inner = r#"{"code":"loop_detected","message":"call loop: node ab12 already called x at hop 1","path":["y answered 508"],"attempts":1}"#;
        let e = lift_downstream(ErrorCode::LoopDetected, inner).unwrap();
        assert!(e.message.starts_with("call loop: node ab12"));
        assert_eq!(e.path, vec!["y answered 508".to_string()]);
        assert!(e.body.is_none());
        // Another code, not JSON, or JSON of something else: not lifted.
        assert!(lift_downstream(ErrorCode::DeadlineExceeded, inner).is_none());
        assert!(lift_downstream(ErrorCode::LoopDetected, "boom").is_none());
        assert!(lift_downstream(ErrorCode::LoopDetected, r#"{"x":1}"#).is_none());
        // The path stays bounded however deep the chain.
        let mut e = CallError::new(ErrorCode::LoopDetected, "x");
        for i in 0..100 {
            e.push_hop(format!("hop {i} {}", "é".repeat(300)));
        }
        assert_eq!(e.path.len(), crate::contract::ERROR_PATH_HOPS_MAX);
        assert!(e
            .path
            .iter()
            .all(|h| h.len() <= crate::contract::ERROR_PATH_HOP_LEN_MAX));
        assert!(e.path.last().unwrap().starts_with("hop 99"));
        // Over the call plane the path survives (carried where the body would be).
        let w = crate::net::call_proto::WireError::from(&e);
        let back = CallError::from(w);
        assert_eq!(back.path, e.path);
        assert!(back.body.is_none());
    }
}
