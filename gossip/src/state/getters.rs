//! Read-only views of the state: local identity, members, records, scores, and the
//! capability search over admitted records.

use agentmesh_crypto::NodeId;
use std::sync::Arc;

use super::{CapabilityMatch, CapabilityQuery, Gossip, MemberView, Stats};
use crate::member::{MemberInfo, MemberState, SignedMember};
use crate::record::{Capability, NodeRecord, SignedRecord, Version};

impl Gossip {
    // ---- getters ----

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.me
    }

    /// This node's current record.
    pub fn local_record(&self) -> &NodeRecord {
        &self.local
    }

    /// This node's current signed record.
    pub fn local_signed_record(&self) -> Arc<SignedRecord> {
        self.local_signed.clone()
    }

    /// This node's current signed membership identity.
    pub fn local_member(&self) -> Arc<SignedMember> {
        self.local_member.clone()
    }

    /// The signed record held for `id` (as received, for forwarding and audits).
    pub fn signed_record(&self, id: &NodeId) -> Option<Arc<SignedRecord>> {
        if *id == self.me {
            return Some(self.local_signed.clone());
        }
        self.members
            .get(id)
            .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.local_member_info().incarnation
    }

    fn local_member_info(&self) -> MemberInfo {
        self.local_member
            .decode_unverified()
            .expect("own member info decodes")
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The local health multiplier (Lifeguard LHM), 0 when healthy.
    pub fn local_health(&self) -> u32 {
        self.lhm
    }

    /// A peer's score (0 when unknown).
    pub fn score(&self, peer: &NodeId) -> i32 {
        self.scores.get(peer)
    }

    /// The number of alive or suspect members, self included.
    pub fn live_count(&self) -> usize {
        1 + self.members.live()
    }

    /// The state of a member as seen here (None if unknown; self is always alive).
    pub fn state_of(&self, id: &NodeId) -> Option<MemberState> {
        if *id == self.me {
            return Some(if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            });
        }
        self.members.get(id).map(|e| e.state())
    }

    /// The version of the record held for `id`.
    pub fn record_version(&self, id: &NodeId) -> Option<Version> {
        if *id == self.me {
            return Some(self.local.version());
        }
        self.members.get(id).and_then(|e| e.record_version())
    }

    /// The record held for `id`.
    pub fn record(&self, id: &NodeId) -> Option<Arc<NodeRecord>> {
        if *id == self.me {
            return Some(Arc::new(self.local.clone()));
        }
        self.members
            .get(id)
            .and_then(|e| e.record.as_ref().map(|(_, r)| r.clone()))
    }

    /// All members, self included.
    pub fn members(&self) -> Vec<MemberView> {
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(MemberView {
            node_id: self.me,
            addrs: self.addrs.clone(),
            state: self.state_of(&self.me).unwrap_or(MemberState::Alive),
            incarnation: self.incarnation(),
            record: Some(Arc::new(self.local.clone())),
        });
        out.extend(self.members.iter().map(|(id, e)| MemberView {
            node_id: *id,
            addrs: e.info.addrs.clone(),
            state: e.state(),
            incarnation: e.info.incarnation,
            record: e.record.as_ref().map(|(_, r)| r.clone()),
        }));
        out
    }

    /// Ids of members in a state, self excluded.
    pub fn ids_in_state(&self, state: MemberState) -> Box<dyn Iterator<Item = NodeId> + '_> {
        let members = &self.members;
        match state {
            // Dead and left members are indexed: no scan of the whole view.
            MemberState::Dead | MemberState::Left => Box::new(
                members
                    .down()
                    .keys()
                    .filter(move |id| members.get(id).is_some_and(|e| e.state() == state))
                    .copied(),
            ),
            _ => Box::new(
                members
                    .iter()
                    .filter(move |(_, e)| e.state() == state)
                    .map(|(id, _)| *id),
            ),
        }
    }

    /// Addresses of a member.
    pub fn addrs_of(&self, id: &NodeId) -> Vec<String> {
        self.members
            .get(id)
            .map(|e| e.info.addrs.clone())
            .unwrap_or_default()
    }

    /// Alive members (self included) whose record offers a capability matching `q`.
    pub fn find(&self, q: &CapabilityQuery) -> Vec<CapabilityMatch> {
        let local = (!self.leaving).then(|| (self.me, Arc::new(self.local.clone())));
        let others = self.members.iter().filter_map(|(id, e)| {
            if e.state() != MemberState::Alive {
                return None;
            }
            e.record.as_ref().map(|(_, r)| (*id, r.clone()))
        });
        local
            .into_iter()
            .chain(others)
            .filter_map(|(id, rec)| {
                let cap = rec
                    .agent
                    .as_ref()?
                    .capabilities
                    .iter()
                    .find(|c| c.name == q.capability && capability_matches(c, q))?
                    .clone();
                Some(CapabilityMatch {
                    node_id: id,
                    record: rec,
                    capability: cap,
                })
            })
            .collect()
    }

    /// True if any alive member (or self) offers the capability, ignoring constraints.
    pub fn offered(&self, capability: &str) -> bool {
        let q = CapabilityQuery {
            capability: capability.to_string(),
            ..Default::default()
        };
        !self.find(&q).is_empty()
    }
}

fn capability_matches(c: &Capability, q: &CapabilityQuery) -> bool {
    if q.min_proficiency.is_some_and(|min| c.proficiency < min) {
        return false;
    }
    q.attrs
        .iter()
        .all(|(k, v)| c.attributes.get(k).is_some_and(|a| a.matches(v)))
}
