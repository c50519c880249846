//! Equivocation evidence on the runtime: keep a proof this node caught, penalize the
//! equivocator, publish the proof in the node's record; read proofs from other members'
//! records, verify them and penalize too (see [`crate::security::evidence`]).

use super::*;
use crate::security::evidence::{decode_ext, Learned, EQUIVOCATION_FAILURES, EVIDENCE_EXT};
use agentmesh_vote::Equivocation;

impl MeshHandle {
    /// Keeps a proof this node caught, penalizes the equivocator and publishes the proof.
    pub fn report_equivocation(&self, e: Equivocation) {
        if self.0.evidence.learn(e, true) != Learned::New {
            return;
        }
        self.penalize_equivocator(e.node(), &[]);
        if let Some(value) = self.0.evidence.ext_value() {
            let cmd = DriverCmd::Update(RecordUpdate::Ext {
                key: EVIDENCE_EXT.into(),
                value: Some(value),
            });
            let driver = self.0.driver.clone();
            tokio::spawn(async move {
                let _ = driver.send(cmd).await;
            });
        }
    }

    /// Counts [`EQUIVOCATION_FAILURES`] failures against `node`: against each capability in
    /// `caps` (what its record offers: a node that never called it has no observation yet), or
    /// against every capability observed for it when `caps` is empty.
    fn penalize_equivocator(&self, node: NodeId, caps: &[&str]) {
        for _ in 0..EQUIVOCATION_FAILURES {
            if caps.is_empty() {
                self.penalize_node(node);
            }
            for c in caps {
                self.penalize(node, c);
            }
        }
    }

    /// Reads the proofs other members publish; new valid ones penalize their equivocator.
    pub(super) fn adopt_gossiped_evidence(&self, snap: &crate::membership::driver::Snapshot) {
        let me = self.node_id();
        for m in snap.members.iter().filter(|m| m.node_id != me) {
            let Some(bytes) = m.record.as_ref().and_then(|r| r.ext.get(EVIDENCE_EXT)) else {
                continue;
            };
            let list = match decode_ext(bytes) {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(from = %m.node_id, error = %e, "ignoring an evidence extension");
                    continue;
                }
            };
            for e in list {
                match self.0.evidence.learn(e, false) {
                    Learned::New => {
                        tracing::warn!(node = %e.node(), from = %m.node_id, "equivocation proof received by gossip; penalizing the equivocator");
                        let offered: Vec<&str> = snap
                            .members
                            .iter()
                            .find(|x| x.node_id == e.node())
                            .and_then(|x| x.record.as_ref()?.agent.as_ref())
                            .map(|a| a.capabilities.iter().map(|c| c.name.as_str()).collect())
                            .unwrap_or_default();
                        self.penalize_equivocator(e.node(), &offered);
                    }
                    Learned::Invalid => {
                        tracing::warn!(from = %m.node_id, "an equivocation proof in a record does not verify");
                    }
                    Learned::Known | Learned::Full => {}
                }
            }
        }
    }

    /// Proven equivocations known to this node, per equivocator.
    pub fn equivocators(&self) -> BTreeMap<NodeId, usize> {
        self.0.evidence.equivocators()
    }

    /// Counts a dissenting vote that arrived after its quorum's decision.
    pub fn count_late_dissent(&self) {
        self.0.late_dissent.fetch_add(1, Ordering::Relaxed);
    }

    /// Dissenting votes that arrived after their quorum's decision, since start.
    pub fn late_dissent_total(&self) -> u64 {
        self.0.late_dissent.load(Ordering::Relaxed)
    }

    /// The quorum's pool for `req` (see [`Outbound::quorum_candidates`]).
    pub fn quorum_candidates(
        &self,
        req: &CallRequest,
    ) -> Result<crate::call::voters::QuorumPool, CallError> {
        self.0.calls.quorum_candidates(req)
    }

    /// The admission certificate `node` publishes in its signed record (this node's own
    /// included), if held.
    pub fn cert_of(&self, node: &NodeId) -> Option<SignedCert> {
        snapshot(&self.0.calls.gossip)
            .members
            .iter()
            .find(|m| &m.node_id == node)
            .and_then(|m| m.record.as_ref())
            .and_then(|r| r.cert.clone())
    }
}
