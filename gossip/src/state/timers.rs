//! `Input::Tick`: what runs when a deadline passes (probes, suspicion timeouts, gossip
//! rounds, anti-entropy, housekeeping).

use agentmesh_crypto::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeSet;

use super::{Gossip, RELAYS_MAX};
use crate::member::{MemberState, Update};
use crate::time::Millis;
use crate::wire::Message;

impl Gossip {
    // ---- timers ----

    pub(super) fn handle_tick(&mut self, now: Millis) {
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect_sent && now >= p.direct_deadline {
                self.send_indirect(now);
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.period_end) {
            self.finish_probe(now);
        }
        if now >= self.next_probe_at {
            if self.leaving {
                // A leaving node stops probing but its timer must still move on.
                self.next_probe_at = now + self.cfg.protocol_period_ms;
            } else {
                self.finish_probe(now);
                self.start_probe(now);
                self.housekeeping(now);
            }
        }
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| now >= r.nack_at)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            if let Some(r) = self.relays.remove(&s) {
                self.send(r.origin, Message::Nack { seq: r.origin_seq });
            }
        }
        let expired: Vec<NodeId> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline())
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            // One accuser, and not us: it may be a liar. Probe the suspect ourselves first (the
            // ping carries the accusation, so a live suspect refutes in its ack); if our probe
            // fails we are a second accuser and the verdict follows.
            let lone = self
                .suspicions
                .get(&id)
                .is_some_and(|s| s.accusers() < 2 && !s.accused_by(&self.me));
            if lone {
                if self.probe_soon.len() < RELAYS_MAX {
                    self.probe_soon.insert(id);
                }
                let wait = self.scaled(self.cfg.protocol_period_ms) + self.cfg.protocol_period_ms;
                if let Some(s) = self.suspicions.get_mut(&id) {
                    s.defer(now + wait);
                }
                continue;
            }
            if let Some(e) = self.members.get(&id) {
                let inc = e.info.incarnation;
                self.apply_dead(id, inc, self.me, None, now);
            }
            self.suspicions.remove(&id);
        }
        if now >= self.next_gossip_at {
            self.next_gossip_at = now + self.cfg.gossip_interval_ms;
            self.gossip_round(now);
            // Pull what Plumtree missed without waiting for the next anti-entropy round.
            if !self.stale.is_empty() {
                self.pulls.retain(|_, p| p.deadline > now);
                self.start_pulls(now);
            }
        }
        self.graft_missing(now);
        if now >= self.next_push_pull_at {
            self.next_push_pull_at = now + self.cfg.push_pull_interval_ms;
            self.sync_peers.retain(|_, until| *until > now);
            if let Some(peer) = self.random_alive(1, &BTreeSet::new()).first().copied() {
                self.send_digest(peer, true, Vec::new(), now);
            }
        }
        if now >= self.next_ae_at {
            self.next_ae_at = now + self.cfg.anti_entropy_interval_ms;
            self.pulls.retain(|_, p| p.deadline > now);
            self.start_pulls(now);
            self.maybe_refresh_load(now);
        }
    }

    fn housekeeping(&mut self, now: Millis) {
        let ttl = self.cfg.tombstone_ms;
        let gone: Vec<NodeId> = self
            .members
            .down()
            .iter()
            .filter(|(_, since)| now >= **since + ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.members.remove(&id);
        }
        self.scores.recover(self.cfg.score_recovery_per_period);
        // Gossip to one dead member so a healed partition notices it was wrongly declared dead.
        let dead: Vec<NodeId> = self.ids_in_state(MemberState::Dead).collect();
        let chosen = dead.choose(&mut self.rng).copied();
        if let Some((d, inc)) =
            chosen.and_then(|d| self.members.get(&d).map(|e| (d, e.info.incarnation)))
        {
            let mut updates = vec![Update::Accuse(self.accusation(d, inc, true))];
            updates.push(Update::Alive(self.local_member.clone()));
            updates.extend(self.piggyback(d));
            self.send(d, Message::Gossip { updates });
        }
        self.poked.clear();
    }

    /// A member we hold as dead or suspect just spoke to us: tell it, once per period, so it
    /// refutes with a higher incarnation. Heals partitions, and clears suspicions raised while
    /// we were cut off whose rumours ran out of retransmissions before reaching the suspect.
    pub(super) fn poke_if_dead(&mut self, from: NodeId) {
        let Some(e) = self.members.get(&from) else {
            return;
        };
        let incarnation = e.info.incarnation;
        let state = e.state();
        if !matches!(state, MemberState::Dead | MemberState::Suspect)
            || self.poked.len() >= RELAYS_MAX
            || !self.poked.insert(from)
        {
            return;
        }
        let update = match state {
            MemberState::Dead => Update::Accuse(self.accusation(from, incarnation, true)),
            _ => match self.suspicions.get(&from).and_then(|s| s.evidence()) {
                Some(a) => Update::Accuse(a.clone()),
                None => return,
            },
        };
        {
            let mut updates = vec![update];
            updates.extend(self.piggyback(from));
            self.send(from, Message::Gossip { updates });
        }
    }

    /// Up to `n` distinct alive members not in `exclude`, uniformly at random. Samples table
    /// positions (O(n) for a large view, where most members are alive) and falls back to a
    /// scan when the view is small or mostly down.
    pub(super) fn random_alive(&mut self, n: usize, exclude: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let len = self.members.len();
        if n == 0 || len == 0 {
            return Vec::new();
        }
        if len >= 64 && self.members.live() * 2 >= len {
            let mut out: Vec<NodeId> = Vec::with_capacity(n);
            for _ in 0..(8 * n + 32) {
                let i = self.rng.gen_range(0..len);
                let Some(e) = self.members.nth(i) else {
                    continue;
                };
                let id = *e.id();
                if e.state() == MemberState::Alive && !exclude.contains(&id) && !out.contains(&id) {
                    out.push(id);
                    if out.len() == n {
                        return out;
                    }
                }
            }
        }
        let mut ids: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(id, e)| e.state() == MemberState::Alive && !exclude.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let k = n.min(ids.len());
        let (chosen, _) = ids.partial_shuffle(&mut self.rng, k);
        chosen.to_vec()
    }

    fn gossip_round(&mut self, _now: Millis) {
        let hot = self.revoked.take_hot();
        if !hot.is_empty() {
            for t in self.random_alive(self.cfg.gossip_fanout, &BTreeSet::new()) {
                self.send(t, Message::Revocations { list: hot.clone() });
            }
        }
        if self.queue.is_empty() {
            return;
        }
        let targets = self.random_alive(self.cfg.gossip_fanout, &BTreeSet::new());
        for t in targets {
            let updates = self.piggyback(t);
            if updates.is_empty() {
                break;
            }
            self.send(t, Message::Gossip { updates });
        }
    }
}
