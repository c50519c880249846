//! The `/agentmesh/audit/1` wire protocol: `agentmesh audit query --mesh` asks every other live
//! member for the audit entries matching a query. One QUIC stream per question:
//!
//! ```text
//! querier -> member: frame(postcard AuditRequest)
//! member -> querier: frame(postcard AuditAnswer)
//! ```
//!
//! The member answers only if its policy allows the querier's certified roles the
//! pseudo-capability [`AUDIT_CAPABILITY`] on it (the same RBAC check as a call); both sides
//! audit the question, allowed or denied. Entries travel as the JSON text of
//! [`crate::security::audit::CallRecord`] (the log's own format) inside the postcard envelope. Sizes are
//! checked before decoding and every field has a named limit; decoding never panics.

use crate::net::call_proto::{ProtoError, WireError};
use crate::net::frame::{read_frame, write_frame};
use crate::security::audit::{AuditQuery, AUDIT_FIELD_LEN_MAX, AUDIT_LINE_BYTES_MAX};
use futures::{AsyncRead, AsyncWrite};
use serde::{Deserialize, Serialize};

/// The audit protocol name.
pub const AUDIT_PROTOCOL: &str = crate::net::transport::AUDIT_PROTOCOL_NAME;
/// The pseudo-capability a policy must allow for a node to read another's audit log.
pub const AUDIT_CAPABILITY: &str = crate::security::rbac::AUDIT_QUERY_CAPABILITY;
/// Largest encoded request.
pub const AUDIT_REQUEST_BYTES_MAX: usize = 4 * 1024;
/// Most entries in one answer (the querier may ask for fewer).
pub const AUDIT_ANSWER_ENTRIES_MAX: usize = 1000;
/// Largest encoded answer; a member stops adding entries before it and says `truncated`.
pub const AUDIT_ANSWER_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Concurrent inbound audit streams served; more are dropped.
pub const AUDIT_STREAMS_MAX: usize = 8;
/// Most members asked by one mesh-wide query.
pub const AUDIT_PEERS_MAX: usize = 256;

/// A question: the filters of [`AuditQuery`], each bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    /// Capability glob (`customer.*`).
    pub capability: Option<String>,
    /// Caller or callee agent name.
    pub agent: Option<String>,
    /// Caller or callee node id (or its last characters).
    pub node: Option<String>,
    /// `allow`, `deny` or `audit_only_deny`.
    pub decision: Option<String>,
    /// Entries at or after this unix ms.
    pub since_ms: Option<u64>,
    /// Entries before this unix ms.
    pub until_ms: Option<u64>,
    /// Most entries wanted (capped at [`AUDIT_ANSWER_ENTRIES_MAX`]).
    pub limit: u32,
}

/// The member's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAnswer {
    /// Matching entries, oldest first, as JSON lines.
    Entries {
        /// One `CallRecord` as JSON per entry.
        entries: Vec<String>,
        /// More entries matched than fit the limits.
        truncated: bool,
    },
    /// Refused (`forbidden`) or failed (no audit log, i/o).
    Error(WireError),
}

fn opt_len(s: &Option<String>, name: &'static str) -> Result<(), ProtoError> {
    match s {
        Some(v) if v.len() > AUDIT_FIELD_LEN_MAX => Err(ProtoError::Limit(name)),
        _ => Ok(()),
    }
}

impl AuditRequest {
    /// The request for `q` (fields longer than their limits are refused by `encode`).
    pub fn from_query(q: &AuditQuery) -> AuditRequest {
        let limit = q
            .limit
            .unwrap_or(AUDIT_ANSWER_ENTRIES_MAX)
            .min(AUDIT_ANSWER_ENTRIES_MAX);
        AuditRequest {
            capability: q.capability.clone(),
            agent: q.agent.clone(),
            node: q.node.clone(),
            decision: q.decision.clone(),
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            limit: limit as u32,
        }
    }

    /// The query it asks, with the limit capped.
    pub fn to_query(&self) -> AuditQuery {
        AuditQuery {
            capability: self.capability.clone(),
            agent: self.agent.clone(),
            node: self.node.clone(),
            decision: self.decision.clone(),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            limit: Some((self.limit as usize).min(AUDIT_ANSWER_ENTRIES_MAX)),
        }
    }

    /// Checks every named limit (on the way out and on the way in).
    pub fn check_limits(&self) -> Result<(), ProtoError> {
        opt_len(&self.capability, "capability")?;
        opt_len(&self.agent, "agent")?;
        opt_len(&self.node, "node")?;
        opt_len(&self.decision, "decision")?;
        if self.limit as usize > AUDIT_ANSWER_ENTRIES_MAX {
            return Err(ProtoError::Limit("limit"));
        }
        Ok(())
    }

    /// Encodes the request, checking limits first.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        self.check_limits()?;
        let b = postcard::to_stdvec(self).map_err(|e| ProtoError::Decode(e.to_string()))?;
        crate::net::frame::check_len(b.len(), AUDIT_REQUEST_BYTES_MAX)?;
        Ok(b)
    }

    /// Decodes and validates a request. Size is checked before decoding.
    pub fn decode(bytes: &[u8]) -> Result<AuditRequest, ProtoError> {
        crate::net::frame::check_len(bytes.len(), AUDIT_REQUEST_BYTES_MAX)?;
        let r: AuditRequest =
            postcard::from_bytes(bytes).map_err(|e| ProtoError::Decode(e.to_string()))?;
        r.check_limits()?;
        Ok(r)
    }
}

