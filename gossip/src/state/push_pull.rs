//! Membership anti-entropy: periodic push-pull by digest, so members missed by rumours
//! still converge.

use agentmesh_crypto::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Gossip, SYNC_PEERS_MAX};
use crate::member::{MemberState, SignedMember};
use crate::time::Millis;
use crate::wire::{self, Message};

impl Gossip {
    // ---- membership anti-entropy (push-pull by digest) ----

    /// Sends `to` our digest: ourselves, then a window of live members that rotates through
    /// the table, so repeated exchanges cover any size of view with bounded messages.
    pub(super) fn send_digest(&mut self, to: NodeId, reply: bool, wants: Vec<NodeId>, now: Millis) {
        let max = self
            .cfg
            .push_pull_digest_max
            .clamp(1, wire::DIGEST_ENTRIES_MAX);
        let mut entries = vec![(self.me, self.incarnation())];
        let len = self.members.len();
        let start = if len == 0 {
            0
        } else {
            self.push_pull_cursor % len
        };
        let mut scanned = 0;
        while scanned < len && entries.len() < max {
            if let Some(e) = self.members.nth((start + scanned) % len) {
                if matches!(e.state(), MemberState::Alive | MemberState::Suspect) && *e.id() != to {
                    entries.push((*e.id(), e.info.incarnation));
                }
            }
            scanned += 1;
        }
        self.push_pull_cursor = start + scanned;
        let wants: Vec<NodeId> = wants.into_iter().take(wire::DIGEST_ENTRIES_MAX).collect();
        if reply || !wants.is_empty() {
            // Its answer comes as `Sync`; take it even if `to` is not a member here yet.
            if self.sync_peers.len() >= SYNC_PEERS_MAX && !self.sync_peers.contains_key(&to) {
                if let Some(k) = self.sync_peers.keys().next().copied() {
                    self.sync_peers.remove(&k);
                }
            }
            let until = now + 4 * self.cfg.probe_timeout_ms;
            self.sync_peers.insert(to, until);
        }
        self.send(
            to,
            Message::Digest {
                entries,
                wants,
                reply,
            },
        );
    }

    /// Our signed identity of `id` (or our own), if we hold it alive or suspect.
    fn live_identity(&self, id: &NodeId) -> Option<Arc<SignedMember>> {
        if *id == self.me {
            return Some(self.local_member.clone());
        }
        self.members
            .get(id)
            .filter(|e| matches!(e.state(), MemberState::Alive | MemberState::Suspect))
            .map(|e| e.signed.clone())
    }

    /// A peer's digest: send it what it lacks or holds older, ask for what we lack.
    pub(super) fn on_digest(
        &mut self,
        from: NodeId,
        entries: Vec<(NodeId, u64)>,
        wants: Vec<NodeId>,
        reply: bool,
        now: Millis,
    ) {
        let member = self.is_member(&from);
        let mut newer: BTreeMap<NodeId, Arc<SignedMember>> = BTreeMap::new();
        // A stranger gets only our own identity (it needs it to admit us); a member gets
        // every identity it asked for or holds older: at most two digests' worth.
        for id in wants.iter().filter(|id| member || **id == self.me) {
            if let Some(m) = self.live_identity(id) {
                newer.insert(*id, m);
            }
        }
        let mut wanted = Vec::new();
        for (id, inc) in &entries {
            if self.revoked.contains(id) {
                continue;
            }
            let held = if *id == self.me {
                Some(self.incarnation())
            } else {
                self.members.get(id).map(|e| e.info.incarnation)
            };
            match held {
                Some(h) if h > *inc && member => {
                    if let Some(m) = self.live_identity(id) {
                        newer.insert(*id, m);
                    }
                }
                Some(h) if h >= *inc => {}
                // Unknown here (a pending identity still waits for its record), or older.
                _ if self.pending.contains_key(id) => {}
                _ => wanted.push(*id),
            }
        }
        if !newer.is_empty() {
            self.send_sync(from, newer.into_values().collect());
        }
        if reply {
            self.send_digest(from, false, wanted, now);
        } else if !wanted.is_empty() {
            // The last leg: only wants, which never produce wants in return.
            if self.sync_peers.len() < SYNC_PEERS_MAX || self.sync_peers.contains_key(&from) {
                self.sync_peers
                    .insert(from, now + 4 * self.cfg.probe_timeout_ms);
            }
            self.send(
                from,
                Message::Digest {
                    entries: Vec::new(),
                    wants: wanted,
                    reply: false,
                },
            );
        }
    }
}
