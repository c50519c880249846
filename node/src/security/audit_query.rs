//! Querying audit log files: the one query type of `GET /v1/audit`, `agentmesh audit query`
//! and the mesh-wide `/agentmesh/audit/1` protocol.

use super::audit::*;
use super::audit_verify::read_lines;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A query over audit entries; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Capability glob (`customer.*`).
    pub capability: Option<String>,
    /// Caller or callee agent name.
    pub agent: Option<String>,
    /// Caller or callee node id (or a suffix of it, as `members` shows).
    pub node: Option<String>,
    /// `allow`, `deny` or `audit_only_deny`.
    pub decision: Option<String>,
    /// Entries at or after this unix ms.
    pub since_ms: Option<u64>,
    /// Entries before this unix ms.
    pub until_ms: Option<u64>,
    /// Most entries returned (capped at [`QUERY_RESULTS_MAX`]).
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// True if `c` matches.
    pub fn matches(&self, c: &CallRecord) -> bool {
        let node_ok =
            |n: &str| !n.is_empty() && self.node.as_deref().is_some_and(|q| n.ends_with(q));
        self.capability
            .as_deref()
            .is_none_or(|g| crate::security::rbac::glob_match(g, &c.capability))
            && self.agent.as_deref().is_none_or(|a| {
                c.caller_agent.as_deref() == Some(a) || c.callee_agent.as_deref() == Some(a)
            })
            && (self.node.is_none() || node_ok(&c.caller_node) || node_ok(&c.callee_node))
            && self.decision.as_deref().is_none_or(|d| c.decision == d)
            && self.since_ms.is_none_or(|s| c.time_ms >= s)
            && self.until_ms.is_none_or(|u| c.time_ms < u)
    }
}

/// Runs `q` over `files`, oldest first; unparsable lines are skipped.
pub fn query_files(files: &[PathBuf], q: &AuditQuery) -> std::io::Result<Vec<CallRecord>> {
    let limit = q.limit.unwrap_or(QUERY_RESULTS_MAX).min(QUERY_RESULTS_MAX);
    let mut out = Vec::new();
    for f in files {
        for line in read_lines(f)? {
            let Ok((l, _)) = parse_line(&line) else {
                continue;
            };
            if let Some(c) = l.call {
                if q.matches(&c) {
                    out.push(c);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
    }
    Ok(out)
}
