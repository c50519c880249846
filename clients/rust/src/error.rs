//! Typed errors: the node's stable error codes, and [`MeshError`], every failure of a request.

use std::fmt;

/// The stable `code` of a node's JSON error (the node's `ErrorCode`), plus two codes this
/// client raises itself ([`ErrorCode::Unreachable`], [`ErrorCode::BadResponse`]). A code added
/// to the node later arrives as [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No agent offers the capability (404).
    NoCapability,
    /// Agents offer it but none matches the constraints (404).
    NoEligibleAgent,
    /// The chosen agent's node could not be reached (502).
    AgentUnreachable,
    /// The agent answered 5xx (502).
    AgentError,
    /// The deadline passed (504).
    DeadlineExceeded,
    /// The request is malformed; `field` names the part at fault (400).
    BadRequest,
    /// The node or the agent is over its in-flight limit (503).
    Overloaded,
    /// Every candidate's breaker is open (503).
    CircuitOpen,
    /// The call would revisit a node for the same capability, or passed the hop limit (508).
    LoopDetected,
    /// Policy (RBAC, the API token) forbids it (403).
    Forbidden,
    /// Anything else went wrong in the node (500).
    Internal,
    /// No such endpoint or named resource, e.g. an unknown workflow (404).
    NotFound,
    /// The endpoint exists but not with this HTTP method (405).
    MethodNotAllowed,
    /// The audit log cannot record the call and the node refuses calls then (503).
    AuditUnavailable,
    /// Client side: the node itself could not be reached (connection refused, timed out).
    Unreachable,
    /// Client side: the node (or the agent, passed through) answered something that is not
    /// the API's JSON, or an error without a `code`.
    BadResponse,
    /// A code this client does not know yet, as the node sent it.
    Other(String),
}

/// Every named code and its wire spelling, in one table so parsing and printing agree.
const CODES: &[(ErrorCode, &str)] = &[
    (ErrorCode::NoCapability, "no_capability"),
    (ErrorCode::NoEligibleAgent, "no_eligible_agent"),
    (ErrorCode::AgentUnreachable, "agent_unreachable"),
    (ErrorCode::AgentError, "agent_error"),
    (ErrorCode::DeadlineExceeded, "deadline_exceeded"),
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::Overloaded, "overloaded"),
    (ErrorCode::CircuitOpen, "circuit_open"),
    (ErrorCode::LoopDetected, "loop_detected"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::Internal, "internal"),
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::MethodNotAllowed, "method_not_allowed"),
    (ErrorCode::AuditUnavailable, "audit_unavailable"),
    (ErrorCode::Unreachable, "unreachable"),
    (ErrorCode::BadResponse, "bad_response"),
];

impl ErrorCode {
    /// The code as the node spells it (`no_capability`, …).
    pub fn as_str(&self) -> &str {
        if let ErrorCode::Other(s) = self {
            return s;
        }
        CODES
            .iter()
            .find(|(c, _)| c == self)
            .map(|(_, s)| *s)
            .unwrap_or("internal")
    }

    /// The code for a wire spelling; unknown spellings become [`ErrorCode::Other`].
    pub fn parse(s: &str) -> ErrorCode {
        CODES
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| ErrorCode::Other(s.to_string()))
    }

    /// The HTTP status the node answers this code with (502 for client-side and unknown
    /// codes), used when an agent passes a failed onward call back ([`MeshError::to_response`]).
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::NoCapability | ErrorCode::NoEligibleAgent | ErrorCode::NotFound => 404,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::BadRequest => 400,
            ErrorCode::Overloaded | ErrorCode::CircuitOpen | ErrorCode::AuditUnavailable => 503,
            ErrorCode::LoopDetected => 508,
            ErrorCode::Forbidden => 403,
            ErrorCode::Internal => 500,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AgentUnreachable
            | ErrorCode::AgentError
            | ErrorCode::Unreachable
            | ErrorCode::BadResponse
            | ErrorCode::Other(_) => 502,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest part of a non-JSON error body kept in [`MeshError::message`], in bytes.
pub const ERROR_TEXT_BYTES_MAX: usize = 512;

/// A failed request: the node's JSON error `{code, message, field?, status?, body?, path?,
/// attempts}`, or a client-side failure ([`ErrorCode::Unreachable`],
/// [`ErrorCode::BadResponse`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MeshError {
    /// The stable code.
    pub code: ErrorCode,
    /// The human message (for a typed error raised downstream, the root cause's own).
    pub message: String,
    /// The request field at fault (`bad_request`), or the workflow name (`not_found`).
    pub field: Option<String>,
    /// The HTTP status of the node's answer (None when the node was not reached).
    pub status: Option<u16>,
    /// The agent's own status (`agent_error`).
    pub agent_status: Option<u16>,
    /// The hops a downstream error came back through, nearest last (`loop_detected`,
    /// `deadline_exceeded`).
    pub path: Vec<String>,
    /// Attempts the node made before failing.
    pub attempts: u32,
    /// The whole JSON error document as the node sent it (Null for client-side errors); boxed
    /// to keep `Result<_, MeshError>` small.
    pub raw: Box<serde_json::Value>,
}

