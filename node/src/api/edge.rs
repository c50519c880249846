//! The API's HTTP edge: the server loop (hyper with the node's own header limit) and the
//! layer that turns every rejection the framework makes by itself (a path segment that is
//! not UTF-8, a wrong method, a body past an extractor's limit) into the API's JSON error,
//! so every 4xx the node sends carries a stable `code`.

use super::{ApiError, API_HEADERS_MAX, SERVED_BY_HEADER};
use crate::contract::{CallError, ErrorCode};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::time::Duration;

/// Most headers hyper parses before answering an empty 431 by itself. Above
/// [`API_HEADERS_MAX`] so that requests with 65 to 512 headers reach the node's own check and
/// get its JSON 431; past this, hyper refuses the request before the node sees it.
pub const HYPER_HEADERS_MAX: usize = 8 * API_HEADERS_MAX;
/// Longest framework rejection text copied into the JSON error's message, in bytes.
const REJECTION_TEXT_BYTES_MAX: usize = 1024;
/// How long a connection may take to send its request head, in ms (slowloris bound).
pub const HEADER_READ_TIMEOUT_MS: u64 = 30_000;

/// Rewrites a 4xx that is not already JSON into the API's error shape. Answers of a routed
/// call (they carry [`SERVED_BY_HEADER`]) are the agent's own and pass through untouched.
pub async fn json_rejections(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !status.is_client_error() || json || resp.headers().contains_key(SERVED_BY_HEADER) {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), REJECTION_TEXT_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut out = ApiError {
        status: Some(status),
        err: rejection_error(status, text),
    }
    .into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}

/// The JSON error for a framework rejection with `status` and its plain-text `text`.
fn rejection_error(status: StatusCode, text: String) -> CallError {
    let reason = status.canonical_reason().unwrap_or("rejected").to_string();
    let message = if text.is_empty() { reason } else { text };
    match status {
        StatusCode::NOT_FOUND => CallError::new(ErrorCode::NotFound, message),
        StatusCode::METHOD_NOT_ALLOWED => {
            let mut e = CallError::new(
                ErrorCode::MethodNotAllowed,
                format!("{message}: see the Allow header and /v1/openapi.json"),
            );
            e.field = Some("method".into());
            e
        }
        StatusCode::PAYLOAD_TOO_LARGE => CallError::bad_field("body", message),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => CallError::bad_field("headers", message),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => CallError::bad_field("content-type", message),
        _ if message.contains("URL") || message.contains("path") => {
            CallError::bad_field("path", message)
        }
        _ if message.contains("query") => CallError::bad_field("query", message),
        _ => CallError::new(ErrorCode::BadRequest, message),
    }
}

/// The API as the node serves it: the router, and the state of the call route, which
/// [`Api::handle`] serves without it.
#[derive(Clone)]
pub struct Api {
    /// Every route, `POST /v1/call/{capability}` included.
    pub router: Router,
    pub(crate) state: super::ApiState,
}

/// The capability of a `/v1/call/<capability>` path that needs no decoding (no `%`, no
/// further segment); any other path goes through the router.
fn plain_call_capability(path: &str) -> Option<&str> {
    let cap = path.strip_prefix("/v1/call/")?;
    (!cap.is_empty() && !cap.contains(['/', '%'])).then_some(cap)
}

