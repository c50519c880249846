//! The mesh-wide view built on any node from the traffic summaries every node gossips
//! ([`crate::obs::traffic`]): the traffic matrix, latency and error rate per pair, the slowest
//! pairs, the most-called agents and the agents nobody calls. Served at `GET /v1/mesh/matrix`
//! and `GET /v1/mesh/summary`, shown by `agentmesh top` and the dashboard at `/ui`.

use crate::contract::names::state_name;
use crate::obs::traffic::{PairSummary, TrafficSummary, TRAFFIC_EXT_KEY};
use agentmesh_gossip::MemberView;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rows in each "top" list of the summary.
pub const TOP_N: usize = 10;

/// An agent in the mesh, with its traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    /// Agent name (or `node:<short id>` for a node without agent).
    pub agent: String,
    /// Its node.
    pub node_id: String,
    /// Member state.
    pub state: String,
    /// Capabilities offered.
    pub capabilities: Vec<String>,
    /// Calls it received (as its callers report them).
    pub calls_in: u64,
    /// Calls it made.
    pub calls_out: u64,
}

/// One cell of the matrix: `source` called `target` for `capability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRow {
    /// The calling agent.
    pub source: String,
    /// The calling agent's node.
    pub source_node: String,
    /// The agent called.
    pub target: String,
    /// The capability.
    pub capability: String,
    /// Calls.
    pub count: u64,
    /// Failed calls.
    pub errors: u64,
    /// `errors / count`.
    pub error_rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// `GET /v1/mesh/matrix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    /// The node that answered.
    pub node_id: String,
    /// Every member with its traffic.
    pub agents: Vec<AgentRow>,
    /// Every reported pair, busiest first.
    pub pairs: Vec<PairRow>,
}

/// `GET /v1/mesh/summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The node that answered.
    pub node_id: String,
    /// Members known.
    pub members: usize,
    /// Calls reported mesh-wide.
    pub calls_total: u64,
    /// Failed calls reported mesh-wide.
    pub errors_total: u64,
    /// The [`TOP_N`] pairs with the highest p99.
    pub slowest_pairs: Vec<PairRow>,
    /// The [`TOP_N`] agents receiving the most calls (possible bottlenecks).
    pub most_called: Vec<AgentRow>,
    /// Live agents that received no call (possibly redundant).
    pub idle_agents: Vec<AgentRow>,
    /// This node's circuit breakers that are not closed.
    pub breakers: Vec<BreakerRow>,
    /// This node's slowest calls of the last minutes.
    pub slowest_calls: Vec<crate::obs::traffic::SlowCall>,
    /// This node's recent failed calls, newest first (bounded ring).
    #[serde(default)]
    pub recent_failures: Vec<crate::obs::failures::FailedCall>,
    /// This node's recent refusals by routing, newest first (bounded ring).
    #[serde(default)]
    pub recent_refusals: Vec<crate::obs::failures::FailedCall>,
    /// Failed calls pushed out of the full ring since this node started.
    #[serde(default)]
    pub failures_evicted: u64,
    /// Refusals pushed out of the full ring since this node started.
    #[serde(default)]
    pub refusals_evicted: u64,
}

/// A breaker as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerRow {
    /// Target node.
    pub node_id: String,
    /// Its agent.
    pub agent: String,
    /// The capability the breaker guards (breakers are per agent and capability).
    #[serde(default)]
    pub capability: String,
    /// `closed | half_open | open`.
    pub state: String,
}

/// The display name of a member's agent.
pub fn agent_name(m: &MemberView) -> String {
    m.record
        .as_ref()
        .and_then(|r| r.agent.as_ref())
        .map(|a| a.name.clone())
        .unwrap_or_else(|| format!("node:{}", m.node_id.short()))
}

fn pair_row(source: &str, source_node: &str, p: &PairSummary) -> PairRow {
    let rate = if p.count == 0 {
        0.0
    } else {
        p.errors as f64 / p.count as f64
    };
    PairRow {
        source: source.to_string(),
        source_node: source_node.to_string(),
        target: p.target_agent.clone(),
        capability: p.capability.clone(),
        count: p.count,
        errors: p.errors,
        error_rate: (rate * 1000.0).round() / 1000.0,
        p50_ms: (p.p50_ms as f64 * 10.0).round() / 10.0,
        p99_ms: (p.p99_ms as f64 * 10.0).round() / 10.0,
    }
}

/// Builds the matrix from the members and their gossiped summaries. `local` replaces this
/// node's own (possibly not yet published) summary. Summaries that fail to decode are skipped.
pub fn matrix(
    me: &agentmesh_crypto::NodeId,
    members: &[MemberView],
    local: &TrafficSummary,
) -> Matrix {
    let mut agents: BTreeMap<String, AgentRow> = BTreeMap::new();
    let mut pairs = Vec::new();
    for m in members {
        let name = agent_name(m);
        let caps = m
            .record
            .as_ref()
            .and_then(|r| r.agent.as_ref())
            .map(|a| a.capabilities.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        agents.insert(
            name.clone(),
            AgentRow {
                agent: name.clone(),
                node_id: m.node_id.to_string(),
                state: state_name(m.state).into(),
                capabilities: caps,
                calls_in: 0,
                calls_out: 0,
            },
        );
        let summary = if m.node_id == *me {
            Some(local.clone())
        } else {
            m.record
                .as_ref()
                .and_then(|r| r.ext.get(TRAFFIC_EXT_KEY))
                .and_then(|b| TrafficSummary::decode(b).ok())
        };
        for p in summary.map(|s| s.pairs).unwrap_or_default() {
            pairs.push(pair_row(&name, &m.node_id.to_string(), &p));
        }
    }
    for p in &pairs {
        if let Some(a) = agents.get_mut(&p.source) {
            a.calls_out += p.count;
        }
        if let Some(a) = agents.get_mut(&p.target) {
            a.calls_in += p.count;
        }
    }
    pairs.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.source, &a.target).cmp(&(&b.source, &b.target)))
    });
    Matrix {
        node_id: me.to_string(),
        agents: agents.into_values().collect(),
        pairs,
    }
}

