//! Root-signed revocations held by a node: a bounded set keyed by the revoked node, each with
//! a count of gossip rounds left to push it (like the piggyback queue's transmit limit).
//!
//! A revocation is accepted once, from anyone, if the mesh root signed it for this mesh; it is
//! then pushed to a few random members on arrival and on each gossip round until its
//! transmit count runs out, and handed to every joiner. Revoked nodes are dropped from
//! membership, their records and identities are refused, and their frames ignored.

use agentmesh_crypto::{NodeId, SignedRevocation};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most revocations held (oldest by node id order are never evicted: when full, new ones are
/// refused, so an attacker cannot flush real revocations; only the root can sign them).
pub const REVOCATIONS_MAX: usize = 4096;
/// Most revocations in one message.
pub const REVOCATIONS_PER_MESSAGE_MAX: usize = 64;
/// Members a fresh revocation is pushed to on arrival.
pub const REVOCATION_FANOUT: usize = 6;

/// The set of revoked nodes.
#[derive(Debug, Default, Clone)]
pub struct Revocations {
    held: BTreeMap<NodeId, (Arc<SignedRevocation>, u32)>,
}

impl Revocations {
    /// True if `id` is revoked.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.held.contains_key(id)
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True if none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Inserts a verified revocation of `id`; false if already held or the set is full.
    pub fn insert(&mut self, id: NodeId, r: Arc<SignedRevocation>, transmits: u32) -> bool {
        if self.held.contains_key(&id) || self.held.len() >= REVOCATIONS_MAX {
            return false;
        }
        self.held.insert(id, (r, transmits));
        true
    }

    /// Revocations still to be pushed (at most one message's worth), counting one transmit.
    pub fn take_hot(&mut self) -> Vec<Arc<SignedRevocation>> {
        let mut out = Vec::new();
        for (r, left) in self.held.values_mut() {
            if *left > 0 && out.len() < REVOCATIONS_PER_MESSAGE_MAX {
                *left -= 1;
                out.push(r.clone());
            }
        }
        out
    }

    /// Every revocation held, in chunks of at most one message (for joiners).
    pub fn chunks(&self) -> Vec<Vec<Arc<SignedRevocation>>> {
        let all: Vec<_> = self.held.values().map(|(r, _)| r.clone()).collect();
        all.chunks(REVOCATIONS_PER_MESSAGE_MAX)
            .map(|c| c.to_vec())
            .collect()
    }

    /// Every revocation held, by revoked node id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<SignedRevocation>> {
        self.held.values().map(|(r, _)| r)
    }

    /// The revoked node ids.
    pub fn ids(&self) -> impl Iterator<Item = &NodeId> {
        self.held.keys()
    }
}
