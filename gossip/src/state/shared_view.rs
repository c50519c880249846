//! Starting many state machines from one verified view, sharing its storage (the simulator's
//! converged start: one table for 10,000 nodes instead of 10,000 copies).

use agentmesh_crypto::NodeId;
use std::collections::BTreeMap;

use super::{Gossip, Stats};
use crate::broadcast::BroadcastQueue;
use crate::table::Members;
use crate::time::Millis;

/// A verified member table, as one node holds it, that other nodes can start from. Cloning
/// it or starting from it copies no entries: the table's chunks are shared copy-on-write.
#[derive(Clone)]
pub struct SharedView {
    members: Members,
    stale: BTreeMap<NodeId, Millis>,
}

impl SharedView {
    /// Members in the view (any state).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True if the view holds no member.
    pub fn is_empty(&self) -> bool {
        self.members.len() == 0
    }
}

impl Gossip {
    /// This node's member table as a view other nodes can start from (O(1): shared).
    pub fn shared_view(&self) -> SharedView {
        SharedView {
            members: self.members.clone(),
            stale: self.stale.clone(),
        }
    }

    /// Replaces the member table with `view` minus this node itself, as [`Gossip::bootstrap`]
    /// does for a fresh node: no events, no re-gossip, nothing queued. The view was verified
    /// by the node that built it (verification is a pure function of the bytes, so the result
    /// is the one `bootstrap` would give with the same entries); its storage stays shared
    /// until this node changes an entry.
    pub fn bootstrap_shared(&mut self, view: &SharedView) {
        self.members = view.members.clone();
        self.members.remove(&self.me);
        self.stale = view.stale.clone();
        self.stale.remove(&self.me);
        self.queue = BroadcastQueue::new(self.cfg.broadcast_queue_max);
        self.stats = Stats::default();
        self.events.clear();
    }
}