/// The summary of a matrix, with this node's breakers, slowest calls and recent failures.
pub fn summary(
    m: &Matrix,
    breakers: Vec<BreakerRow>,
    slowest_calls: Vec<crate::obs::traffic::SlowCall>,
    failures: crate::obs::failures::RecentFailures,
) -> Summary {
    let mut slowest = m.pairs.clone();
    slowest.sort_by(|a, b| b.p99_ms.total_cmp(&a.p99_ms));
    slowest.truncate(TOP_N);
    let mut most: Vec<AgentRow> = m
        .agents
        .iter()
        .filter(|a| a.calls_in > 0)
        .cloned()
        .collect();
    most.sort_by_key(|a| std::cmp::Reverse(a.calls_in));
    most.truncate(TOP_N);
    let idle = m
        .agents
        .iter()
        .filter(|a| a.calls_in == 0 && a.state == "alive" && !a.capabilities.is_empty())
        .cloned()
        .collect();
    Summary {
        node_id: m.node_id.clone(),
        members: m.agents.len(),
        calls_total: m.pairs.iter().map(|p| p.count).sum(),
        errors_total: m.pairs.iter().map(|p| p.errors).sum(),
        slowest_pairs: slowest,
        most_called: most,
        idle_agents: idle,
        breakers: breakers
            .into_iter()
            .filter(|b| b.state != "closed")
            .collect(),
        slowest_calls,
        recent_failures: failures.failed,
        recent_refusals: failures.refused,
        failures_evicted: failures.failed_evicted,
        refusals_evicted: failures.refused_evicted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_gossip::{AgentInfo, Capability, MemberState, NodeRecord};
    use std::sync::Arc;

    fn member(
        seed: u8,
        agent: &str,
        caps: &[&str],
        traffic: Option<&TrafficSummary>,
    ) -> MemberView {
        let id = agentmesh_crypto::Keypair::from_secret([seed; 32]).node_id();
        let mut r = NodeRecord::new(id);
        r.agent = Some(AgentInfo {
            name: agent.into(),
            capabilities: caps
                .iter()
                .map(|c| Capability {
                    name: c.to_string(),
                    proficiency: Default::default(),
                    attributes: Default::default(),
                    cost: 0.0,
                    ..Default::default()
                })
                .collect(),
        });
        if let Some(t) = traffic {
            r.ext.insert(TRAFFIC_EXT_KEY.into(), t.encode());
        }
        MemberView {
            node_id: id,
            addrs: vec![],
            state: MemberState::Alive,
            incarnation: 0,
            record: Some(Arc::new(r)),
        }
    }

    fn pair(target: &str, count: u64, errors: u64, p99: f32) -> PairSummary {
        PairSummary {
            target_agent: target.into(),
            capability: "cap".into(),
            count,
            errors,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
        }
    }

    #[test]
    fn matrix_and_summary_from_gossiped_summaries() {
        let a_traffic = TrafficSummary {
            version: 1,
            pairs: vec![pair("b", 10, 1, 20.0), pair("c", 5, 0, 90.0)],
        };
        let b_traffic = TrafficSummary {
            version: 1,
            pairs: vec![pair("c", 7, 7, 5.0)],
        };
        let a = member(1, "a", &["x"], None);
        let members = vec![
            a.clone(),
            member(2, "b", &["cap"], Some(&b_traffic)),
            member(3, "c", &["cap"], None),
            member(4, "d", &["cap"], None),
        ];
        let m = matrix(&a.node_id, &members, &a_traffic);
        assert_eq!(m.pairs.len(), 3);
        assert_eq!(m.pairs[0].count, 10, "busiest first");
        let bc = m.pairs.iter().find(|p| p.source == "b").unwrap();
        assert_eq!((bc.target.as_str(), bc.error_rate), ("c", 1.0));
        let c = m.agents.iter().find(|r| r.agent == "c").unwrap();
        assert_eq!(c.calls_in, 12);
        let s = summary(&m, vec![], vec![], Default::default());
        assert_eq!(s.calls_total, 22);
        assert_eq!(s.errors_total, 8);
        assert_eq!(s.slowest_pairs[0].p99_ms, 90.0);
        assert_eq!(s.most_called[0].agent, "c");
        let idle: Vec<&str> = s.idle_agents.iter().map(|r| r.agent.as_str()).collect();
        assert_eq!(
            idle,
            vec!["a", "d"],
            "a offers x and nobody calls it; d likewise"
        );
    }

    #[test]
    fn undecodable_summaries_are_skipped() {
        let mut b = member(2, "b", &["cap"], None);
        let mut r = (*b.record.clone().unwrap()).clone();
        r.ext.insert(TRAFFIC_EXT_KEY.into(), vec![0xff; 10]);
        b.record = Some(Arc::new(r));
        let a = member(1, "a", &[], None);
        let m = matrix(&a.node_id, &[a.clone(), b], &TrafficSummary::default());
        assert!(m.pairs.is_empty());
        assert_eq!(m.agents.len(), 2);
    }
}
