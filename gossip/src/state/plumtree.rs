//! The record plane's push: Plumtree eager/lazy broadcast of signed records, IHAVE, GRAFT
//! and record verification.

use agentmesh_crypto::NodeId;
use rand::seq::SliceRandom;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Event, Gossip, Missing, MISSING_MAX, ORPHANS_MAX};
use crate::config::Admission;
use crate::record::{NodeRecord, SignedRecord, Version, RECORD_BYTES_MAX};
use crate::score::Penalty;
use crate::time::Millis;
use crate::wire::{self, Message};

impl Gossip {
    // ---- record plane: Plumtree push ----

    /// Tops up the tree neighbours (eager plus lazy) when members were lost. Pruned links stay
    /// lazy: refilling the eager set after prunes would undo the tree.
    fn ensure_eager(&mut self) {
        let want = self.cfg.eager_peers;
        let have = self.eager.len() + self.lazy.len();
        let floor = self.cfg.eager_peers_min.max(1);
        if have >= want && self.eager.len() >= floor {
            return;
        }
        let exclude: BTreeSet<NodeId> = self.eager.union(&self.lazy).copied().collect();
        let n = want
            .saturating_sub(have)
            .max(floor.saturating_sub(self.eager.len()));
        for id in self.random_alive(n, &exclude) {
            self.eager.insert(id);
        }
    }

    pub(super) fn broadcast_record(&mut self, rec: Arc<SignedRecord>, from: Option<NodeId>) {
        self.ensure_eager();
        let origin = rec.signer;
        let version = match self.record_version(&origin) {
            Some(v) => v,
            None => return,
        };
        let eager: Vec<NodeId> = self
            .eager
            .iter()
            .filter(|p| Some(**p) != from && **p != origin)
            .copied()
            .collect();
        for p in &eager {
            self.send(
                *p,
                Message::Record {
                    record: rec.clone(),
                },
            );
        }
        let mut lazy: Vec<NodeId> = self
            .lazy
            .iter()
            .filter(|p| Some(**p) != from && **p != origin)
            .copied()
            .collect();
        lazy.shuffle(&mut self.rng);
        lazy.truncate(self.cfg.lazy_peers);
        if lazy.len() < self.cfg.lazy_peers {
            let mut exclude: BTreeSet<NodeId> = self.eager.iter().copied().collect();
            exclude.extend(lazy.iter().copied());
            exclude.insert(origin);
            if let Some(f) = from {
                exclude.insert(f);
            }
            let more = self.random_alive(self.cfg.lazy_peers - lazy.len(), &exclude);
            lazy.extend(more);
        }
        for p in lazy {
            let q = self.lazy_pending.entry(p).or_default();
            if q.len() < wire::IHAVE_ENTRIES_MAX {
                q.push((origin, version));
            }
        }
    }

    pub(super) fn flush_lazy(&mut self) {
        let pending = std::mem::take(&mut self.lazy_pending);
        for (p, entries) in pending {
            if self.is_member(&p) {
                self.send(p, Message::IHave { entries });
            }
        }
    }

