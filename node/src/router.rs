//! Candidate selection for a call: who offers the capability, who is eligible, in what order.
//!
//! Simple for now: round-robin (default) or least in-flight (observed locally, then the load
//! the callee reported on its last answer), with an optional pinned preference. The next issue
//! adds the full policies, breakers and quality floors.

use crate::contract::{CallError, CallRequest, ErrorCode, RouteCandidate, RouteExplanation};
use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::{Capability, Health, NodeRecord};
use agentmesh_gossip::{MemberState, MemberView};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most nodes with load observations kept.
pub const ROUTER_PEERS_MAX: usize = 16_384;
/// Most capabilities with a round-robin cursor kept.
pub const ROUTER_CURSORS_MAX: usize = 4096;

/// The routing policies understood here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Rotate through eligible agents.
    RoundRobin,
    /// Fewest calls in flight, as observed from here.
    LeastLoaded,
}

impl Policy {
    /// Parses a policy name (None: round-robin).
    pub fn parse(name: Option<&str>) -> Result<Policy, CallError> {
        match name {
            None | Some("") | Some("round_robin") => Ok(Policy::RoundRobin),
            Some("least_loaded") | Some("least_in_flight") => Ok(Policy::LeastLoaded),
            Some(other) => Err(CallError::bad_field(
                "policy",
                format!("unknown policy {other:?}: expected round_robin | least_loaded"),
            )),
        }
    }

    /// The policy's name.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastLoaded => "least_loaded",
        }
    }
}

/// One agent that could serve the call.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its node.
    pub node_id: NodeId,
    /// Its agent name.
    pub agent: String,
    /// The capability as it declared it.
    pub capability: Capability,
    /// Its record.
    pub record: Arc<NodeRecord>,
    /// Its advertised addresses.
    pub addrs: Vec<String>,
    /// True for this node's own agent.
    pub local: bool,
}

impl Candidate {
    /// `"<node id>/<agent>"`.
    pub fn served_by(&self) -> String {
        format!("{}/{}", self.node_id, self.agent)
    }
}

/// Load observed for one node.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Calls from here in flight to it now.
    in_flight: u32,
    /// What it reported on its last answer.
    reported_in_flight: u32,
    reported_max: u32,
}

/// Router state: round-robin cursors and observed load.
#[derive(Debug, Default)]
pub struct Router {
    cursors: Mutex<HashMap<String, u64>>,
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

