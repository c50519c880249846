//! SWIM failure detection: picking a probe target, direct ping, indirect ping-req through
//! helpers, and relaying probes for others.

use agentmesh_crypto::NodeId;
use std::collections::BTreeSet;

use super::{Gossip, Probe, Relay, RELAYS_MAX};
use crate::member::{MemberState, Update};
use crate::time::Millis;
use crate::wire::{self, Message};

impl Gossip {
    // ---- SWIM probing ----

    pub(super) fn scaled(&self, ms: u64) -> u64 {
        ms * (self.lhm as u64 + 1)
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        while let Some(id) = self.probe_soon.pop_first() {
            if self.is_member(&id) {
                return Some(id);
            }
        }
        for _ in 0..=self.members.len() {
            let i = self.probe_cycle.next(self.members.len(), &mut self.rng)?;
            if let Some(e) = self.members.nth(i).filter(|e| e.is_live()) {
                return Some(*e.id());
            }
        }
        None
    }

    pub(super) fn start_probe(&mut self, now: Millis) {
        let period = self.scaled(self.cfg.protocol_period_ms);
        self.next_probe_at = now + period;
        let Some(target) = self.next_probe_target() else {
            return;
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut updates = self.piggyback(target);
        // memberlist: a ping to a suspect carries the suspicion, so a suspect whose first
        // notice was lost still learns it must refute before its timer runs out.
        if let Some(a) = self.suspicions.get(&target).and_then(|s| s.evidence()) {
            updates.truncate(wire::UPDATES_PER_MESSAGE_MAX - 1);
            updates.insert(0, Update::Accuse(a.clone()));
        }
        self.send(target, Message::Ping { seq, updates });
        self.probe = Some(Probe {
            target,
            seq,
            direct_deadline: now + self.scaled(self.cfg.probe_timeout_ms),
            period_end: now + period,
            indirect_sent: false,
            acked: false,
            nacks_expected: 0,
            nacks: 0,
        });
    }

    pub(super) fn send_indirect(&mut self, now: Millis) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect_sent = true;
        let (target, seq) = (p.target, p.seq);
        let chosen = self.random_alive(self.cfg.indirect_probes, &BTreeSet::from([target]));
        if let Some(p) = self.probe.as_mut() {
            p.nacks_expected = chosen.len() as u32;
        }
        for h in chosen {
            let updates = self.piggyback(h);
            self.send(
                h,
                Message::PingReq {
                    seq,
                    target,
                    updates,
                },
            );
        }
        let _ = now;
    }

    pub(super) fn finish_probe(&mut self, now: Millis) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            self.lhm = self.lhm.saturating_sub(1);
            return;
        }
        // Lifeguard: missing nacks mean our own links or CPU may be at fault.
        let missed = p.nacks_expected.saturating_sub(p.nacks);
        let delta = if p.nacks_expected == 0 { 1 } else { missed };
        self.lhm = (self.lhm + delta).min(self.cfg.lhm_max);
        let Some(e) = self.members.get(&p.target) else {
            return;
        };
        if !matches!(e.state(), MemberState::Alive | MemberState::Suspect) {
            return;
        }
        // A failed probe of an already-suspect member is an independent confirmation.
        let inc = e.info.incarnation;
        self.stats.suspicions += 1;
        self.apply_suspect(p.target, inc, self.me, None, now);
        // Lifeguard: tell the suspect first, so it can refute quickly.
        let mut updates = vec![Update::Accuse(self.accusation(p.target, inc, false))];
        updates.extend(self.piggyback(p.target));
        self.send(p.target, Message::Gossip { updates });
    }

    pub(super) fn on_ack(&mut self, from: NodeId, seq: u32) {
        if let Some(p) = self.probe.as_mut() {
            if p.seq == seq && !p.acked {
                p.acked = true;
                let _ = from;
                return;
            }
        }
        if let Some(r) = self.relays.remove(&seq) {
            let updates = self.piggyback(r.origin);
            self.send(
                r.origin,
                Message::Ack {
                    seq: r.origin_seq,
                    updates,
                },
            );
        }
    }

    pub(super) fn relay_probe(
        &mut self,
        origin: NodeId,
        origin_seq: u32,
        target: NodeId,
        now: Millis,
    ) {
        if !self.is_member(&target) {
            self.send(origin, Message::Nack { seq: origin_seq });
            return;
        }
        if self.relays.len() >= RELAYS_MAX {
            if let Some(k) = self.relays.keys().next().copied() {
                self.relays.remove(&k);
            }
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.relays.insert(
            seq,
            Relay {
                origin,
                origin_seq,
                // Early enough that the nack reaches the origin before its period ends
                // (it sent the request at probe_timeout into a 2×probe_timeout period).
                nack_at: now + self.cfg.probe_timeout_ms / 2,
            },
        );
        let updates = self.piggyback(target);
        self.send(target, Message::Ping { seq, updates });
    }
}