    /// Verifies and stores a record. Returns true if it was new.
    pub(super) fn accept_record(
        &mut self,
        from: NodeId,
        rec: Arc<SignedRecord>,
        now: Millis,
    ) -> bool {
        self.stats.record_copies_in += 1;
        if rec.payload.len() + 96 > RECORD_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return false;
        }
        let origin = rec.signer;
        if origin == self.me {
            return false;
        }
        if self.revoked.contains(&origin) {
            return false;
        }
        // Cheap duplicate check before verifying.
        if let Some((held, _)) = self
            .members
            .get(&origin)
            .and_then(|e| e.record.as_ref())
            .or_else(|| self.orphans.get(&origin))
        {
            if held.signature == rec.signature {
                return false;
            }
        }
        let Some(decoded) = self.verify_record(from, &rec, now) else {
            return false;
        };
        let held = self
            .members
            .get(&origin)
            .and_then(|e| e.record_version())
            .or_else(|| self.orphans.get(&origin).map(|(_, r)| r.version()));
        if held.is_some_and(|v| v >= decoded.version()) {
            return false; // an equal or older version never replaces a newer one
        }
        self.stats.records_new += 1;
        let version = decoded.version();
        if let Some(e) = self.members.get_mut(&origin) {
            e.record = Some((rec, decoded));
            let member_version = e.info.record_version;
            if version >= member_version {
                self.stale.remove(&origin);
            }
            self.emit(Event::Updated(origin));
        } else if let Some(m) = self.pending.remove(&origin) {
            self.orphans_insert(origin, rec, decoded);
            self.apply_alive(from, m, now);
        } else {
            self.orphans_insert(origin, rec, decoded);
        }
        self.missing
            .retain(|(o, v), _| !(*o == origin && *v <= version));
        true
    }

    /// Checks a signed record (signature, origin, limits, admission); penalises `from` if bad.
    pub(super) fn verify_record(
        &mut self,
        from: NodeId,
        rec: &Arc<SignedRecord>,
        now: Millis,
    ) -> Option<Arc<NodeRecord>> {
        let origin = rec.signer;
        if rec.payload.len() + 96 > RECORD_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        let decoded = match self.verifier.record(rec) {
            Ok(r) => r,
            Err(_) => {
                self.penalize(from, Penalty::BadSignature);
                return None;
            }
        };
        if decoded.node_id != origin {
            self.penalize(from, Penalty::ForeignRecord);
            return None;
        }
        if decoded.check_limits().is_err() {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        if let Admission::Enforced { root, mesh_id } = &self.cfg.admission {
            let ok = self
                .verifier
                .record_admitted(&decoded, root, mesh_id, now / 1000);
            if !ok {
                self.penalize(from, Penalty::Unadmitted);
                return None;
            }
        }
        Some(decoded)
    }

    fn orphans_insert(&mut self, id: NodeId, rec: Arc<SignedRecord>, dec: Arc<NodeRecord>) {
        if self.orphans.len() >= ORPHANS_MAX && !self.orphans.contains_key(&id) {
            if let Some(k) = self.orphans.keys().next().copied() {
                self.orphans.remove(&k);
            }
        }
        self.orphans.insert(id, (rec, dec));
    }

    pub(super) fn on_record(
        &mut self,
        from: NodeId,
        rec: Arc<SignedRecord>,
        eager: bool,
        now: Millis,
    ) {
        let new = self.accept_record(from, rec.clone(), now);
        if !eager {
            return;
        }
        if new {
            if !self.eager.contains(&from) && self.is_member(&from) {
                self.lazy.remove(&from);
                self.eager.insert(from);
            }
            self.broadcast_record(rec, Some(from));
        } else if self.eager.len() > self.cfg.eager_peers_min && self.eager.remove(&from) {
            // Plumtree: a duplicate on an eager link prunes it to lazy, down to a floor of
            // eager links that keeps the tree shallow for every sender, not just the first.
            if self.lazy.len() < self.cfg.tree_peers_max {
                self.lazy.insert(from);
            }
            self.send(from, Message::Prune);
        }
    }

    pub(super) fn on_ihave(&mut self, from: NodeId, entries: Vec<(NodeId, Version)>, now: Millis) {
        for (origin, version) in entries {
            if origin == self.me || self.record_version(&origin).is_some_and(|v| v >= version) {
                continue;
            }
            if self
                .orphans
                .get(&origin)
                .is_some_and(|(_, r)| r.version() >= version)
            {
                continue;
            }
            if let Some(m) = self.missing.get_mut(&(origin, version)) {
                if m.from.len() < 4 && !m.from.contains(&from) {
                    m.from.push(from);
                }
            } else if self.missing.len() < MISSING_MAX {
                self.missing.insert(
                    (origin, version),
                    Missing {
                        deadline: now + self.cfg.graft_timeout_ms,
                        from: vec![from],
                    },
                );
            }
        }
    }

    pub(super) fn graft_missing(&mut self, now: Millis) {
        let due: Vec<(NodeId, Version)> = self
            .missing
            .iter()
            .filter(|(_, m)| now >= m.deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(m) = self.missing.get_mut(&key) else {
                continue;
            };
            if m.from.is_empty() {
                self.missing.remove(&key);
                continue;
            }
            let peer = m.from.remove(0);
            m.deadline = now + self.cfg.graft_timeout_ms;
            if self.is_member(&peer) {
                self.lazy.remove(&peer);
                self.eager.insert(peer);
                self.send(peer, Message::Graft { entries: vec![key] });
            }
        }
    }

    pub(super) fn on_graft(&mut self, from: NodeId, entries: Vec<(NodeId, Version)>) {
        self.lazy.remove(&from);
        self.eager.insert(from);
        for (origin, _) in entries {
            let rec = if origin == self.me {
                Some(self.local_signed.clone())
            } else {
                self.members
                    .get(&origin)
                    .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
            };
            if let Some(record) = rec {
                self.send(from, Message::Record { record });
            }
        }
    }
}
