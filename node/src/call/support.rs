//! Helpers of the outbound pipeline that need none of its state: request validation, the
//! split of offers, the idempotency declaration, the in-flight guard and the audit record.

use crate::contract::names::{capability_name_rule, is_capability_name};
use crate::contract::{CallError, CallRequest, CallResponse, Candidate, ErrorCode, BODY_BYTES_MAX};
use crate::security::audit::CallRecord;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Counts an outbound call in flight until dropped.
pub(crate) struct OutboundGuard(Arc<std::sync::atomic::AtomicU32>);

impl OutboundGuard {
    pub(crate) fn new(c: Arc<std::sync::atomic::AtomicU32>) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        OutboundGuard(c)
    }
}

impl Drop for OutboundGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the agent declared the capability safe to retry: the capability attribute
/// `idempotent = "false"` says it is not (a retry after the request reached the agent could do
/// the work twice).
pub fn idempotent(c: &Candidate) -> bool {
    !c.capability
        .attributes
        .get(IDEMPOTENT_ATTR)
        .is_some_and(|a| a.matches("false"))
}

/// The capability attribute by which an agent declares a capability non-idempotent.
pub const IDEMPOTENT_ATTR: &str = "idempotent";

/// Splits offers into eligible candidates and `(candidate, why not)`.
pub fn split_offers(
    offers: Vec<(Candidate, Option<String>)>,
) -> (Vec<Candidate>, Vec<(Candidate, String)>) {
    let mut ok = Vec::new();
    let mut not = Vec::new();
    for (c, why) in offers {
        match why {
            None => ok.push(c),
            Some(w) => not.push((c, w)),
        }
    }
    (ok, not)
}

pub(crate) fn validate_call(req: &CallRequest) -> Result<(), CallError> {
    if !is_capability_name(&req.capability) {
        return Err(CallError::bad_field(
            "capability",
            capability_name_rule(&req.capability),
        ));
    }
    if req.body.len() > BODY_BYTES_MAX {
        return Err(CallError::bad_field(
            "body",
            format!("body exceeds {BODY_BYTES_MAX} bytes"),
        ));
    }
    if req.attrs.len() > crate::net::call_proto::CALL_ATTRS_MAX {
        return Err(CallError::bad_field(
            "attrs",
            "too many attribute constraints",
        ));
    }
    Ok(())
}

/// Completes an outbound audit entry from the call's result.
pub(crate) fn outbound_record(
    mut rec: CallRecord,
    res: &Result<CallResponse, CallError>,
    latency: Duration,
) -> CallRecord {
    rec.latency_ms = latency.as_secs_f64() * 1000.0;
    match res {
        Ok(r) => {
            let (node, agent) = r.served_by.split_once('/').unwrap_or((&r.served_by, ""));
            rec.callee_node = node.to_string();
            rec.callee_agent = Some(agent.to_string());
            rec.decision = "allow".into();
            rec.status = Some(r.status);
            rec.outcome = if r.status >= 500 { "agent_error" } else { "ok" }.into();
        }
        Err(e) => {
            rec.decision = if e.code == ErrorCode::Forbidden {
                "deny"
            } else {
                "allow"
            }
            .into();
            rec.rule = e
                .message
                .rsplit_once('(')
                .map(|(_, r)| r.trim_end_matches(')').to_string())
                .filter(|_| e.code == ErrorCode::Forbidden)
                .unwrap_or_default();
            rec.status = e.status;
            rec.outcome = serde_json::to_value(e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
        }
    }
    rec
}
