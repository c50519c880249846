//! Joining through seeds (and answering joins with a membership sync) and leaving
//! gracefully.

use agentmesh_crypto::NodeId;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Gossip, JOIN_SEEDS_MAX};
use crate::member::{MemberState, SignedMember, Update};
use crate::record::SignedRecord;
use crate::score::Penalty;
use crate::time::Millis;
use crate::wire::{self, Message};

impl Gossip {
    // ---- join and leave ----

    pub(super) fn join(&mut self, seeds: Vec<NodeId>, _now: Millis) {
        let me = self.me;
        for s in seeds.into_iter().filter(|s| *s != me).take(JOIN_SEEDS_MAX) {
            if self.join_seeds.len() < JOIN_SEEDS_MAX {
                self.join_seeds.insert(s);
            }
            self.send(
                s,
                Message::Join {
                    member: self.local_member.clone(),
                    record: self.local_signed.clone(),
                },
            );
        }
    }

    pub(super) fn on_join(
        &mut self,
        from: NodeId,
        member: Arc<SignedMember>,
        record: Arc<SignedRecord>,
        now: Millis,
    ) {
        if member.signer != from || record.signer != from {
            return self.penalize(from, Penalty::ForeignRecord);
        }
        if !self.accept_record(from, record.clone(), now) && !self.has_admitted_record(&from) {
            return; // accept_record penalised it
        }
        self.apply_alive(from, member, now);
        if !self.is_member(&from) {
            return;
        }
        // Push-pull: send our view in chunks bounded by count and bytes.
        let all: Vec<Arc<SignedMember>> = std::iter::once(self.local_member.clone())
            .chain(
                self.members
                    .values()
                    .filter(|e| matches!(e.state(), MemberState::Alive | MemberState::Suspect))
                    .map(|e| e.signed.clone()),
            )
            .collect();
        self.send_sync(from, all);
        for list in self.revoked.chunks() {
            self.send(from, Message::Revocations { list });
        }
    }

    /// Sends identities in `Sync` chunks bounded by count and bytes.
    pub(super) fn send_sync(&mut self, to: NodeId, members: Vec<Arc<SignedMember>>) {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let budget = self.cfg.frame_bytes_max / 2;
        let per_frame = self.cfg.sync_members_per_frame.min(wire::SYNC_MEMBERS_MAX);
        for m in members {
            bytes += m.payload.len() + 100;
            chunk.push(m);
            if chunk.len() >= per_frame || bytes >= budget {
                let members = std::mem::take(&mut chunk);
                self.send(to, Message::Sync { members });
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.send(to, Message::Sync { members: chunk });
        }
    }

    fn has_admitted_record(&self, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|e| e.record.is_some()) || self.orphans.contains_key(id)
    }

    pub(super) fn leave(&mut self, _now: Millis) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        let inc = self.incarnation() + 1;
        self.resign_member(inc);
        let m = self.local_member.clone();
        self.enqueue(Update::Alive(m.clone()));
        let targets = self.random_alive(self.cfg.gossip_fanout * 2, &BTreeSet::new());
        for t in targets {
            self.send(
                t,
                Message::Gossip {
                    updates: vec![Update::Alive(m.clone())],
                },
            );
        }
    }
}
