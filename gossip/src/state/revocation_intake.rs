//! Taking in signed revocations from peers: verify against the mesh root, apply, push on,
//! and forget the revoked node. The revocation set itself lives in `crate::revocations`.

use crate::revocations::REVOCATION_FANOUT;
use agentmesh_crypto::{NodeId, SignedRevocation};
use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Event, Gossip};
use crate::config::Admission;
use crate::score::Penalty;
use crate::wire::Message;

impl Gossip {
    // ---- revocations ----

    /// True if the mesh root revoked `id` (as far as this node has heard).
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// The nodes revoked so far.
    pub fn revoked_ids(&self) -> Vec<NodeId> {
        self.revoked.ids().copied().collect()
    }

    /// The verified revocations held so far (for the driver to persist).
    pub fn revocations(&self) -> Vec<Arc<SignedRevocation>> {
        self.revoked.all().cloned().collect()
    }

    /// Verifies revocations (root signature and mesh; nothing else is trusted), applies the
    /// new ones and pushes them on. A forged one costs the sender score; a known one is a
    /// no-op, so replays change nothing. Open meshes have no root and ignore revocations.
    pub(super) fn on_revocations(&mut self, from: NodeId, list: Vec<Arc<SignedRevocation>>) {
        let Admission::Enforced { root, mesh_id } = &self.cfg.admission else {
            return;
        };
        let (root, mesh_id) = (*root, mesh_id.clone());
        let mut fresh = Vec::new();
        for r in list {
            let Ok(claimed) = r.0.decode_unverified() else {
                self.penalize(from, Penalty::Decode);
                continue;
            };
            if self.revoked.contains(&claimed.node_id) {
                continue;
            }
            let Ok(rev) = r.verify(&root, &mesh_id) else {
                self.penalize(from, Penalty::BadSignature);
                continue;
            };
            let transmits = self.retransmit_limit();
            if self.revoked.insert(rev.node_id, r.clone(), transmits) {
                self.drop_revoked(rev.node_id);
                fresh.push(r);
            }
        }
        if fresh.is_empty() {
            return;
        }
        let exclude: BTreeSet<NodeId> = [from].into_iter().collect();
        for t in self.random_alive(REVOCATION_FANOUT, &exclude) {
            self.send(
                t,
                Message::Revocations {
                    list: fresh.clone(),
                },
            );
        }
    }

    fn drop_revoked(&mut self, id: NodeId) {
        if id == self.me {
            return;
        }
        self.members.remove(&id);
        self.pending.remove(&id);
        self.orphans.remove(&id);
        self.suspicions.remove(&id);
        self.stale.remove(&id);
        self.join_seeds.remove(&id);
        self.tree_remove(&id);
        self.missing.retain(|(o, _), _| *o != id);
        self.emit(Event::Revoked(id));
    }
}
