//! The piggyback queue: one pending update per member, each retransmitted a bounded number of
//! times, fewest-sent first, packed into a byte budget (memberlist's TransmitLimitedQueue).

use agentmesh_crypto::NodeId;
use std::collections::BTreeMap;

use crate::member::Update;

struct Queued {
    update: Update,
    size: usize,
    transmits: u32,
    order: u64,
}

/// Pending membership updates.
pub struct BroadcastQueue {
    items: BTreeMap<NodeId, Queued>,
    next_order: u64,
    max: usize,
}

impl BroadcastQueue {
    /// An empty queue holding at most `max` updates.
    pub fn new(max: usize) -> Self {
        BroadcastQueue {
            items: BTreeMap::new(),
            next_order: 0,
            max,
        }
    }

    /// True if nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Pending updates.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues an update, replacing any older one about the same member. When full, the most
    /// transmitted update is dropped.
    pub fn push(&mut self, update: Update) {
        let subject = update.subject();
        if !self.items.contains_key(&subject) && self.items.len() >= self.max {
            let victim = self
                .items
                .iter()
                .max_by_key(|(_, q)| (q.transmits, u64::MAX - q.order))
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                self.items.remove(&v);
            }
        }
        let size = postcard::experimental::serialized_size(&update).unwrap_or(usize::MAX / 2);
        self.next_order += 1;
        self.items.insert(
            subject,
            Queued {
                update,
                size,
                transmits: 0,
                order: self.next_order,
            },
        );
    }

    /// Takes updates for one message to `to`: fewest transmissions first, newest first among
    /// equals, within `bytes_max` and `count_max`. Updates sent `limit` times are dropped.
    pub fn select(
        &mut self,
        to: NodeId,
        bytes_max: usize,
        count_max: usize,
        limit: u32,
    ) -> Vec<Update> {
        if self.items.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<(u32, u64, NodeId)> = self
            .items
            .iter()
            // A member needs no news of its own liveness, but must hear that it is suspected
            // or declared dead: that is how it learns to refute.
            .filter(|(k, q)| **k != to || !matches!(q.update, Update::Alive(_)))
            .map(|(k, q)| (q.transmits, u64::MAX - q.order, *k))
            .collect();
        order.sort_unstable();
        let mut out = Vec::new();
        let mut used = 0;
        for (_, _, k) in order {
            if out.len() >= count_max {
                break;
            }
            let Some(q) = self.items.get_mut(&k) else {
                continue;
            };
            if used + q.size > bytes_max {
                continue;
            }
            used += q.size;
            q.transmits += 1;
            out.push(q.update.clone());
            if q.transmits >= limit {
                self.items.remove(&k);
            }
        }
        out
    }
}
