//! Who offers a capability and who is eligible for a call, plus the load observed per node.
//! Ordering the eligible candidates is `policies.rs`'s job (through `state.rs`).

use crate::contract::CallRequest;
use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::{Capability, Health, NodeRecord};
use agentmesh_gossip::{MemberState, MemberView};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most nodes with load observations kept.
pub const ROUTER_PEERS_MAX: usize = 16_384;
pub use crate::contract::Candidate;

/// Time constant of the trust in a piggybacked load report, in ms: a report this old counts
/// for 1/e, the gossiped load for the rest.
pub const PIGGYBACK_TRUST_MS: f64 = 1_000.0;

/// Load observed for one node.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Calls from here in flight to it now.
    in_flight: u32,
    /// What it reported on its last answer.
    reported_in_flight: u32,
    reported_max: u32,
    /// When it last reported.
    reported_at: Option<std::time::Instant>,
    /// Smoothed QUIC round-trip time of the call connection at its last answer, µs.
    rtt_us: Option<u32>,
}

/// The load of a candidate as routing judges it.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Judged {
    /// Calls from here in flight to it.
    pub in_flight: u32,
    /// Its own in-flight count: the piggybacked report while fresh, blended by age into the
    /// gossiped one.
    pub reported_in_flight: u32,
    /// Its concurrency limit (0: unknown).
    pub reported_max: u32,
    /// Smoothed QUIC RTT to its node as of its last answer, µs (None: not measured).
    pub rtt_us: Option<u32>,
}

/// Blends a piggybacked report `age_ms` old with the gossiped load: weight
/// `exp(-age / PIGGYBACK_TRUST_MS)` on the report. No report: the gossiped load.
pub fn blend(piggyback: Option<(u32, f64)>, gossiped: u32) -> u32 {
    match piggyback {
        None => gossiped,
        Some((load, age_ms)) => {
            let w = (-age_ms.max(0.0) / PIGGYBACK_TRUST_MS).exp();
            (w * load as f64 + (1.0 - w) * gossiped as f64).round() as u32
        }
    }
}

/// Router state: the load observed per node.
#[derive(Debug, Default)]
pub struct Router {
    load: Arc<Mutex<HashMap<NodeId, Load>>>,
}

/// Holds one observed in-flight call to a node; releases on drop.
#[derive(Debug)]
pub struct LoadGuard {
    node: NodeId,
    load: Arc<Mutex<HashMap<NodeId, Load>>>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut m = lock(&self.load);
        if let Some(l) = m.get_mut(&self.node) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a capability entry does or does not fit the request's constraints.
fn ineligible_reason(c: &Capability, rec: &NodeRecord, req: &CallRequest) -> Option<String> {
    if rec.health == Health::Draining {
        return Some("node is draining".into());
    }
    if let Some(min) = req.min_proficiency {
        if c.proficiency < min {
            return Some(format!(
                "proficiency {:?} is below the minimum {:?}",
                c.proficiency, min
            ));
        }
    }
    for (k, v) in &req.attrs {
        match c.attributes.get(k) {
            None => return Some(format!("no attribute {k}")),
            Some(a) if !a.matches(v) => {
                return Some(format!("attribute {k} does not include {v:?}"))
            }
            _ => {}
        }
    }
    None
}

/// Every alive member offering `capability`, eligible or not: `(candidate, why not)`.
pub fn offers(
    members: &[MemberView],
    me: NodeId,
    req: &CallRequest,
) -> Vec<(Candidate, Option<String>)> {
    let mut out = Vec::new();
    for m in members {
        if m.state != MemberState::Alive {
            continue;
        }
        let Some(rec) = m.record.as_ref() else {
            continue;
        };
        let Some(agent) = rec.agent.as_ref() else {
            continue;
        };
        let Some(cap) = agent.capabilities.iter().find(|c| c.name == req.capability) else {
            continue;
        };
        let why = ineligible_reason(cap, rec, req);
        out.push((
            Candidate {
                node_id: m.node_id,
                agent: agent.name.clone(),
                capability: cap.clone(),
                addrs: m.addrs.clone(),
                local: m.node_id == me,
                record: rec.clone(),
            },
            why,
        ));
    }
    out.sort_by_key(|a| a.0.node_id);
    out
}

impl Router {
    /// A router with no observations.
    pub fn new() -> Self {
        Router::default()
    }

    /// Counts a call to `node` as in flight until the guard drops.
    pub fn start_call(&self, node: NodeId) -> LoadGuard {
        let mut m = lock(&self.load);
        if !m.contains_key(&node) && m.len() >= ROUTER_PEERS_MAX {
            m.retain(|_, l| l.in_flight > 0);
        }
        m.entry(node).or_default().in_flight += 1;
        LoadGuard {
            node,
            load: self.load.clone(),
        }
    }

    /// Records the load a callee reported on its answer, and the call connection's RTT.
    pub fn observe_reported(
        &self,
        node: NodeId,
        in_flight: u32,
        max: u32,
        rtt: Option<std::time::Duration>,
    ) {
        if let Some(l) = lock(&self.load).get_mut(&node) {
            l.reported_in_flight = in_flight;
            l.reported_max = max;
            l.reported_at = Some(std::time::Instant::now());
            if let Some(r) = rtt {
                l.rtt_us = Some(u32::try_from(r.as_micros()).unwrap_or(u32::MAX));
            }
        }
    }