impl Api {
    /// Answers one request. `POST /v1/call/<capability>`, the hot path, skips the router and
    /// its middleware stack (measured in docs/performance.md) but makes the same checks in the
    /// same order: header limits, then the API token, then the route itself; every other
    /// request, and a call path that needs decoding, goes through the router.
    pub async fn handle(self, req: Request) -> Response {
        let cap = (req.method() == axum::http::Method::POST)
            .then(|| plain_call_capability(req.uri().path()))
            .flatten();
        let Some(cap) = cap else {
            return match tower::ServiceExt::oneshot(self.router, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
        };
        if let Some(refusal) = super::headers_refusal(req.headers()) {
            return refusal;
        }
        if let Some(refusal) = super::token_refusal(&self.state, &req) {
            return refusal;
        }
        let cap = cap.to_string();
        let (parts, body) = req.into_parts();
        let query = parts.uri.query();
        match super::call_route(&self.state, &cap, query, &parts.headers, body).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }
}

/// Serves `api` on `listener` (HTTP/1.1) until `stop` resolves, then lets requests in flight
/// finish. Unlike `axum::serve`, it raises hyper's header count limit to
/// [`HYPER_HEADERS_MAX`], so the node's own limit ([`API_HEADERS_MAX`]) answers first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_headers(HYPER_HEADERS_MAX)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        // Nagle would hold a streamed body chunk behind the response head for ~40 ms.
        let _ = tcp.set_nodelay(true);
        let api = api.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let api = api.clone();
            async move {
                Ok::<_, std::convert::Infallible>(api.handle(req.map(axum::body::Body::new)).await)
            }
        });
        let conn = http.serve_connection(TokioIo::new(tcp), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_call_paths_skip_the_router() {
        assert_eq!(plain_call_capability("/v1/call/x.y"), Some("x.y"));
        for path in [
            "/v1/call/",
            "/v1/call/x/y",
            "/v1/call/x%2Ey",
            "/v1/calls/x",
            "/v1/call",
            "/v2/call/x",
        ] {
            assert_eq!(plain_call_capability(path), None, "{path}");
        }
    }

    /// The call route served past the router answers exactly as the router does: same
    /// status, code, field and body, for refusals (headers, token, name, query, body size,
    /// no agent) and for a call that an agent serves.
    #[tokio::test(flavor = "multi_thread")]
    async fn direct_call_route_answers_as_the_router_does() {
        let agent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent_url = format!("http://{}", agent.local_addr().unwrap());
        let echo = Router::new().fallback(|body: axum::body::Bytes| async move { body });
        let agent_server = tokio::spawn(async move { axum::serve(agent, echo).await });
        let key = agentmesh_crypto::Keypair::generate(&mut rand::rngs::OsRng);
        let mesh = crate::runtime::MeshHandle::start(crate::runtime::RuntimeConfig::new(key))
            .await
            .unwrap();
        let token = "0123456789abcdef-token";
        let mcp = crate::mcp::agents::McpAgents::new(mesh.clone(), "mcp".into(), 64);
        let api =
            crate::api::api_with_mcp(mesh.clone(), Some(token.into()), Default::default(), mcp);
        let (direct, routed) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let bases = [direct.local_addr().unwrap(), routed.local_addr().unwrap()]
            .map(|a| format!("http://{a}"));
        let router = api.router.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let servers = [
            tokio::spawn(serve(direct, api, async move {
                let _ = stop_rx.await;
            })),
            tokio::spawn(async move {
                let _ = axum::serve(routed, router).await;
            }),
        ];
        let http = reqwest::Client::new();
        let reg = format!(
            r#"{{"name":"echo","handler":"{agent_url}","capabilities":[{{"name":"x.y"}}]}}"#
        );
        let put = http
            .put(format!("{}/v1/agent", bases[1]))
            .bearer_auth(token)
            .body(reg);
        assert_eq!(put.send().await.unwrap().status(), 200);
        let big = vec![b'a'; crate::api::CALL_BODY_BYTES_MAX + 1];
        type Case = (&'static str, Vec<(String, String)>, Vec<u8>, bool);
        let many: Vec<(String, String)> = (0..=API_HEADERS_MAX)
            .map(|i| (format!("x-pad-{i}"), "1".to_string()))
            .collect();
        let cases: Vec<Case> = vec![
            ("/v1/call/x.y", vec![], b"hello".to_vec(), true),
            ("/v1/call/x.y", vec![], b"hello".to_vec(), false),
            ("/v1/call/x.y", many, b"hello".to_vec(), true),
            ("/v1/call/Bad", vec![], b"hello".to_vec(), true),
            ("/v1/call/x.y?bogus=1", vec![], b"hello".to_vec(), true),
            ("/v1/call/x.y?deadline_ms=abc", vec![], vec![], true),
            ("/v1/call/x.y", vec![], big, true),
            ("/v1/call/none.here", vec![], b"{}".to_vec(), true),
            ("/v1/call/x%2Ey", vec![], b"hello".to_vec(), true),
        ];
        let mut answers = Vec::new();
        for (path, headers, body, with_token) in cases {
            let mut seen = Vec::new();
            for base in &bases {
                let mut rb = http.post(format!("{base}{path}")).body(body.clone());
                for (k, v) in &headers {
                    rb = rb.header(k, v);
                }
                if with_token {
                    rb = rb.bearer_auth(token);
                }
                let r = rb.send().await.unwrap();
                let status = r.status().as_u16();
                let served = r.headers().get(SERVED_BY_HEADER).is_some();
                let bytes = r.bytes().await.unwrap();
                let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
                let code = json
                    .as_ref()
                    .map(|j| (j["code"].clone(), j["field"].clone()));
                seen.push((status, served, code, bytes));
            }
            assert_eq!(seen[0], seen[1], "{path}: direct vs router");
            answers.push(seen.swap_remove(0));
        }
        // The first case is a call the agent serves; the others are refusals.
        let (status, served, _, body) = &answers[0];
        assert_eq!((*status, *served, &body[..]), (200, true, &b"hello"[..]));
        let statuses: Vec<u16> = answers[1..].iter().map(|a| a.0).collect();
        assert_eq!(statuses, [403, 431, 400, 400, 400, 413, 404, 200]);
        let _ = stop_tx.send(());
        for s in servers {
            s.abort();
        }
        agent_server.abort();
        mesh.shutdown(Duration::from_millis(100)).await;
    }

    #[test]
    fn rejections_map_to_codes() {
        let cases = [
            (StatusCode::NOT_FOUND, "", ErrorCode::NotFound, None),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "",
                ErrorCode::MethodNotAllowed,
                Some("method"),
            ),
            (
                StatusCode::BAD_REQUEST,
                "Invalid URL: Cannot parse `\u{fffd}` to a `String`",
                ErrorCode::BadRequest,
                Some("path"),
            ),
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "",
                ErrorCode::BadRequest,
                Some("headers"),
            ),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "",
                ErrorCode::BadRequest,
                Some("body"),
            ),
        ];
        for (status, text, code, field) in cases {
            let e = rejection_error(status, text.to_string());
            assert_eq!(e.code, code, "{status}");
            assert_eq!(e.field.as_deref(), field, "{status}");
            assert!(!e.message.is_empty());
        }
    }
}
