//! Vote signing: a node signs the hash of its agent's canonical answer, so a quorum's tally
//! can be checked by anyone later. The callee side signs here; `quorum/` tallies and verifies.

use agentmesh_crypto::Keypair;
use agentmesh_vote::{SignedVote, Vote};
use sha2::{Digest, Sha256};

/// Signs quorum votes as this node.
#[derive(Clone)]
pub struct Voter {
    key: Keypair,
    epoch: u64,
}

impl std::fmt::Debug for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Voter({}, epoch {})", self.key.node_id(), self.epoch)
    }
}

impl Voter {
    /// A voter with `key`; its epoch is the node's start time (unix s).
    pub fn new(key: Keypair) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Voter { key, epoch }
    }

    /// A voter with `key` and a given `epoch` (tests and tools).
    pub fn with_epoch(key: Keypair, epoch: u64) -> Self {
        Voter { key, epoch }
    }

    /// Signs that this node's agent answered `answer` to call `call_id`.
    pub fn sign(&self, call_id: [u8; 16], answer: &[u8]) -> SignedVote {
        Vote {
            call_id,
            answer_hash: answer_digest(answer),
            node_id: self.key.node_id(),
            epoch: self.epoch,
        }
        .sign(&self.key)
    }
}

/// Normalised JSON: object keys sorted, no whitespace. Two answers that differ only in key
/// order or spacing are the same answer.
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                write_canonical(&m[*k], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
    }
}

/// SHA-256 of a JSON value's canonical form.
pub fn value_digest(v: &serde_json::Value) -> [u8; 32] {
    Sha256::digest(canonical_json(v)).into()
}

/// The hash a vote signs: of the canonical JSON if the answer is JSON, else of the raw bytes.
pub fn answer_digest(answer: &[u8]) -> [u8; 32] {
    match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) => value_digest(&v),
        Err(_) => Sha256::digest(answer).into(),
    }
}
