//! What the call pipeline notes about a call for metrics, traces and the traffic table.

use crate::call::caller::Answer;
use crate::contract::Candidate;
use crate::contract::{CallError, CallRequest, CallResponse};
use crate::obs::metrics::{error_outcome, status_outcome, Metrics, NONE_LABEL};
use crate::obs::traffic::TrafficTable;
use std::time::Duration;
use tracing::Span;

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
        t: crate::obs::telemetry::AttemptTarget<'_>,
    ) -> Span {
        crate::obs::telemetry::attempt_span(
            &self.route,
            crate::obs::telemetry::CallContext {
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
        crate::obs::telemetry::finish(span, &outcome, status);
        metrics.record_attempt(&req.capability, &outcome, attempt > 1);
    }
}

/// Counts a finished routed call, closes its span and adds it to the traffic table (and, if
/// it did not succeed, to the recent failures or refusals).
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
        crate::obs::telemetry::finish(&note.route, &outcome, None);
    }
    let failure = match result {
        Err(e) => Some((e.status, e.message.clone())),
        Ok(r) if outcome != "ok" => Some((Some(r.status), format!("agent answered {}", r.status))),
        Ok(_) => None,
    };
    if let Some((status, message)) = failure {
        traffic.failures.record(crate::obs::failures::FailedCall {
            caller: note.source.clone(),
            capability: capability.to_string(),
            target: note.target.clone(),
            code: outcome.clone(),
            status,
            message,
            at_unix_ms: crate::membership::driver::now_ms(),
        });
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
            crate::membership::driver::now_ms(),
        );
    }
}
