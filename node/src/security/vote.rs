//! Vote signing: a node signs what it was asked (the quorum's [`Subject`]) and the hash of its
//! agent's canonical answer, so a quorum's tally can be checked by anyone later. The callee
//! side signs here; `quorum/` tallies and verifies.
//!
//! Canonical JSON is RFC 8785 (JCS, through `serde_jcs`): keys sorted by UTF-16 code units,
//! numbers in their ECMAScript form, no whitespace.

use agentmesh_crypto::Keypair;
use agentmesh_vote::{SignedVote, Subject, Vote};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Call ids this node remembers having voted on: it never signs twice for one call, so an
/// honest node cannot be made to look like an equivocator by a caller that asks again.
pub const VOTED_CALLS_MAX: usize = 16_384;

/// Signs votes with a node's key: the default signs once with the node key. Another signer
/// (a hardware key, or a test's misbehaving voter) may be set in the runtime configuration.
pub trait VoteSigner: Send + Sync + std::fmt::Debug {
    /// The signed votes for `vote` (an honest signer returns exactly one; the callee sends
    /// at most [`crate::contract::VOTE_FRAMES_MAX`]).
    fn sign(&self, vote: Vote) -> Vec<SignedVote>;
}

/// The default signer: the node key, once.
struct KeySigner(Keypair);

impl std::fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySigner({})", self.0.node_id())
    }
}

impl VoteSigner for KeySigner {
    fn sign(&self, vote: Vote) -> Vec<SignedVote> {
        vec![vote.sign(&self.0)]
    }
}

#[derive(Default)]
struct Voted {
    order: VecDeque<[u8; 16]>,
    set: HashSet<[u8; 16]>,
}

/// Signs quorum votes as this node.
#[derive(Clone)]
pub struct Voter {
    key: Keypair,
    epoch: u64,
    mesh_id: String,
    signer: Arc<dyn VoteSigner>,
    voted: Arc<Mutex<Voted>>,
}

impl std::fmt::Debug for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Voter({}, epoch {})", self.key.node_id(), self.epoch)
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Voter {
    /// A voter with `key` in mesh `mesh_id` (empty if open); its epoch is the node's start
    /// time (unix s).
    pub fn new(key: Keypair, mesh_id: String) -> Self {
        Self::with_epoch(key, mesh_id, now_unix_s())
    }

    /// A voter with `key` and a given `epoch` (tests and tools).
    pub fn with_epoch(key: Keypair, mesh_id: String, epoch: u64) -> Self {
        Voter {
            signer: Arc::new(KeySigner(key.clone())),
            key,
            epoch,
            mesh_id,
            voted: Default::default(),
        }
    }

    /// Replaces how votes are signed (see [`VoteSigner`]).
    pub fn with_signer(mut self, signer: Arc<dyn VoteSigner>) -> Self {
        self.signer = signer;
        self
    }

    /// The mesh this voter signs for.
    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// The subject this node signs when asked `question` for `capability` under `terms`.
    pub fn subject(
        &self,
        capability: &str,
        terms: &crate::contract::VoteTerms,
        question: &[u8],
    ) -> Subject {
        Subject {
            mesh_id: self.mesh_id.clone(),
            capability: capability.to_string(),
            n: terms.n,
            f: terms.f,
            key: terms.key.clone(),
            question_hash: answer_digest(question),
        }
    }

    /// Signs that this node's agent, asked `subject` in call `call_id`, answered `answer`.
    /// Empty if this node already voted on `call_id` (it never signs twice for one call)
    /// or the subject is over its limits.
    pub fn sign(&self, call_id: [u8; 16], subject: &Subject, answer: &[u8]) -> Vec<SignedVote> {
        if subject.check().is_err() || !self.claim(call_id) {
            return Vec::new();
        }
        self.signer.sign(Vote {
            call_id,
            subject: subject.digest(),
            answer_hash: answer_digest(answer),
            node_id: self.key.node_id(),
            epoch: self.epoch,
            signed_at: now_unix_s(),
        })
    }

    /// True the first time `call_id` is seen (remembering the newest [`VOTED_CALLS_MAX`]).
    fn claim(&self, call_id: [u8; 16]) -> bool {
        let mut v = self.voted.lock().unwrap_or_else(|p| p.into_inner());
        if !v.set.insert(call_id) {
            return false;
        }
        v.order.push_back(call_id);
        if v.order.len() > VOTED_CALLS_MAX {
            if let Some(old) = v.order.pop_front() {
                v.set.remove(&old);
            }
        }
        true
    }
}

/// RFC 8785 canonical JSON (JCS): two answers that differ only in key order, spacing or
/// number spelling are the same answer.
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    // A serde_json value always has a JCS form (no NaN or infinity is representable).
    serde_jcs::to_vec(v).unwrap_or_default()
}

/// SHA-256 of a JSON value's canonical form.
pub fn value_digest(v: &serde_json::Value) -> [u8; 32] {
    Sha256::digest(canonical_json(v)).into()
}

/// The hash a vote signs for an answer or a question: of the canonical JSON if the bytes are
/// JSON, else of the raw bytes.
pub fn answer_digest(answer: &[u8]) -> [u8; 32] {
    match serde_json::from_slice::<serde_json::Value>(answer) {
        Ok(v) => value_digest(&v),
        Err(_) => Sha256::digest(answer).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8785_numbers_and_key_order() {
        // From RFC 8785 §3.2.2 and §3.2.3: numbers in ECMAScript form, keys by UTF-16 units.
        let v: serde_json::Value = serde_json::from_str(
            r#"{"b":1.0E2,"a":[1e-7,0.000001,-0.0],"\u20ac":1,"\ud83d\ude00":2}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            "{\"a\":[1e-7,0.000001,0],\"b\":100,\"\u{20ac}\":1,\"\u{1f600}\":2}"
        );
    }

    #[test]
    fn a_node_signs_one_vote_per_call() {
        let v = Voter::with_epoch(Keypair::from_secret([1; 32]), "m".into(), 1);
        let terms = crate::contract::VoteTerms {
            n: 3,
            f: None,
            key: None,
        };
        let s = v.subject("c.x", &terms, b"{}");
        assert_eq!(v.sign([1; 16], &s, b"1").len(), 1);
        assert!(
            v.sign([1; 16], &s, b"2").is_empty(),
            "asked again: no second vote"
        );
        assert_eq!(v.sign([2; 16], &s, b"2").len(), 1);
    }
}
