//! Witnessed audit checkpoints (Certificate Transparency's gossip idea, applied to the mesh).
//!
//! Each node puts its newest signed audit checkpoint `(size, head, signature)` in its signed
//! gossip record under [`AUDIT_CHECKPOINT_EXT`]. Every node keeps the newest checkpoint it has
//! seen of every other member ([`WitnessStore`], at most [`WITNESSED_NODES_MAX`] nodes) and
//! answers `GET /v1/audit/witnessed?node=<id>`. `agentmesh audit verify --witness <api>` then
//! checks a node's log against it: rewriting or cutting entries that a witnessed checkpoint
//! covers is detected even by someone holding the node's own key, since they cannot change
//! what the other nodes saw. Entries after the last witnessed checkpoint stay unprotected
//! (bounded by the checkpoint interval plus the publish and gossip delay).

use crate::security::audit::LatestCheckpoint;
use agentmesh_crypto::audit::CHAIN_HASH_LEN;
use agentmesh_crypto::{Checkpoint, NodeId, Signature};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Record extension key of the node's newest audit checkpoint.
pub const AUDIT_CHECKPOINT_EXT: &str = "audit_cp";
/// Encoded size of the extension: size (8) ‖ head (32) ‖ signature (64).
pub const CHECKPOINT_EXT_BYTES: usize = 8 + CHAIN_HASH_LEN + 64;
/// Most nodes whose checkpoints one node keeps.
pub const WITNESSED_NODES_MAX: usize = 1024;
/// Shortest time between two publications of the own checkpoint, in ms (each one is a
/// record update that gossip spreads).
pub const CHECKPOINT_PUBLISH_INTERVAL_MS: u64 = 1000;

/// Encodes a checkpoint for the record extension.
pub fn encode(c: &LatestCheckpoint) -> Vec<u8> {
    let mut b = Vec::with_capacity(CHECKPOINT_EXT_BYTES);
    b.extend_from_slice(&c.checkpoint.size.to_le_bytes());
    b.extend_from_slice(&c.checkpoint.head);
    b.extend_from_slice(&c.sig.0);
    b
}

/// Decodes the extension (exact length checked first); nothing is verified.
pub fn decode(b: &[u8]) -> Option<LatestCheckpoint> {
    if b.len() != CHECKPOINT_EXT_BYTES {
        return None;
    }
    let size = u64::from_le_bytes(b[..8].try_into().ok()?);
    let head: [u8; CHAIN_HASH_LEN] = b[8..40].try_into().ok()?;
    let sig: [u8; 64] = b[40..].try_into().ok()?;
    Some(LatestCheckpoint {
        checkpoint: Checkpoint { size, head },
        sig: Signature(sig),
    })
}

/// The newest checkpoint seen of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The checkpoint and its signature by the node.
    pub checkpoint: LatestCheckpoint,
    /// When it was first seen, unix ms.
    pub seen_ms: u64,
}

/// Checkpoints witnessed of other members. Only checkpoints signed by the node they are
/// attributed to are kept; a smaller one never replaces a larger one.
#[derive(Debug, Default)]
pub struct WitnessStore {
    seen: Mutex<BTreeMap<NodeId, Seen>>,
    /// Checkpoints refused: bad signature or encoding.
    pub invalid_total: AtomicU64,
    /// A node published a checkpoint of the same size with another head, or a smaller one
    /// than already witnessed (its log was rewritten or cut; evidence kept is the first).
    pub conflicts_total: AtomicU64,
    /// New nodes not kept because the store was full.
    pub full_total: AtomicU64,
}

impl WitnessStore {
    /// Takes in what `node`'s record carries under [`AUDIT_CHECKPOINT_EXT`]. Returns true if
    /// it became the newest checkpoint witnessed of `node`.
    pub fn observe(&self, node: &NodeId, ext: &[u8], now_ms: u64) -> bool {
        let Some(c) = decode(ext) else {
            self.invalid_total.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let mut m = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(node) {
            Some(old) if old.checkpoint == c => return false,
            Some(old) if c.checkpoint.size < old.checkpoint.checkpoint.size => {
                // Only counted once it verifies: nobody else can sign it.
                if c.checkpoint.verify(node, &c.sig).is_ok() {
                    self.conflicts_total.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node, witnessed = old.checkpoint.checkpoint.size, now = c.checkpoint.size, "a node's audit checkpoint went backwards: its log was cut or restarted from an older copy");
                }
                return false;
            }
            None if m.len() >= WITNESSED_NODES_MAX => {
                self.full_total.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            _ => {}
        }
        if c.checkpoint.verify(node, &c.sig).is_err() {
            self.invalid_total.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if let Some(old) = m.get(node) {
            if old.checkpoint.checkpoint.size == c.checkpoint.size {
                self.conflicts_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, size = c.checkpoint.size, "a node signed two different audit checkpoints of one size: its log was rewritten");
                return false;
            }
        }
        m.insert(
            *node,
            Seen {
                checkpoint: c,
                seen_ms: now_ms,
            },
        );
        true
    }

    /// The newest checkpoint witnessed of `node`.
    pub fn get(&self, node: &NodeId) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied()
    }

    /// Nodes witnessed.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True if no node was witnessed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters as `(metric name, value)`.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("agentmesh_audit_witnessed_nodes", self.len() as u64),
            (
                "agentmesh_audit_witness_invalid_total",
                l(&self.invalid_total),
            ),
            (
                "agentmesh_audit_witness_conflicts_total",
                l(&self.conflicts_total),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::Keypair;

    fn cp(key: &Keypair, size: u64, head: u8) -> Vec<u8> {
        let c = Checkpoint {
            size,
            head: [head; 32],
        };
        encode(&LatestCheckpoint {
            checkpoint: c,
            sig: c.sign(key),
        })
    }

    #[test]
    fn keeps_the_newest_checkpoint_signed_by_the_node() {
        let node = Keypair::from_secret([1; 32]);
        let other = Keypair::from_secret([2; 32]);
        let id = node.node_id();
        let w = WitnessStore::default();
        assert!(w.observe(&id, &cp(&node, 10, 1), 1));
        assert!(w.observe(&id, &cp(&node, 20, 2), 2));
        // Smaller (a cut log republished) never replaces: counted as a conflict.
        assert!(!w.observe(&id, &cp(&node, 15, 3), 3));
        assert_eq!(w.conflicts_total.load(Ordering::Relaxed), 1);
        // Same size, other head: a rewrite, kept as the first.
        assert!(!w.observe(&id, &cp(&node, 20, 9), 4));
        assert_eq!(w.conflicts_total.load(Ordering::Relaxed), 2);
        // Signed by someone else, or malformed: refused.
        assert!(!w.observe(&id, &cp(&other, 30, 4), 5));
        assert!(!w.observe(&id, &[0; 7], 5));
        assert_eq!(w.invalid_total.load(Ordering::Relaxed), 2);
        let seen = w.get(&id).unwrap();
        assert_eq!(seen.checkpoint.checkpoint.size, 20);
        assert_eq!(seen.checkpoint.checkpoint.head, [2; 32]);
        assert_eq!(decode(&encode(&seen.checkpoint)), Some(seen.checkpoint));
    }

    #[test]
    fn the_store_is_bounded() {
        let w = WitnessStore::default();
        for i in 0..WITNESSED_NODES_MAX + 3 {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let k = Keypair::from_secret(s);
            w.observe(&k.node_id(), &cp(&k, 1, 1), 0);
        }
        assert_eq!(w.len(), WITNESSED_NODES_MAX);
        assert_eq!(w.full_total.load(Ordering::Relaxed), 3);
    }
}