impl MeshError {
    /// A client-side error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        MeshError {
            code,
            message: message.into(),
            field: None,
            status: None,
            agent_status: None,
            path: Vec::new(),
            attempts: 0,
            raw: Box::default(),
        }
    }

    /// A client-side `bad_request` naming the argument at fault (nothing was sent).
    pub fn bad_argument(field: &str, message: impl Into<String>) -> Self {
        MeshError {
            field: Some(field.to_string()),
            ..MeshError::new(ErrorCode::BadRequest, message)
        }
    }

    /// The error for a non-2xx answer with `status` and `body`: the node's JSON error if the
    /// body is one, else [`ErrorCode::BadResponse`] quoting the start of the body.
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let Some(code) = v.get("code").and_then(|c| c.as_str()) else {
            let end = body.len().min(ERROR_TEXT_BYTES_MAX);
            let text = String::from_utf8_lossy(&body[..end]);
            return MeshError {
                status: Some(status),
                ..MeshError::new(
                    ErrorCode::BadResponse,
                    format!("HTTP {status} without an error code: {text}"),
                )
            };
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        MeshError {
            code: ErrorCode::parse(code),
            message: text("message").unwrap_or_default(),
            field: text("field"),
            status: Some(status),
            agent_status: v
                .get("status")
                .and_then(|s| s.as_u64())
                .and_then(|s| u16::try_from(s).ok()),
            path: v
                .get("path")
                .and_then(|p| p.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|h| h.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            attempts: v
                .get("attempts")
                .and_then(|a| a.as_u64())
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            raw: Box::new(v),
        }
    }

    /// The answer an agent sends back when an onward call made while serving failed: the
    /// node's status and JSON error, and `x-mesh-error: <code>`, so the mesh error
    /// (`loop_detected`, `deadline_exceeded`) reaches the original caller typed, with its
    /// root cause. Works as an axum handler's return value (`http::Response<String>`).
    pub fn to_response(&self) -> http::Response<String> {
        let status = self.status.unwrap_or_else(|| self.code.http_status());
        let body = if self.raw.is_object() {
            self.raw.to_string()
        } else {
            serde_json::json!({"code": self.code.as_str(), "message": self.message}).to_string()
        };
        let mut resp = http::Response::new(body);
        *resp.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = http::HeaderValue::from_str(self.code.as_str()) {
            h.insert(crate::ERROR_HEADER, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_unknown_codes_are_kept() {
        for (code, name) in CODES {
            assert_eq!(ErrorCode::parse(name), *code);
            assert_eq!(code.as_str(), *name);
        }
        let later = ErrorCode::parse("quota_exhausted");
        assert_eq!(later, ErrorCode::Other("quota_exhausted".into()));
        assert_eq!(later.as_str(), "quota_exhausted");
    }

    /// Node answers and the error each must become.
    #[test]
    fn answers_become_typed_errors() {
        let e = MeshError::from_answer(
            508,
            br#"{"code":"loop_detected","message":"call loop: node x","attempts":1,
                "path":["a answered 508","b answered 508"]}"#,
        );
        assert_eq!(e.code, ErrorCode::LoopDetected);
        assert_eq!(e.status, Some(508));
        assert_eq!(e.path, ["a answered 508", "b answered 508"]);
        assert_eq!(e.attempts, 1);
        let e = MeshError::from_answer(
            400,
            br#"{"code":"bad_request","message":"m","field":"x-mesh-deadline-ms"}"#,
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::BadRequest, Some("x-mesh-deadline-ms"))
        );
        let e =
            MeshError::from_answer(502, br#"{"code":"agent_error","message":"m","status":500}"#);
        assert_eq!(e.agent_status, Some(500));
        let e = MeshError::from_answer(404, b"<html>nope</html>");
        assert_eq!(e.code, ErrorCode::BadResponse);
        assert!(e.message.contains("nope"), "{}", e.message);
        let e = MeshError::from_answer(500, &[b'x'; 10_000]);
        assert!(e.message.len() < ERROR_TEXT_BYTES_MAX + 64);
    }

    #[test]
    fn response_passes_the_code_back() {
        let e = MeshError::from_answer(508, br#"{"code":"loop_detected","message":"m"}"#);
        let r = e.to_response();
        assert_eq!(r.status(), 508);
        assert_eq!(r.headers()[crate::ERROR_HEADER], "loop_detected");
        let back = MeshError::from_answer(508, r.body().as_bytes());
        assert_eq!(back.code, ErrorCode::LoopDetected);
        let r = MeshError::new(ErrorCode::Unreachable, "down").to_response();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[crate::ERROR_HEADER], "unreachable");
    }
}
