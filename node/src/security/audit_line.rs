//! The audit log's line format: one JSON object per line, of kind `genesis` (seq 0: the node
//! the log belongs to, signed), `call`, `gap` (entries the writer could not keep up with) or
//! `checkpoint` (signed `(size, head)`).

use super::audit::{CallRecord, AUDIT_LINE_BYTES_MAX};
use agentmesh_crypto::audit::{line_hash, ChainEntry};
use agentmesh_crypto::{Checkpoint, Genesis, NodeId, Signature};
use serde::{Deserialize, Serialize};

/// A line of the log as written and read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLine {
    /// Position in the chain.
    pub seq: u64,
    /// Hex hash of the previous line.
    pub prev: String,
    /// `genesis`, `call`, `gap` or `checkpoint`.
    pub kind: String,
    /// The call (kind `call`).
    #[serde(flatten)]
    pub call: Option<CallRecord>,
    /// Checkpoint size (kind `checkpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Checkpoint head (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Checkpoint signer (node id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Checkpoint or genesis signature (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// Genesis: the node the log belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Genesis: SHA-256 (hex) of the node's admission certificate, zeros if none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// Genesis: when the log was started, unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// Gap: entries that could not be written (queue full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Gap: start time of the first lost call, unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_from_ms: Option<u64>,
    /// Gap: start time of the last lost call, unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_to_ms: Option<u64>,
}

impl AuditLine {
    /// A line of `kind` at `seq` after `prev`, every optional field empty.
    pub fn empty(seq: u64, prev: &agentmesh_crypto::ChainHash, kind: &str) -> Self {
        AuditLine {
            seq,
            prev: hex::encode(prev),
            kind: kind.into(),
            call: None,
            size: None,
            head: None,
            signer: None,
            sig: None,
            node: None,
            cert_sha256: None,
            started_ms: None,
            lost: None,
            lost_from_ms: None,
            lost_to_ms: None,
        }
    }
}

/// Why a line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than [`AUDIT_LINE_BYTES_MAX`].
    #[error("line of {0} bytes exceeds {AUDIT_LINE_BYTES_MAX}")]
    TooLong(usize),
    /// Not JSON of the right shape.
    #[error("not an audit entry: {0}")]
    Json(String),
    /// A hash, id or signature field is malformed.
    #[error("bad field {0}")]
    Field(&'static str),
}

fn hex32(s: &str, field: &'static str) -> Result<[u8; 32], LineError> {
    let v = hex::decode(s).map_err(|_| LineError::Field(field))?;
    v.try_into().map_err(|_| LineError::Field(field))
}

/// Parses one line (size checked first) into the entry and its chain view.
pub fn parse_line(line: &[u8]) -> Result<(AuditLine, ChainEntry), LineError> {
    if line.len() > AUDIT_LINE_BYTES_MAX {
        return Err(LineError::TooLong(line.len()));
    }
    let l: AuditLine = serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    let prev = hex32(&l.prev, "prev")?;
    let checkpoint = if l.kind == "checkpoint" {
        let size = l.size.ok_or(LineError::Field("size"))?;
        let head = hex32(l.head.as_deref().unwrap_or(""), "head")?;
        let signer: NodeId = l
            .signer
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|_| LineError::Field("signer"))?;
        let sig =
            hex::decode(l.sig.as_deref().unwrap_or("")).map_err(|_| LineError::Field("sig"))?;
        let sig: [u8; 64] = sig.try_into().map_err(|_| LineError::Field("sig"))?;
        Some((Checkpoint { size, head }, signer, Signature(sig)))
    } else if l.kind == "call" {
        if l.call.is_none() {
            return Err(LineError::Field("call"));
        }
        None
    } else if l.kind == "gap" {
        if l.lost.is_none() {
            return Err(LineError::Field("lost"));
        }
        None
    } else if l.kind == "genesis" {
        None
    } else {
        return Err(LineError::Field("kind"));
    };
    let genesis = if l.kind == "genesis" {
        let node: NodeId = l
            .node
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|_| LineError::Field("node"))?;
        let cert_sha256 = hex32(l.cert_sha256.as_deref().unwrap_or(""), "cert_sha256")?;
        let started_ms = l.started_ms.ok_or(LineError::Field("started_ms"))?;
        let sig =
            hex::decode(l.sig.as_deref().unwrap_or("")).map_err(|_| LineError::Field("sig"))?;
        let sig: [u8; 64] = sig.try_into().map_err(|_| LineError::Field("sig"))?;
        Some((
            Genesis {
                node,
                cert_sha256,
                started_ms,
            },
            Signature(sig),
        ))
    } else {
        None
    };
    let entry = ChainEntry {
        seq: l.seq,
        prev,
        hash: line_hash(line),
        checkpoint,
        genesis,
    };
    Ok((l, entry))
}
