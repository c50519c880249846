//! The membership plane: piggybacked SWIM updates (alive, suspect, dead), signed
//! accusations, admission of new members and refutation of rumours about us.

use agentmesh_crypto::{NodeId, Signed};
use std::sync::Arc;

use super::{Event, Gossip, OWN_ACCUSATIONS_MAX, PENDING_MAX};
use crate::config::Admission;
use crate::member::{Accusation, SignedAccusation, ACCUSATION_CONTEXT, MEMBER_CONTEXT};
use crate::member::{MemberInfo, MemberState, SignedMember, Update, MEMBER_BYTES_MAX};
use crate::record::record_hash;
use crate::score::Penalty;
use crate::suspicion::Suspicion;
use crate::table::Entry;
use crate::time::Millis;
use crate::wire::{self, Message};

impl Gossip {
    // ---- membership plane ----

    pub(super) fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as f64;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    pub(super) fn piggyback(&mut self, to: NodeId) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.queue.select(
            to,
            self.cfg.piggyback_bytes_max,
            wire::UPDATES_PER_MESSAGE_MAX,
            limit,
        )
    }

    pub(super) fn enqueue(&mut self, u: Update) {
        self.queue.push(u);
    }

    pub(super) fn apply_updates(&mut self, from: NodeId, updates: Vec<Update>, now: Millis) {
        // Stale rumours (suspect/dead at an incarnation already refuted) are answered with the
        // refutation, so a late hearer does not keep a suspicion everyone else has dropped.
        let mut corrections = Vec::new();
        for u in &updates {
            if let Some((node, incarnation)) = u.rumour() {
                let (node, incarnation) = (&node, &incarnation);
                if let Some(e) = self.members.get(node) {
                    let refuted = *incarnation < e.info.incarnation
                        && matches!(e.state(), MemberState::Alive | MemberState::Suspect);
                    if refuted && *node != from && corrections.len() < wire::UPDATES_PER_MESSAGE_MAX
                    {
                        corrections.push(Update::Alive(e.signed.clone()));
                    }
                } else if *node == self.me && *incarnation < self.incarnation() {
                    corrections.push(Update::Alive(self.local_member.clone()));
                }
            }
        }
        if !corrections.is_empty() {
            self.send(
                from,
                Message::Gossip {
                    updates: corrections,
                },
            );
        }
        let refutations = self.stats.refutations;
        self.apply_each(from, updates, now);
        if self.stats.refutations > refutations {
            // Answer the accuser directly: it holds the wrong belief, possibly across a
            // just-healed partition that our own gossip does not reach yet.
            let updates = vec![Update::Alive(self.local_member.clone())];
            self.send(from, Message::Gossip { updates });
        }
    }

    fn apply_each(&mut self, from: NodeId, updates: Vec<Update>, now: Millis) {
        for u in updates {
            match u {
                Update::Alive(m) => self.apply_alive(from, m, now),
                // Unsigned rumours name an accuser anyone can forge: they only make us refute
                // (about us); about others they count for nothing.
                Update::Suspect {
                    node, incarnation, ..
                }
                | Update::Dead {
                    node, incarnation, ..
                } => {
                    if node == self.me {
                        self.refute_rumour(incarnation, now);
                    }
                }
                Update::Accuse(a) => self.on_accusation(from, a, now),
            }
        }
    }

    /// Refutes a suspect or dead rumour about us at our current incarnation (older ones are
    /// already answered by the incarnation we announced).
    fn refute_rumour(&mut self, inc: u64, now: Millis) {
        if !self.leaving && inc >= self.incarnation() {
            self.refute(inc, now);
        }
    }

    /// Our own accusation of `node`, signed once and reused.
    pub(super) fn accusation(
        &mut self,
        node: NodeId,
        incarnation: u64,
        dead: bool,
    ) -> Arc<SignedAccusation> {
        if let Some(a) = self.own_accusations.get(&(node, incarnation, dead)) {
            return a.clone();
        }
        if self.own_accusations.len() >= OWN_ACCUSATIONS_MAX {
            self.own_accusations.clear();
        }
        let body = Accusation {
            node,
            incarnation,
            dead,
        };
        let a = Arc::new(Signed::sign(&self.key, ACCUSATION_CONTEXT, &body));
        self.own_accusations
            .insert((node, incarnation, dead), a.clone());
        a
    }

    /// A signed accusation: counts only if it verifies and its signer is a member.
    fn on_accusation(&mut self, from: NodeId, a: Arc<SignedAccusation>, now: Millis) {
        let accuser = a.signer;
        if accuser == self.me {
            return;
        }
        let body = match self.verifier.accusation(&a) {
            Ok(b) => b,
            Err(_) => return self.penalize(from, Penalty::BadSignature),
        };
        if body.node == self.me {
            return self.refute_rumour(body.incarnation, now);
        }
        if body.node == accuser || !self.is_member(&accuser) {
            return;
        }
        if body.dead {
            self.apply_dead(body.node, body.incarnation, accuser, Some(a), now);
        } else {
            self.apply_suspect(body.node, body.incarnation, accuser, Some(a), now);
        }
    }

    pub(super) fn apply_alive(&mut self, from: NodeId, m: Arc<SignedMember>, now: Millis) {
        let subject = m.signer;
        if subject == self.me {
            // Someone replays our announcement; only a leave we did not make needs an answer.
            if let Ok(info) = m.decode_unverified() {
                if info.leaving && !self.leaving && info.incarnation >= self.incarnation() {
                    self.refute(info.incarnation, now);
                }
            }
            return;
        }
        if self.revoked.contains(&subject) {
            return;
        }
        // Cheap dedup before any signature check.
        if let Some(e) = self.members.get(&subject) {
            if e.signed.signature == m.signature {
                return;
            }
        }
        if self
            .pending
            .get(&subject)
            .is_some_and(|p| p.signature == m.signature)
        {
            return;
        }
        let Some(info) = self.verify_member(from, &m) else {
            return;
        };
        let Some(e) = self.members.get_mut(&subject) else {
            return self.admit_new_member(from, m, info, now);
        };
        let newer = info.key() > e.info.key();
        let revive = info.incarnation > e.info.incarnation;
        match e.state() {
            MemberState::Dead | MemberState::Left if !revive => return,
            _ if !newer && (!info.leaving || e.info.leaving) => return,
            _ => {}
        }
        let old_state = e.state();
        e.signed = m.clone();
        e.info = info.clone();
        if info.leaving {
            if old_state != MemberState::Left {
                self.members.set_state(&subject, MemberState::Left, now);
                self.suspicions.remove(&subject);
                self.tree_remove(&subject);
                self.emit(Event::Left(subject));
            }
        } else if revive && old_state != MemberState::Alive {
            self.members.set_state(&subject, MemberState::Alive, now);
            self.suspicions.remove(&subject);
            match old_state {
                MemberState::Suspect => self.emit(Event::Alive(subject)),
                _ => self.emit(Event::Joined(subject)),
            }
        }
        self.mark_stale(subject, now);
        self.enqueue(Update::Alive(m));
    }

    /// Checks a signed identity (size, signature, subject, limits); penalises `from` if bad.
    pub(super) fn verify_member(
        &mut self,
        from: NodeId,
        m: &Arc<SignedMember>,
    ) -> Option<Arc<MemberInfo>> {
        if m.payload.len() + 96 > MEMBER_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        let info = match self.verifier.member(m) {
            Ok(i) => i,
            Err(_) => {
                self.penalize(from, Penalty::BadSignature);
                return None;
            }
        };
        if info.node_id != m.signer {
            self.penalize(from, Penalty::ForeignRecord);
            return None;
        }
        if info.check_limits().is_err() {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        Some(info)
    }

    fn admit_new_member(
        &mut self,
        from: NodeId,
        m: Arc<SignedMember>,
        info: Arc<MemberInfo>,
        now: Millis,
    ) {
        let subject = info.node_id;
        if info.leaving {
            return;
        }
        let record = self.orphans.remove(&subject);
        let admitted = match &self.cfg.admission {
            Admission::Open => true,
            Admission::Enforced { .. } => record.is_some(),
        };
        if !admitted {
            // Invisible until its admitted record arrives; ask the peer that told us.
            if self.pending.len() >= PENDING_MAX {
                if let Some(k) = self.pending.keys().next().copied() {
                    self.pending.remove(&k);
                }
            }
            let fresh = self.pending.insert(subject, m).is_none();
            if fresh {
                // A join seed answers pulls before we have admitted it (its Sync arrives first).
                let knows_us = self.is_member(&from) || self.join_seeds.contains(&from);
                let target = if knows_us { from } else { subject };
                self.request_pull(target, vec![subject], now);
            }
            return;
        }
        if self.members.len() >= self.cfg.members_max {
            return;
        }
        self.pending.remove(&subject);
        let has_record = record.is_some();
        self.members.insert(Entry::new(m.clone(), info, record));
        self.mark_stale(subject, now);
        self.emit(Event::Joined(subject));
        if has_record {
            self.emit(Event::Updated(subject));
        }
        self.enqueue(Update::Alive(m));
    }

    /// A suspicion of `node` at `inc` by `accuser`, with its signed accusation (None when we
    /// are the accuser: it is signed here).
    pub(super) fn apply_suspect(
        &mut self,
        node: NodeId,
        inc: u64,
        accuser: NodeId,
        signed: Option<Arc<SignedAccusation>>,
        now: Millis,
    ) {
        if node == self.me {
            return self.refute_rumour(inc, now);
        }
        let n = self.live_count();
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if inc < e.info.incarnation {
            return;
        }
        let state = e.state();
        if matches!(state, MemberState::Dead | MemberState::Left) {
            return;
        }
        let new = match state {
            MemberState::Alive => {
                self.members.set_state(&node, MemberState::Suspect, now);
                let s = Suspicion::new(&self.cfg, n, accuser, now);
                self.suspicions.insert(node, s);
                self.emit(Event::Suspect(node));
                true
            }
            _ => self
                .suspicions
                .get_mut(&node)
                .is_some_and(|s| s.confirm(accuser)),
        };
        if new {
            // A new independent accusation: relay it, signed, so others count it too.
            let a = match signed {
                Some(a) => a,
                None => self.accusation(node, inc, false),
            };
            if let Some(s) = self.suspicions.get_mut(&node) {
                s.set_evidence(a.clone());
            }
            self.enqueue(Update::Accuse(a));
        }
    }

    /// A death declaration. Our own (`accuser` is us) makes the member dead; anyone else's is
    /// one more signed confirmation of the suspicion, and ends it at the Lifeguard minimum only
    /// if our own probe had failed too. So a member can be killed only by its accusers' timers
    /// or by several distinct signed accusations, never by one liar.
    pub(super) fn apply_dead(
        &mut self,
        node: NodeId,
        inc: u64,
        accuser: NodeId,
        signed: Option<Arc<SignedAccusation>>,
        now: Millis,
    ) {
        if node == self.me {
            return self.refute_rumour(inc, now);
        }
        if accuser != self.me {
            let own = self
                .suspicions
                .get(&node)
                .is_some_and(|s| s.accused_by(&self.me));
            self.apply_suspect(node, inc, accuser, signed, now);
            if own {
                if let Some(s) = self.suspicions.get_mut(&node) {
                    s.saturate();
                }
            }
            return;
        }
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if inc < e.info.incarnation || matches!(e.state(), MemberState::Dead | MemberState::Left) {
            return;
        }
        self.members.set_state(&node, MemberState::Dead, now);
        self.suspicions.remove(&node);
        self.tree_remove(&node);
        self.stale.remove(&node);
        self.emit(Event::Dead(node));
        let a = self.accusation(node, inc, true);
        self.enqueue(Update::Accuse(a));
    }

    /// Bumps our incarnation above `seen` and announces we are alive (Lifeguard: +1 LHM).
    pub(super) fn refute(&mut self, seen: u64, _now: Millis) {
        let inc = self.incarnation().max(seen) + 1;
        self.stats.refutations += 1;
        self.lhm = (self.lhm + 1).min(self.cfg.lhm_max);
        self.resign_member(inc);
        self.enqueue(Update::Alive(self.local_member.clone()));
    }

    pub(super) fn resign_member(&mut self, incarnation: u64) {
        let info = MemberInfo {
            node_id: self.me,
            addrs: self.addrs.clone(),
            incarnation,
            record_version: self.local.version(),
            record_hash: record_hash(&self.local_signed),
            leaving: self.leaving,
        };
        self.local_member = Arc::new(Signed::sign(&self.key, MEMBER_CONTEXT, &info));
    }

    pub(super) fn tree_remove(&mut self, id: &NodeId) {
        self.eager.remove(id);
        self.lazy.remove(id);
        self.lazy_pending.remove(id);
    }
}