    /// Orders the eligible candidates for `req`; advances the round-robin cursor if `advance`.
    /// Errors: `no_capability` (nobody offers it) or `no_eligible_agent` (constraints exclude
    /// every offer), or `bad_request` for an unknown policy.
    pub fn select(
        &self,
        offers: Vec<(Candidate, Option<String>)>,
        req: &CallRequest,
        advance: bool,
    ) -> Result<Vec<Candidate>, CallError> {
        let policy = Policy::parse(req.policy.as_deref())?;
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let total = offers.len();
        let mut eligible: Vec<Candidate> = offers
            .into_iter()
            .filter(|(_, why)| why.is_none())
            .map(|(c, _)| c)
            .collect();
        if eligible.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoEligibleAgent,
                format!(
                    "{total} agent(s) offer {} but none matches the constraints",
                    req.capability
                ),
            ));
        }
        let cursor = self.cursor(&req.capability, advance);
        let n = eligible.len();
        eligible.rotate_left((cursor % n as u64) as usize);
        if policy == Policy::LeastLoaded {
            let load = lock(&self.load);
            // Stable sort keeps the rotation as the tie-break.
            eligible.sort_by_key(|c| {
                let l = load.get(&c.node_id).copied().unwrap_or_default();
                (l.in_flight, l.reported_in_flight)
            });
        }
        if let Some(p) = req.prefer.as_deref().filter(|p| !p.is_empty()) {
            if let Some(i) = eligible
                .iter()
                .position(|c| c.agent == p || c.node_id.to_string() == p || c.node_id.short() == p)
            {
                let pinned = eligible.remove(i);
                eligible.insert(0, pinned);
            }
        }
        Ok(eligible)
    }

    fn cursor(&self, capability: &str, advance: bool) -> u64 {
        let mut c = lock(&self.cursors);
        if !c.contains_key(capability) && c.len() >= ROUTER_CURSORS_MAX {
            c.clear();
        }
        let v = c.entry(capability.to_string()).or_insert(0);
        let out = *v;
        if advance {
            *v = v.wrapping_add(1);
        }
        out
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

    /// Records the load a callee reported on its answer.
    pub fn observe_reported(&self, node: NodeId, in_flight: u32, max: u32) {
        if let Some(l) = lock(&self.load).get_mut(&node) {
            l.reported_in_flight = in_flight;
            l.reported_max = max;
        }
    }

    /// `(in flight from here, in flight the callee reported, its reported limit)`.
    pub fn load_of(&self, node: &NodeId) -> (u32, u32, u32) {
        lock(&self.load)
            .get(node)
            .map(|l| (l.in_flight, l.reported_in_flight, l.reported_max))
            .unwrap_or((0, 0, 0))
    }

    /// Calls from here in flight to `node`.
    pub fn in_flight(&self, node: &NodeId) -> u32 {
        lock(&self.load).get(node).map(|l| l.in_flight).unwrap_or(0)
    }

    /// Explains the ranking for `req` without advancing any cursor.
    pub fn explain(
        &self,
        offers: Vec<(Candidate, Option<String>)>,
        req: &CallRequest,
    ) -> Result<RouteExplanation, CallError> {
        let policy = Policy::parse(req.policy.as_deref())?;
        let ineligible: Vec<(Candidate, String)> = offers
            .iter()
            .filter_map(|(c, why)| why.clone().map(|w| (c.clone(), w)))
            .collect();
        let ranked = match self.select(offers, req, false) {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::NoEligibleAgent => Vec::new(),
            Err(e) => return Err(e),
        };
        let pinned = req.prefer.as_deref().filter(|p| !p.is_empty());
        let mut candidates = Vec::new();
        for (i, c) in ranked.iter().enumerate() {
            let mut reason = match (i, policy) {
                (0, Policy::RoundRobin) => "next in round-robin order".to_string(),
                (_, Policy::RoundRobin) => format!("round-robin position {}", i + 1),
                (_, Policy::LeastLoaded) => {
                    format!("{} call(s) in flight from here", self.in_flight(&c.node_id))
                }
            };
            if i == 0
                && pinned.is_some_and(|p| {
                    c.agent == p || c.node_id.to_string() == p || c.node_id.short() == p
                })
            {
                reason = "preferred by the caller".into();
            }
            if c.local {
                reason.push_str("; local agent (no network hop)");
            }
            candidates.push(self.row(c, Some(i as u32 + 1), reason));
        }
        for (c, why) in ineligible {
            candidates.push(self.row(&c, None, format!("ineligible: {why}")));
        }
        Ok(RouteExplanation {
            capability: req.capability.clone(),
            policy: policy.name().to_string(),
            candidates,
        })
    }

    fn row(&self, c: &Candidate, rank: Option<u32>, reason: String) -> RouteCandidate {
        RouteCandidate {
            rank,
            node_id: c.node_id.to_string(),
            agent: c.agent.clone(),
            proficiency: c.capability.proficiency,
            cost: c.capability.cost,
            in_flight: self.in_flight(&c.node_id),
            reported_in_flight: None,
            latency_ms: None,
            success_rate: None,
            breaker: "closed".into(),
            reason,
        }
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
    fn no_capability_vs_no_eligible() {
        let r = Router::new();
        assert_eq!(
            r.select(vec![], &req(), true).unwrap_err().code,
            ErrorCode::NoCapability
        );
        let mut q = req();
        q.attrs.insert("region".into(), "mars".into());
        let offers = judged(&q, vec![cand(1, "a", Proficiency::Expert, "eu")]);
        assert_eq!(
            r.select(offers, &q, true).unwrap_err().code,
            ErrorCode::NoEligibleAgent
        );
        let mut q = req();
        q.min_proficiency = Some(Proficiency::Expert);
        let offers = judged(&q, vec![cand(1, "a", Proficiency::Novice, "eu")]);
        assert_eq!(
            r.select(offers, &q, true).unwrap_err().code,
            ErrorCode::NoEligibleAgent
        );
    }

    #[test]
    fn round_robin_rotates_and_prefer_pins() {
        let r = Router::new();
        let offers = || {
            vec![
                cand(1, "a", Proficiency::Expert, "eu"),
                cand(2, "b", Proficiency::Expert, "eu"),
            ]
        };
        let first: Vec<String> = (0..4)
            .map(|_| r.select(offers(), &req(), true).unwrap()[0].agent.clone())
            .collect();
        assert_ne!(first[0], first[1]);
        assert_eq!(first[0], first[2]);
        let mut q = req();
        q.prefer = Some("b".into());
        for _ in 0..3 {
            assert_eq!(r.select(offers(), &q, true).unwrap()[0].agent, "b");
        }
    }

    #[test]
    fn least_loaded_prefers_idle() {
        let r = Router::new();
        let offers = vec![
            cand(1, "a", Proficiency::Expert, "eu"),
            cand(2, "b", Proficiency::Expert, "eu"),
        ];
        let busy = offers[0].0.node_id;
        let _g = r.start_call(busy);
        let mut q = req();
        q.policy = Some("least_loaded".into());
        for _ in 0..3 {
            assert_eq!(r.select(offers.clone(), &q, true).unwrap()[0].agent, "b");
        }
        q.policy = Some("nope".into());
        assert_eq!(
            r.select(offers, &q, true).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn explain_lists_ineligible_with_reasons() {
        let r = Router::new();
        let mut q = req();
        q.attrs.insert("region".into(), "eu".into());
        let offers = judged(
            &q,
            vec![
                cand(1, "a", Proficiency::Expert, "eu"),
                cand(2, "b", Proficiency::Expert, "us"),
            ],
        );
        let e = r.explain(offers, &q).unwrap();
        assert_eq!(e.candidates.len(), 2);
        assert_eq!(e.candidates[0].rank, Some(1));
        assert_eq!(e.candidates[1].rank, None);
        assert!(e.candidates[1].reason.contains("region"));
    }
}
