//! The runtime's security tasks and commands (a child module of `runtime`, so it reaches the
//! handle's internals): mirror revocations from gossip and cut revoked peers off, adopt and
//! republish the newest root-signed policy, pick up a renewed certificate, warn before the
//! own certificate expires.

use super::*;
use crate::security::witness::{AUDIT_CHECKPOINT_EXT, CHECKPOINT_PUBLISH_INTERVAL_MS};
use crate::security::POLICY_EXT;
use agentmesh_crypto::SignedRevocation;

/// Period of the security loop.
pub const SECURITY_TICK: Duration = Duration::from_millis(250);
/// Ticks between certificate file checks (5 s).
const CERT_CHECK_TICKS: u64 = 20;
/// Ticks between expiry warnings (1 h).
const EXPIRY_WARN_TICKS: u64 = 14_400;
/// Distinct invalid policy envelopes remembered (not re-verified).
const BAD_POLICIES_MAX: usize = 64;

impl MeshHandle {
    pub(super) async fn security_loop(self) {
        let mut tick = tokio::time::interval(SECURITY_TICK);
        let mut bad_policies: std::collections::BTreeSet<[u8; 32]> = Default::default();
        let mut n: u64 = 0;
        let mut published: Option<(crate::security::audit::LatestCheckpoint, u64)> = None;
        loop {
            tick.tick().await;
            let snap = snapshot(&self.0.calls.gossip);
            self.witness_checkpoints(&snap);
            self.publish_checkpoint(&mut published).await;
            for r in &snap.revocations {
                // The gossip state machine verified it before holding it.
                let Ok(body) = r.0.decode_unverified() else {
                    continue;
                };
                if self.0.calls.sec.mark_revoked(body.node_id) {
                    self.persist(r);
                    self.cut_off(body.node_id);
                }
            }
            self.adopt_gossiped_policy(&snap, &mut bad_policies).await;
            self.adopt_gossiped_evidence(&snap);
            if n.is_multiple_of(CERT_CHECK_TICKS) {
                self.reload_cert().await;
            }
            if n.is_multiple_of(EXPIRY_WARN_TICKS) {
                self.0.calls.sec.check_cert_expiry(now_ms() / 1000);
            }
            n += 1;
        }
    }

    /// Keeps the newest audit checkpoint each other member publishes in its record.
    fn witness_checkpoints(&self, snap: &crate::membership::driver::Snapshot) {
        let now = now_ms();
        for m in &snap.members {
            if m.node_id == self.0.calls.node_id {
                continue;
            }
            if let Some(b) = m
                .record
                .as_ref()
                .and_then(|r| r.ext.get(AUDIT_CHECKPOINT_EXT))
            {
                self.0.calls.sec.witness.observe(&m.node_id, b, now);
            }
        }
    }

    /// Puts the own newest audit checkpoint in the record (at most every
    /// [`CHECKPOINT_PUBLISH_INTERVAL_MS`]), for the other members to witness.
    async fn publish_checkpoint(
        &self,
        published: &mut Option<(crate::security::audit::LatestCheckpoint, u64)>,
    ) {
        let Some(latest) = self
            .0
            .calls
            .sec
            .audit
            .as_ref()
            .and_then(|a| a.latest_checkpoint())
        else {
            return;
        };
        let now = now_ms();
        if let Some((p, at)) = published {
            if *p == latest || now.saturating_sub(*at) < CHECKPOINT_PUBLISH_INTERVAL_MS {
                return;
            }
        }
        let sent = self
            .0
            .driver
            .send(DriverCmd::Update(RecordUpdate::Ext {
                key: AUDIT_CHECKPOINT_EXT.into(),
                value: Some(crate::security::witness::encode(&latest)),
            }))
            .await;
        if sent.is_ok() {
            *published = Some((latest, now));
        }
    }

    /// The newest audit checkpoint this node witnessed of `node` (`GET /v1/audit/witnessed`).
    pub fn witnessed(&self, node: &NodeId) -> Option<crate::security::witness::Seen> {
        self.0.calls.sec.witness.get(node)
    }

    /// Re-applies the revocations kept on disk: refuse and disconnect the revoked nodes, and
    /// hand the revocations to gossip so they spread again. Called once at start.
    pub(super) async fn reapply_persisted_revocations(&self) {
        for r in self.0.calls.sec.persisted_revocations() {
            if let Ok(body) = r.0.decode_unverified() {
                self.cut_off(body.node_id);
            }
            let _ = self
                .0
                .driver
                .send(DriverCmd::Revoke(Arc::new(r.clone())))
                .await;
        }
    }

    fn persist(&self, r: &SignedRevocation) {
        if let Err(e) = self.0.calls.sec.persist_revocation(r) {
            tracing::warn!(error = %e, "could not persist a revocation; it holds until restart");
        }
    }

    /// Drops a revoked node: its connection, its admission and (via gossip) its records.
    fn cut_off(&self, id: NodeId) {
        tracing::warn!(node = %id, "node revoked by the mesh root; disconnecting it");
        self.0
            .calls
            .admission
            .set_theirs(id, PeerVerdict::Rejected("revoked by the mesh root".into()));
        if let Ok(peer) = id.to_peer_id() {
            self.0.calls.transport.disconnect(peer);
        }
    }

