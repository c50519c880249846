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

/// Serves `app` on `listener` (HTTP/1.1) until `stop` resolves, then lets requests in flight
/// finish. Unlike `axum::serve`, it raises hyper's header count limit to
/// [`HYPER_HEADERS_MAX`], so the node's own limit ([`API_HEADERS_MAX`]) answers first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
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
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
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
