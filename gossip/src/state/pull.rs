//! The record plane's anti-entropy pull: ask peers for records we know are stale or missing,
//! and answer their pulls.

use agentmesh_crypto::NodeId;
use std::collections::BTreeSet;

use super::{Gossip, PullReq};
use crate::member::MemberState;
use crate::time::Millis;
use crate::wire::{Message, PULL_RECORDS_MAX};

impl Gossip {
    // ---- record plane: anti-entropy pull ----

    pub(super) fn mark_stale(&mut self, id: NodeId, now: Millis) {
        let Some(e) = self.members.get(&id) else {
            return;
        };
        let behind = e.record_version().is_none_or(|v| v < e.info.record_version);
        if behind && matches!(e.state(), MemberState::Alive | MemberState::Suspect) {
            self.stale.entry(id).or_insert(now);
        } else {
            self.stale.remove(&id);
        }
    }

    pub(super) fn request_pull(&mut self, peer: NodeId, ids: Vec<NodeId>, now: Millis) {
        self.seq = self.seq.wrapping_add(1);
        let req = self.seq;
        self.pulls.insert(
            req,
            PullReq {
                deadline: now + 2 * self.cfg.probe_timeout_ms,
                ids: ids.clone(),
            },
        );
        self.send(peer, Message::Pull { req, ids });
    }

    pub(super) fn start_pulls(&mut self, now: Millis) {
        // Give Plumtree a chance first: only entries stale for longer than a graft round.
        let grace = self.cfg.graft_timeout_ms;
        let in_flight: BTreeSet<NodeId> = self
            .pulls
            .values()
            .flat_map(|p| p.ids.iter().copied())
            .collect();
        let mut wanted: Vec<NodeId> = self
            .stale
            .iter()
            .filter(|(id, since)| now >= **since + grace && !in_flight.contains(id))
            .map(|(id, _)| *id)
            .collect();
        // Members still waiting for an admitted record: a lost pull must not leave them
        // invisible for good.
        wanted.extend(
            self.pending
                .keys()
                .filter(|id| !in_flight.contains(id))
                .take(self.cfg.pull_batch_max * self.cfg.pulls_in_flight_max)
                .copied(),
        );
        while self.pulls.len() < self.cfg.pulls_in_flight_max && !wanted.is_empty() {
            let n = self
                .cfg
                .pull_batch_max
                .min(PULL_RECORDS_MAX)
                .min(wanted.len());
            let batch: Vec<NodeId> = wanted.drain(..n).collect();
            let peer = match self
                .random_alive(1, &batch.iter().copied().collect())
                .first()
            {
                Some(p) => *p,
                None => batch[0],
            };
            self.request_pull(peer, batch, now);
        }
    }

    pub(super) fn on_pull(&mut self, from: NodeId, req: u32, ids: Vec<NodeId>) {
        let budget = self.cfg.frame_bytes_max - 1024;
        let mut bytes = 0;
        let mut records = Vec::new();
        for id in ids.into_iter().take(PULL_RECORDS_MAX) {
            let rec = if id == self.me {
                Some(self.local_signed.clone())
            } else {
                self.members
                    .get(&id)
                    .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
            };
            if let Some(r) = rec {
                bytes += r.payload.len() + 100;
                if bytes > budget {
                    break;
                }
                records.push(r);
            }
        }
        self.send(from, Message::PullResp { req, records });
    }
}
