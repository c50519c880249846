//! Observability glue: what the runtime notes about a call for metrics, traces and the
//! traffic table, and the API handlers of `/metrics`, `/v1/mesh/matrix`, `/v1/mesh/summary`
//! and the dashboard at `/ui`.

use crate::caller::Answer;
use crate::contract::{CallError, CallRequest, CallResponse};
use crate::metrics::{error_outcome, status_outcome, Metrics, NONE_LABEL};
use crate::router::Candidate;
use crate::runtime::MeshHandle;
use crate::traffic::TrafficTable;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;
use tracing::Span;

/// The dashboard page (HTML, CSS and script in one file; no external assets).
pub const UI_HTML: &str = include_str!("ui.html");

/// What the runtime notes about one routed call.
#[derive(Debug)]
pub struct CallNote {
    /// The span of the whole call (disabled when tracing is off).
    pub route: Span,
    /// The calling agent's name.
    pub source: String,
    /// The agent of the last attempt, if any was made.
    pub target: Option<String>,
}

impl CallNote {
    /// The client span of one attempt.
    pub fn attempt_span(
        &self,
        me: &agentmesh_crypto::NodeId,
        req: &CallRequest,
        t: crate::telemetry::AttemptTarget<'_>,
    ) -> Span {
        crate::telemetry::attempt_span(
            &self.route,
            crate::telemetry::CallContext {
                capability: &req.capability,
                caller_node: me,
                caller_agent: &self.source,
                traceparent: None,
                tracestate: None,
            },
            t,
        )
    }

    /// Records an attempt's outcome on its span and in the attempt counters.
    pub fn attempt_done(
        &mut self,
        metrics: &Metrics,
        span: &Span,
        req: &CallRequest,
        cand: &Candidate,
        attempt: u32,
        result: &Result<Answer, CallError>,
    ) {
        let (outcome, status) = match result {
            Ok(a) => (status_outcome(a.status).to_string(), Some(a.status)),
            Err(e) => (error_outcome(e), e.status),
        };
        self.target = Some(match result {
            Ok(a) if !a.agent.is_empty() => a.agent.clone(),
            _ => cand.agent.clone(),
        });
        crate::telemetry::finish(span, &outcome, status);
        metrics.record_attempt(&req.capability, &outcome, attempt > 1);
    }
}

/// Counts a finished routed call, closes its span and adds it to the traffic table.
pub fn observe_call(
    metrics: &Metrics,
    traffic: &TrafficTable,
    note: &CallNote,
    capability: &str,
    result: &Result<CallResponse, CallError>,
    elapsed: Duration,
) {
    let outcome = match result {
        Ok(r) => status_outcome(r.status).to_string(),
        Err(e) => error_outcome(e),
    };
    if !note.route.is_disabled() {
        if let Ok(r) = result {
            note.route.record("mesh.policy", r.policy.as_str());
            note.route.record("mesh.attempts", r.attempts as i64);
        }
        crate::telemetry::finish(&note.route, &outcome, None);
    }
    let target = note.target.as_deref().unwrap_or(NONE_LABEL);
    metrics.record_call(
        &note.source,
        target,
        capability,
        &outcome,
        elapsed.as_secs_f64(),
    );
    if note.target.is_some() {
        traffic.record(
            target,
            capability,
            outcome == "ok",
            elapsed.as_secs_f64() * 1000.0,
            &outcome,
            crate::gossip_driver::now_ms(),
        );
    }
}

/// `GET /metrics`.
pub fn metrics_response(mesh: &MeshHandle) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        mesh.metrics_text(),
    )
        .into_response()
}

/// `GET /v1/mesh/matrix`.
pub fn matrix_response(mesh: &MeshHandle) -> Response {
    Json(mesh.mesh_matrix()).into_response()
}

/// `GET /v1/mesh/summary`.
pub fn summary_response(mesh: &MeshHandle) -> Response {
    Json(mesh.mesh_summary()).into_response()
}

/// `GET /ui`.
pub fn ui_response() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        UI_HTML,
    )
        .into_response()
}