    /// `(in flight from here, in flight the callee reported, its reported limit)`.
    pub fn load_of(&self, node: &NodeId) -> (u32, u32, u32) {
        lock(&self.load)
            .get(node)
            .map(|l| (l.in_flight, l.reported_in_flight, l.reported_max))
            .unwrap_or((0, 0, 0))
    }

    /// The load of `cand` as routing judges it: in flight from here, plus its own count (the
    /// piggybacked report while fresh, the gossiped one in its record otherwise), and its limit.
    pub fn judge(&self, cand: &Candidate) -> Judged {
        let m = lock(&self.load);
        let l = m.get(&cand.node_id).copied().unwrap_or_default();
        let piggyback = l
            .reported_at
            .map(|t| (l.reported_in_flight, t.elapsed().as_secs_f64() * 1000.0));
        Judged {
            in_flight: l.in_flight,
            reported_in_flight: blend(piggyback, cand.record.in_flight),
            reported_max: if l.reported_max > 0
                && piggyback.is_some_and(|(_, a)| a < PIGGYBACK_TRUST_MS)
            {
                l.reported_max
            } else {
                cand.record.max_concurrency
            },
            rtt_us: l.rtt_us,
        }
    }

    /// Calls from here in flight to `node`.
    pub fn in_flight(&self, node: &NodeId) -> u32 {
        lock(&self.load).get(node).map(|l| l.in_flight).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::Keypair;
    use agentmesh_gossip::record::{AgentInfo, AttrValue, Proficiency};
    use std::collections::BTreeMap;

    fn cand(seed: u8, agent: &str, prof: Proficiency, region: &str) -> (Candidate, Option<String>) {
        let id = Keypair::from_secret([seed; 32]).node_id();
        let cap = Capability {
            name: "inv".into(),
            proficiency: prof,
            attributes: BTreeMap::from([("region".to_string(), AttrValue::One(region.into()))]),
            cost: 1.0,
            ..Default::default()
        };
        let mut rec = NodeRecord::new(id);
        rec.agent = Some(AgentInfo {
            name: agent.into(),
            capabilities: vec![cap.clone()],
        });
        (
            Candidate {
                node_id: id,
                agent: agent.into(),
                capability: cap,
                record: Arc::new(rec),
                addrs: vec![],
                local: false,
            },
            None,
        )
    }

    fn judged(
        req: &CallRequest,
        c: Vec<(Candidate, Option<String>)>,
    ) -> Vec<(Candidate, Option<String>)> {
        c.into_iter()
            .map(|(c, _)| {
                let why = ineligible_reason(&c.capability, &c.record, req);
                (c, why)
            })
            .collect()
    }

    fn req() -> CallRequest {
        CallRequest {
            capability: "inv".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ineligible_offers_say_why() {
        let mut q = req();
        q.attrs.insert("region".into(), "mars".into());
        let offers = judged(&q, vec![cand(1, "a", Proficiency::Expert, "eu")]);
        assert!(offers[0].1.as_deref().is_some_and(|w| w.contains("region")));
        let mut q = req();
        q.min_proficiency = Some(Proficiency::Expert);
        let offers = judged(&q, vec![cand(1, "a", Proficiency::Novice, "eu")]);
        assert!(
            offers[0].1.is_some(),
            "a novice is not eligible for expert work"
        );
        let offers = judged(&req(), vec![cand(1, "a", Proficiency::Novice, "eu")]);
        assert_eq!(offers[0].1, None, "no constraints: eligible");
    }

    #[test]
    fn load_guard_counts_in_flight_until_dropped() {
        let r = Router::new();
        let (c, _) = cand(2, "b", Proficiency::Expert, "eu");
        let g1 = r.start_call(c.node_id);
        let g2 = r.start_call(c.node_id);
        r.observe_reported(c.node_id, 7, 10, None);
        assert_eq!(r.load_of(&c.node_id), (2, 7, 10));
        drop(g1);
        assert_eq!(r.in_flight(&c.node_id), 1);
        drop(g2);
        assert_eq!(r.in_flight(&c.node_id), 0);
    }

    #[test]
    fn gossiped_load_counts_when_no_fresh_report() {
        let r = Router::new();
        let (mut c, _) = cand(3, "c", Proficiency::Expert, "eu");
        let mut rec = (*c.record).clone();
        rec.in_flight = 9;
        rec.max_concurrency = 10;
        c.record = Arc::new(rec);
        // Never called from here: the gossiped load and limit.
        let j = r.judge(&c);
        assert_eq!(
            (j.in_flight, j.reported_in_flight, j.reported_max),
            (0, 9, 10)
        );
        // Just answered with its own report: that report.
        let g = r.start_call(c.node_id);
        r.observe_reported(c.node_id, 2, 10, None);
        assert_eq!(r.judge(&c).reported_in_flight, 2);
        drop(g);
    }

    #[test]
    fn blend_weighs_reports_by_age() {
        assert_eq!(blend(None, 7), 7);
        assert_eq!(blend(Some((2, 0.0)), 10), 2);
        assert_eq!(blend(Some((2, 1_000_000.0)), 10), 10);
        let mid = blend(Some((0, PIGGYBACK_TRUST_MS)), 100);
        assert!((60..=66).contains(&mid), "{mid}");
    }
}
