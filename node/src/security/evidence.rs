//! Equivocation evidence: proofs that a voter signed two different answers for one call.
//!
//! A proof is self-proving (two signatures by the same node over the same call, subject and
//! epoch), so any node can check it without trusting who relayed it. The node that caught
//! the equivocation publishes its newest proofs in its signed gossip record (extension
//! [`EVIDENCE_EXT`]); every node reads the extension from the records it holds, verifies
//! each proof, keeps the new ones (deduplicated by node and call, bounded) and penalizes the
//! equivocator in its own routing scores. Record gossip (Plumtree push, anti-entropy pull)
//! carries it to every member within a few gossip rounds.

use agentmesh_crypto::NodeId;
use agentmesh_vote::Equivocation;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// The record extension that carries equivocation proofs.
pub const EVIDENCE_EXT: &str = "equivocations";
/// Most proofs a node holds (new ones are refused when full, so a flood of proofs against
/// one node cannot push out the proofs against others; each costs two valid signatures).
pub const EVIDENCE_HELD_MAX: usize = 1024;
/// Most proofs a node publishes in its record (its newest).
pub const EVIDENCE_PER_RECORD_MAX: usize = 8;
/// Largest extension value read, in bytes (checked before decoding).
pub const EVIDENCE_EXT_BYTES_MAX: usize = 4096;
/// Failed calls one proven equivocation counts as in the equivocator's quality window:
/// enough to judge it and drop it below the quality floor at once.
pub const EQUIVOCATION_FAILURES: u32 = 10;

/// Why an evidence extension was refused. Nothing changes on refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// Larger than [`EVIDENCE_EXT_BYTES_MAX`]; not decoded.
    #[error("evidence extension of {0} bytes exceeds {EVIDENCE_EXT_BYTES_MAX}")]
    Oversize(usize),
    /// Not a list of proofs, or more than [`EVIDENCE_PER_RECORD_MAX`].
    #[error("evidence extension: {0}")]
    Decode(String),
}

/// Encodes proofs for the record extension (the newest [`EVIDENCE_PER_RECORD_MAX`]).
pub fn encode_ext(proofs: &[Equivocation]) -> Vec<u8> {
    let start = proofs.len().saturating_sub(EVIDENCE_PER_RECORD_MAX);
    postcard::to_allocvec(&proofs[start..]).unwrap_or_default()
}

/// Decodes a record extension, checking its size first.
pub fn decode_ext(bytes: &[u8]) -> Result<Vec<Equivocation>, EvidenceError> {
    if bytes.len() > EVIDENCE_EXT_BYTES_MAX {
        return Err(EvidenceError::Oversize(bytes.len()));
    }
    let list: Vec<Equivocation> =
        postcard::from_bytes(bytes).map_err(|e| EvidenceError::Decode(e.to_string()))?;
    if list.len() > EVIDENCE_PER_RECORD_MAX {
        return Err(EvidenceError::Decode(format!(
            "{} proofs, at most {EVIDENCE_PER_RECORD_MAX}",
            list.len()
        )));
    }
    Ok(list)
}

#[derive(Default)]
struct Inner {
    held: BTreeMap<(NodeId, [u8; 16]), Equivocation>,
    /// Proofs this node caught itself, newest last (what it publishes).
    caught: VecDeque<Equivocation>,
    refused_invalid: u64,
    refused_full: u64,
}

/// The proofs this node knows.
#[derive(Default)]
pub struct EvidenceStore(Mutex<Inner>);

/// How a proof was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// New: the equivocator should be penalized.
    New,
    /// Already held.
    Known,
    /// The proof does not verify.
    Invalid,
    /// The store is full.
    Full,
}

impl EvidenceStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies and keeps `e`; `caught` marks a proof this node found itself (published).
    pub fn learn(&self, e: Equivocation, caught: bool) -> Learned {
        let key = (e.node(), e.a.vote.call_id);
        let mut g = self.lock();
        if g.held.contains_key(&key) {
            return Learned::Known;
        }
        if e.verify().is_err() {
            g.refused_invalid += 1;
            return Learned::Invalid;
        }
        if g.held.len() >= EVIDENCE_HELD_MAX {
            g.refused_full += 1;
            return Learned::Full;
        }
        g.held.insert(key, e);
        if caught {
            g.caught.push_back(e);
            while g.caught.len() > EVIDENCE_PER_RECORD_MAX {
                g.caught.pop_front();
            }
        }
        Learned::New
    }

    /// The extension value this node publishes (None if it caught nothing).
    pub fn ext_value(&self) -> Option<Vec<u8>> {
        let g = self.lock();
        if g.caught.is_empty() {
            return None;
        }
        let list: Vec<Equivocation> = g.caught.iter().copied().collect();
        Some(encode_ext(&list))
    }

    /// Proven equivocations per node.
    pub fn equivocators(&self) -> BTreeMap<NodeId, usize> {
        let mut out = BTreeMap::new();
        for (node, _) in self.lock().held.keys() {
            *out.entry(*node).or_insert(0) += 1;
        }
        out
    }

    /// Proofs refused: (not valid, store full).
    pub fn refused(&self) -> (u64, u64) {
        let g = self.lock();
        (g.refused_invalid, g.refused_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::Keypair;
    use agentmesh_vote::Vote;

    fn proof(k: &Keypair, call: u8) -> Equivocation {
        let v = |h: u8| {
            Vote {
                call_id: [call; 16],
                subject: [1; 32],
                answer_hash: [h; 32],
                node_id: k.node_id(),
                epoch: 1,
                signed_at: 1,
            }
            .sign(k)
        };
        Equivocation { a: v(1), b: v(2) }
    }

    #[test]
    fn proofs_are_verified_deduplicated_and_published() {
        let k = Keypair::from_secret([4; 32]);
        let s = EvidenceStore::default();
        assert_eq!(s.ext_value(), None);
        assert_eq!(s.learn(proof(&k, 1), true), Learned::New);
        assert_eq!(s.learn(proof(&k, 1), false), Learned::Known);
        let mut forged = proof(&k, 2);
        forged.b.vote.answer_hash = [9; 32];
        assert_eq!(s.learn(forged, false), Learned::Invalid);
        assert_eq!(s.refused(), (1, 0));
        let ext = s.ext_value().unwrap();
        let back = decode_ext(&ext).unwrap();
        assert_eq!(back, vec![proof(&k, 1)]);
        assert_eq!(s.equivocators()[&k.node_id()], 1);
    }

    #[test]
    fn extension_is_size_checked_and_bounded() {
        let k = Keypair::from_secret([4; 32]);
        assert_eq!(
            decode_ext(&vec![0; EVIDENCE_EXT_BYTES_MAX + 1]),
            Err(EvidenceError::Oversize(EVIDENCE_EXT_BYTES_MAX + 1))
        );
        assert!(decode_ext(&[0xff, 0xff]).is_err());
        let many: Vec<Equivocation> = (0..20).map(|i| proof(&k, i)).collect();
        let ext = encode_ext(&many);
        assert!(ext.len() <= EVIDENCE_EXT_BYTES_MAX, "{}", ext.len());
        assert_eq!(decode_ext(&ext).unwrap().len(), EVIDENCE_PER_RECORD_MAX);
        let too_many = postcard::to_allocvec(&many[..9]).unwrap();
        assert!(decode_ext(&too_many).is_err());
    }
}