    async fn adopt_gossiped_policy(
        &self,
        snap: &driver::Snapshot,
        bad: &mut std::collections::BTreeSet<[u8; 32]>,
    ) {
        let mine = self.0.calls.sec.signed_policy();
        for m in &snap.members {
            let Some(b) = m.record.as_ref().and_then(|r| r.ext.get(POLICY_EXT)) else {
                continue;
            };
            if mine.as_deref() == Some(b.as_slice()) {
                continue;
            }
            let digest = crate::security::audit::body_hash(b);
            let key: [u8; 32] = hex::decode(&digest)
                .ok()
                .and_then(|v| v.try_into().ok())
                .unwrap_or([0; 32]);
            if bad.contains(&key) {
                continue;
            }
            match self.0.calls.sec.adopt_policy(b) {
                Ok(Some(_)) => {
                    self.publish_policy().await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(from = %m.node_id, error = %e, "ignoring an invalid gossiped policy");
                    if bad.len() < BAD_POLICIES_MAX {
                        bad.insert(key);
                    }
                }
            }
        }
    }

    async fn publish_policy(&self) {
        if let Some(b) = self.0.calls.sec.signed_policy() {
            let _ = self
                .0
                .driver
                .send(DriverCmd::Update(RecordUpdate::Ext {
                    key: POLICY_EXT.into(),
                    value: Some(b),
                }))
                .await;
        }
    }

    /// Re-reads the certificate file; a different, valid certificate for this node replaces
    /// the current one in the record and in future admission exchanges.
    async fn reload_cert(&self) {
        let Some(path) = self.0.calls.sec.cfg.cert_file.clone() else {
            return;
        };
        let Some((root, mesh_id)) = self.0.calls.sec.mesh.clone() else {
            return;
        };
        let Ok(c) = crate::security::certs::load_cert_file(&path) else {
            return;
        };
        if self.0.calls.sec.cert().as_ref() == Some(&c) {
            return;
        }
        match c.verify(&root, &mesh_id, &self.0.calls.node_id, now_ms() / 1000) {
            Ok(claimed) => {
                tracing::info!(not_after = claimed.not_after, roles = ?claimed.roles, "renewed admission certificate picked up");
                self.0.calls.sec.set_cert(c.clone());
                let _ = self
                    .0
                    .driver
                    .send(DriverCmd::Update(RecordUpdate::Cert(Some(c))))
                    .await;
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "certificate file changed but is not valid; keeping the current one")
            }
        }
    }

    /// Applies and spreads a root-signed revocation.
    pub async fn revoke(&self, r: SignedRevocation) -> Result<NodeId, CallError> {
        let id = self.0.calls.sec.verify_revocation(&r)?;
        if self.0.calls.sec.mark_revoked(id) {
            self.persist(&r);
            self.cut_off(id);
        }
        self.0
            .driver
            .send(DriverCmd::Revoke(Arc::new(r)))
            .await
            .map_err(|_| CallError::new(ErrorCode::Internal, "gossip driver stopped"))?;
        Ok(id)
    }

    /// Adopts a root-signed policy and spreads it in this node's record. `Ok(None)`: not
    /// newer than the one in force.
    pub async fn push_policy(&self, signed: &[u8]) -> Result<Option<u64>, CallError> {
        let v = self
            .0
            .calls
            .sec
            .adopt_policy(signed)
            .map_err(|e| CallError::bad_field("body", e))?;
        if v.is_some() {
            self.publish_policy().await;
        }
        Ok(v)
    }

    /// The security status (`GET /v1/security`).
    pub fn security_report(&self) -> serde_json::Value {
        self.0.calls.sec.report(now_ms() / 1000)
    }

    /// Security counters as `(metric name, value)` for `/metrics`.
    pub fn security_metrics(&self) -> Vec<(&'static str, u64)> {
        self.0.calls.sec.metrics()
    }

    /// Security totals for `/metrics`.
    pub(super) fn security_scrape(&self) -> crate::obs::metrics::SecurityScrape {
        let named: BTreeMap<&str, u64> = self.0.calls.sec.metrics().into_iter().collect();
        let get = |k: &str| named.get(k).copied().unwrap_or(0);
        crate::obs::metrics::SecurityScrape {
            rbac_allowed: get("agentmesh_rbac_allowed_total"),
            rbac_denied: self.0.calls.sec.rbac.counters.denied_series(),
            rbac_denied_inbound: get("agentmesh_rbac_denied_inbound_total"),
            rbac_audit_only_denied: get("agentmesh_rbac_audit_only_denied_total"),
            admission_refused: self.admission_rejections(),
            revoked_nodes: get("agentmesh_revoked_nodes"),
            audit_entries: get("agentmesh_audit_entries_total"),
            audit_dropped: get("agentmesh_audit_dropped_total"),
            audit_checkpoints: get("agentmesh_audit_checkpoints_total"),
        }
    }

    /// The audit log settings, if the log is on.
    pub fn audit_config(&self) -> Option<crate::security::audit::AuditConfig> {
        self.0.calls.sec.audit.as_ref().map(|a| a.config().clone())
    }

    /// Writes a checkpoint and fsyncs the audit log.
    pub async fn flush_audit(&self) {
        if let Some(a) = &self.0.calls.sec.audit {
            a.flush().await;
        }
    }

    /// This node's roles (from its current certificate).
    pub fn roles(&self) -> Vec<String> {
        self.0.calls.sec.roles()
    }
}
