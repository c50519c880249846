//! This node's recent failed and refused calls, for the dashboard and `GET /v1/mesh/summary`:
//! two bounded rings (a flood of refusals cannot push the failures out, nor the reverse), newest
//! first. An entry pushed out of a full ring is counted, so a reader knows how many it missed.
//!
//! A call is **refused** when routing turned it away without an agent answering it:
//! `no_capability`, `no_eligible_agent`, `overloaded` (including shed), `circuit_open`; the
//! message says why. Every other unsuccessful call (an error code, or an agent's 5xx answer)
//! is **failed**.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Failed calls kept.
pub const RECENT_FAILURES_MAX: usize = 32;
/// Refused calls kept.
pub const RECENT_REFUSALS_MAX: usize = 32;
/// Longest message kept, in bytes (an agent's error can be long).
pub const FAILURE_MESSAGE_LEN_MAX: usize = 200;
/// Longest agent or capability name kept.
pub const FAILURE_NAME_LEN_MAX: usize = 128;

/// One failed or refused call made through this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedCall {
    /// The calling agent (this node's).
    pub caller: String,
    /// The capability asked for.
    pub capability: String,
    /// The agent last tried, if routing picked one.
    pub target: Option<String>,
    /// The error code (`no_eligible_agent`, `deadline_exceeded`, …) or `agent_error`.
    pub code: String,
    /// The agent's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong; for a refusal, routing's reason.
    pub message: String,
    /// When, in ms since the UNIX epoch.
    pub at_unix_ms: u64,
}

/// True when `code` is a refusal by routing rather than a failure of a call made.
pub fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "no_capability" | "no_eligible_agent" | "overloaded" | "circuit_open"
    )
}

#[derive(Debug, Default)]
struct Rings {
    failed: VecDeque<FailedCall>,
    refused: VecDeque<FailedCall>,
    failed_evicted: u64,
    refused_evicted: u64,
}

/// What [`FailureLog::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentFailures {
    /// Failed calls, newest first, at most [`RECENT_FAILURES_MAX`].
    pub failed: Vec<FailedCall>,
    /// Refused calls, newest first, at most [`RECENT_REFUSALS_MAX`].
    pub refused: Vec<FailedCall>,
    /// Failed calls pushed out of the full ring since the node started.
    pub failed_evicted: u64,
    /// Refused calls pushed out of the full ring since the node started.
    pub refused_evicted: u64,
}

/// The two rings, shared by the call pipeline (writer) and the API (reader).
#[derive(Debug, Default)]
pub struct FailureLog {
    r: Mutex<Rings>,
}

fn cut(s: &str, max: usize) -> String {
    crate::net::call_proto::truncate(s, max)
}

impl FailureLog {
    /// Records an unsuccessful call in the ring its code belongs to.
    pub fn record(&self, mut call: FailedCall) {
        call.caller = cut(&call.caller, FAILURE_NAME_LEN_MAX);
        call.capability = cut(&call.capability, FAILURE_NAME_LEN_MAX);
        call.target = call.target.map(|t| cut(&t, FAILURE_NAME_LEN_MAX));
        call.message = cut(&call.message, FAILURE_MESSAGE_LEN_MAX);
        let mut r = self.r.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut *r;
        let (ring, evicted, max) = if is_refusal(&call.code) {
            (&mut r.refused, &mut r.refused_evicted, RECENT_REFUSALS_MAX)
        } else {
            (&mut r.failed, &mut r.failed_evicted, RECENT_FAILURES_MAX)
        };
        if ring.len() >= max {
            ring.pop_back();
            *evicted += 1;
        }
        ring.push_front(call);
    }

    /// Both rings, newest first.
    pub fn snapshot(&self) -> RecentFailures {
        let r = self.r.lock().unwrap_or_else(|p| p.into_inner());
        RecentFailures {
            failed: r.failed.iter().cloned().collect(),
            refused: r.refused.iter().cloned().collect(),
            failed_evicted: r.failed_evicted,
            refused_evicted: r.refused_evicted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(code: &str, at: u64) -> FailedCall {
        FailedCall {
            caller: "a".into(),
            capability: "x.y".into(),
            target: None,
            code: code.into(),
            status: None,
            message: "m".repeat(1000),
            at_unix_ms: at,
        }
    }

    #[test]
    fn rings_are_bounded_separate_and_count_evictions() {
        let log = FailureLog::default();
        for i in 0..(RECENT_FAILURES_MAX as u64 + 5) {
            log.record(call("deadline_exceeded", i));
        }
        log.record(call("no_eligible_agent", 999));
        let s = log.snapshot();
        assert_eq!(s.failed.len(), RECENT_FAILURES_MAX);
        assert_eq!(s.failed_evicted, 5);
        assert_eq!(
            s.failed[0].at_unix_ms,
            RECENT_FAILURES_MAX as u64 + 4,
            "newest first"
        );
        assert_eq!(s.refused.len(), 1, "refusals have their own ring");
        assert_eq!(s.refused_evicted, 0);
        assert!(s.failed[0].message.len() <= FAILURE_MESSAGE_LEN_MAX);
    }

    #[test]
    fn refusal_codes() {
        for c in [
            "no_capability",
            "no_eligible_agent",
            "overloaded",
            "circuit_open",
        ] {
            assert!(is_refusal(c), "{c}");
        }
        for c in [
            "deadline_exceeded",
            "agent_error",
            "agent_unreachable",
            "loop_detected",
        ] {
            assert!(!is_refusal(c), "{c}");
        }
    }
}
