//! What the node reports about itself: the metrics scrape, breaker rows, the traffic matrix
//! and summary for the dashboard, and the load and traffic it publishes to gossip.

use super::*;

impl MeshHandle {
    /// Publishes this node's traffic summary to gossip when it changed (bounded size).
    pub(super) async fn publish_traffic(self) {
        let mut tick = tokio::time::interval(crate::obs::traffic::TRAFFIC_PUBLISH_INTERVAL);
        loop {
            tick.tick().await;
            let room = self.traffic_room();
            if room == 0 {
                continue;
            }
            if let Some(bytes) = self.0.calls.traffic.take_changed(room) {
                let _ = self.0.driver.try_send(DriverCmd::Update(RecordUpdate::Ext {
                    key: crate::obs::traffic::TRAFFIC_EXT_KEY.into(),
                    value: Some(bytes),
                }));
            }
        }
    }

    /// Bytes the traffic summary may take in this node's record: whatever the rest of the
    /// record leaves under the record limit (minus room for the signature envelope), so the
    /// summary can never push an agent update over the limit.
    pub(super) fn traffic_room(&self) -> usize {
        const ENVELOPE_BYTES: usize = 512;
        let snap = snapshot(&self.0.calls.gossip);
        let Some(rec) = snap
            .members
            .iter()
            .find(|m| m.node_id == self.0.calls.node_id)
            .and_then(|m| m.record.clone())
        else {
            return 0;
        };
        let mut rest = (*rec).clone();
        rest.ext.remove(crate::obs::traffic::TRAFFIC_EXT_KEY);
        let used = postcard::to_stdvec(&rest)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        agentmesh_gossip::record::RECORD_BYTES_MAX
            .saturating_sub(ENVELOPE_BYTES)
            .saturating_sub(used)
    }

    /// The Prometheus exposition of this node's metrics.
    pub fn metrics_text(&self) -> String {
        let snap = snapshot(&self.0.calls.gossip);
        let mut members: BTreeMap<&'static str, u64> = BTreeMap::new();
        for s in ["alive", "suspect", "dead", "left"] {
            members.insert(s, 0);
        }
        for m in snap.members.iter() {
            *members.entry(state_name(m.state)).or_default() += 1;
        }
        let state = crate::obs::metrics::ScrapeState {
            in_flight_inbound: self.0.calls.agent.in_flight(),
            in_flight_outbound: self.0.calls.outbound.load(Ordering::Acquire),
            overloaded_total: self.0.calls.agent.overloaded_total.load(Ordering::Relaxed),
            members: members.into_iter().collect(),
            gossip: self
                .0
                .driver_stats
                .gossip
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            breakers: self
                .breakers()
                .into_iter()
                .map(|b| {
                    let v = match b.state.as_str() {
                        "open" => 2,
                        "half_open" => 1,
                        _ => 0,
                    };
                    (b.node_id, b.agent, b.capability, v)
                })
                .collect(),
            security: self.security_scrape(),
        };
        self.0.calls.metrics.encode(&state)
    }

    /// This node's circuit breakers, with the agent each target node runs.
    pub fn breakers(&self) -> Vec<crate::obs::mesh_view::BreakerRow> {
        let snap = snapshot(&self.0.calls.gossip);
        self.0
            .calls
            .res
            .breaker_states()
            .into_iter()
            .map(|(node, capability, state)| {
                let agent = snap
                    .members
                    .iter()
                    .find(|m| m.node_id == node)
                    .map(crate::obs::mesh_view::agent_name)
                    .unwrap_or_else(|| crate::obs::metrics::NONE_LABEL.into());
                crate::obs::mesh_view::BreakerRow {
                    node_id: node.to_string(),
                    agent,
                    capability,
                    state: state.name().into(),
                }
            })
            .collect()
    }

    /// The mesh-wide traffic matrix from every node's gossiped summary.
    pub fn mesh_matrix(&self) -> crate::obs::mesh_view::Matrix {
        let snap = snapshot(&self.0.calls.gossip);
        crate::obs::mesh_view::matrix(
            &self.0.calls.node_id,
            &snap.members,
            &self.0.calls.traffic.summary(),
        )
    }

    /// The mesh-wide summary: slowest pairs, most-called and idle agents, breakers.
    pub fn mesh_summary(&self) -> crate::obs::mesh_view::Summary {
        let m = self.mesh_matrix();
        let traffic = &self.0.calls.traffic;
        crate::obs::mesh_view::summary(
            &m,
            self.breakers(),
            traffic.slowest(now_ms()),
            traffic.failures.snapshot(),
        )
    }

    pub(super) async fn publish_load(self) {
        let mut last = u32::MAX;
        let mut tick = tokio::time::interval(LOAD_PUBLISH_INTERVAL);
        loop {
            tick.tick().await;
            let now = self.0.calls.agent.in_flight();
            if now != last {
                last = now;
                let _ = self
                    .0
                    .driver
                    .try_send(DriverCmd::Update(RecordUpdate::Load { in_flight: now }));
            }
        }
    }
}