impl AuditAnswer {
    /// Builds an answer from entries (JSON text), keeping at most `limit` entries and
    /// [`AUDIT_ANSWER_BYTES_MAX`] bytes; skips entries longer than a log line may be.
    pub fn entries(all: Vec<String>, limit: usize) -> AuditAnswer {
        let limit = limit.min(AUDIT_ANSWER_ENTRIES_MAX);
        // Room for the envelope: the variant tag, lengths and the flag.
        let mut room = AUDIT_ANSWER_BYTES_MAX - 64;
        let mut entries = Vec::new();
        let mut truncated = false;
        for e in all {
            if e.len() > AUDIT_LINE_BYTES_MAX {
                continue;
            }
            // Each string costs its bytes plus a length varint of at most 5 bytes.
            let cost = e.len() + 5;
            if entries.len() >= limit || cost > room {
                truncated = true;
                break;
            }
            room -= cost;
            entries.push(e);
        }
        AuditAnswer::Entries { entries, truncated }
    }

    /// Checks every named limit.
    pub fn check_limits(&self) -> Result<(), ProtoError> {
        match self {
            AuditAnswer::Entries { entries, .. } => {
                if entries.len() > AUDIT_ANSWER_ENTRIES_MAX {
                    return Err(ProtoError::Limit("entries"));
                }
                if entries.iter().any(|e| e.len() > AUDIT_LINE_BYTES_MAX) {
                    return Err(ProtoError::Limit("entry"));
                }
                Ok(())
            }
            AuditAnswer::Error(e) => {
                if e.message.len() > crate::net::call_proto::ERROR_MESSAGE_LEN_MAX {
                    return Err(ProtoError::Limit("message"));
                }
                Ok(())
            }
        }
    }

    /// Encodes the answer, checking limits first.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        self.check_limits()?;
        let b = postcard::to_stdvec(self).map_err(|e| ProtoError::Decode(e.to_string()))?;
        crate::net::frame::check_len(b.len(), AUDIT_ANSWER_BYTES_MAX)?;
        Ok(b)
    }

    /// Decodes and validates an answer. Size is checked before decoding.
    pub fn decode(bytes: &[u8]) -> Result<AuditAnswer, ProtoError> {
        crate::net::frame::check_len(bytes.len(), AUDIT_ANSWER_BYTES_MAX)?;
        let a: AuditAnswer =
            postcard::from_bytes(bytes).map_err(|e| ProtoError::Decode(e.to_string()))?;
        a.check_limits()?;
        Ok(a)
    }
}

/// Writes a request frame.
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    r: &AuditRequest,
) -> Result<(), ProtoError> {
    write_frame(w, &r.encode()?, AUDIT_REQUEST_BYTES_MAX).await?;
    Ok(())
}

/// Reads a request frame.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<AuditRequest, ProtoError> {
    AuditRequest::decode(&read_frame(r, AUDIT_REQUEST_BYTES_MAX).await?)
}

/// Writes an answer frame.
pub async fn write_answer<W: AsyncWrite + Unpin>(
    w: &mut W,
    a: &AuditAnswer,
) -> Result<(), ProtoError> {
    write_frame(w, &a.encode()?, AUDIT_ANSWER_BYTES_MAX).await?;
    Ok(())
}

/// Reads an answer frame.
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> Result<AuditAnswer, ProtoError> {
    AuditAnswer::decode(&read_frame(r, AUDIT_ANSWER_BYTES_MAX).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorCode;

    #[test]
    fn request_round_trips_and_limits_hold_both_ways() {
        let r = AuditRequest {
            capability: Some("customer.*".into()),
            since_ms: Some(5),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(AuditRequest::decode(&r.encode().unwrap()).unwrap(), r);
        let long = AuditRequest {
            agent: Some("a".repeat(AUDIT_FIELD_LEN_MAX + 1)),
            ..Default::default()
        };
        assert!(matches!(long.encode(), Err(ProtoError::Limit("agent"))));
        let raw = postcard::to_stdvec(&long).unwrap();
        assert!(matches!(
            AuditRequest::decode(&raw),
            Err(ProtoError::Limit("agent"))
        ));
        let greedy = AuditRequest {
            limit: u32::MAX,
            ..Default::default()
        };
        let raw = postcard::to_stdvec(&greedy).unwrap();
        assert!(matches!(
            AuditRequest::decode(&raw),
            Err(ProtoError::Limit("limit"))
        ));
        assert!(AuditRequest::decode(&vec![0; AUDIT_REQUEST_BYTES_MAX + 1]).is_err());
        assert!(AuditRequest::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn answer_is_bounded_by_count_and_bytes() {
        let a = AuditAnswer::entries(vec!["{}".into(); 5], 3);
        assert_eq!(
            a,
            AuditAnswer::Entries {
                entries: vec!["{}".into(); 3],
                truncated: true
            }
        );
        let big = "x".repeat(AUDIT_LINE_BYTES_MAX);
        let a = AuditAnswer::entries(vec![big; AUDIT_ANSWER_ENTRIES_MAX], usize::MAX);
        let AuditAnswer::Entries { entries, truncated } = &a else {
            panic!("entries expected");
        };
        assert!(*truncated && entries.len() < AUDIT_ANSWER_ENTRIES_MAX);
        let b = a.encode().unwrap();
        assert!(b.len() <= AUDIT_ANSWER_BYTES_MAX);
        assert_eq!(AuditAnswer::decode(&b).unwrap(), a);
        let e = AuditAnswer::Error(WireError {
            code: ErrorCode::Forbidden,
            message: "no".into(),
            status: None,
            body: None,
            retryable: false,
            no_retry: false,
        });
        assert_eq!(AuditAnswer::decode(&e.encode().unwrap()).unwrap(), e);
        assert!(AuditAnswer::decode(&[7, 1, 2]).is_err());
    }
}
