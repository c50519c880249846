//! Mesh-wide audit queries (a child module of `runtime`): serve `/agentmesh/audit/1` to admitted
//! peers whose roles the policy allows [`AUDIT_CAPABILITY`], and ask every live member.
//! Both sides audit each question, allowed or denied.

use super::*;
use crate::net::call_proto::WireError;
use crate::net::transport::AUDIT_PROTOCOL;
use crate::security::audit::{query_files, AuditQuery, CallRecord, Side};
use crate::security::audit_proto::{
    read_answer, read_request, write_answer, write_request, AuditAnswer, AuditRequest,
    AUDIT_CAPABILITY, AUDIT_PEERS_MAX, AUDIT_STREAMS_MAX,
};
use futures::{AsyncWriteExt, FutureExt};

/// How long one member may take to answer a mesh-wide query.
pub const AUDIT_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member waits for the question after the stream opens.
const AUDIT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One member's answer to a mesh-wide query.
#[derive(Debug)]
pub struct NodeAudit {
    /// The member.
    pub node_id: NodeId,
    /// Its entries and whether more matched, or why it did not answer.
    pub result: Result<(Vec<CallRecord>, bool), CallError>,
}

fn code_name(e: &CallError) -> String {
    crate::obs::metrics::error_outcome(e)
}

impl MeshHandle {
    /// Entries of this node's own audit log matching `q` (flushed first).
    pub async fn audit_local(&self, q: AuditQuery) -> Result<Vec<CallRecord>, CallError> {
        let Some(cfg) = self.audit_config() else {
            return Err(CallError::bad_field(
                "audit",
                "this node has no [audit] log configured",
            ));
        };
        self.flush_audit().await;
        let dir = cfg.dir.clone();
        tokio::task::spawn_blocking(move || {
            crate::security::audit::log_files(&dir).and_then(|f| query_files(&f, &q))
        })
        .await
        .map_err(|e| CallError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| CallError::new(ErrorCode::Internal, format!("audit log: {e}")))
    }

    /// Asks every other live member (at most [`AUDIT_PEERS_MAX`]) for entries matching `q`,
    /// in parallel. Members this node's policy forbids are not contacted (`forbidden`).
    pub async fn audit_mesh(&self, q: &AuditQuery) -> Vec<NodeAudit> {
        let req = AuditRequest::from_query(q);
        let snap = snapshot(&self.0.calls.gossip);
        let asks = snap
            .members
            .iter()
            .filter(|m| m.node_id != self.0.calls.node_id && m.state == MemberState::Alive)
            .filter_map(|m| m.record.clone().map(|r| (m.node_id, m.addrs.clone(), r)))
            .take(AUDIT_PEERS_MAX)
            .map(|(id, addrs, rec)| {
                let this = self.clone();
                let req = req.clone();
                async move {
                    let result = this.ask_audit(id, addrs, &rec, &req).await;
                    NodeAudit {
                        node_id: id,
                        result,
                    }
                }
                .boxed()
            });
        futures::future::join_all(asks).await
    }

    /// Asks one member; pre-checks the policy, audits the question on this side.
    async fn ask_audit(
        &self,
        id: NodeId,
        addrs: Vec<String>,
        rec: &agentmesh_gossip::record::NodeRecord,
        req: &AuditRequest,
    ) -> Result<(Vec<CallRecord>, bool), CallError> {
        let started = tokio::time::Instant::now();
        let callee_roles = crate::security::cert_roles(rec);
        let mut audit = CallRecord {
            time_ms: crate::security::audit::now_unix_ms(),
            side: Some(Side::Outbound),
            call_id: hex::encode(rand::random::<[u8; 16]>()),
            caller_node: self.0.calls.sec.mesh_node_id(),
            callee_node: id.to_string(),
            capability: AUDIT_CAPABILITY.into(),
            ..Default::default()
        };
        let d = self
            .0
            .calls
            .sec
            .rbac
            .check(&self.roles(), &callee_roles, AUDIT_CAPABILITY, false);
        audit.decision = d.label().into();
        audit.rule = d.rule.clone();
        let result = if d.permitted {
            tokio::time::timeout(AUDIT_ANSWER_TIMEOUT, self.exchange_audit(id, addrs, req))
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::new(
                        ErrorCode::DeadlineExceeded,
                        "the member did not answer in time",
                    ))
                })
        } else {
            Err(CallError::new(
                ErrorCode::Forbidden,
                format!(
                    "policy forbids roles [{}] to read this member's audit log ({})",
                    self.roles().join(","),
                    d.rule
                ),
            ))
        };
        if let Err(e) = &result {
            if e.code == ErrorCode::Forbidden {
                audit.decision = "deny".into();
            }
        }
        audit.outcome = match &result {
            Ok(_) => "ok".into(),
            Err(e) => code_name(e),
        };
        audit.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.0.calls.sec.audit(audit).await;
        result
    }

    async fn exchange_audit(
        &self,
        id: NodeId,
        addrs: Vec<String>,
        req: &AuditRequest,
    ) -> Result<(Vec<CallRecord>, bool), CallError> {
        let unreachable = |m: String| CallError::new(ErrorCode::AgentUnreachable, m);
        let stream = self
            .open_admitted_stream(id, &addrs, AUDIT_PROTOCOL)
            .await?;
        let (mut r, mut w) = futures::AsyncReadExt::split(stream);
        write_request(&mut w, req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = w.close().await;
        match read_answer(&mut r)
            .await
            .map_err(|e| unreachable(format!("audit answer: {e}")))?
        {
            AuditAnswer::Entries { entries, truncated } => {
                // A member's lines that are not call records are skipped, not trusted.
                let recs = entries
                    .iter()
                    .filter_map(|e| serde_json::from_str::<CallRecord>(e).ok())
                    .collect();
                Ok((recs, truncated))
            }
            AuditAnswer::Error(w) => Err(w.into()),
        }
    }

    /// Serves inbound audit streams until the transport stops.
    pub(super) async fn audit_accept_loop(self, mut incoming: libp2p_stream::IncomingStreams) {
        let slots = Arc::new(tokio::sync::Semaphore::new(AUDIT_STREAMS_MAX));
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(from) = crate::net::transport::node_of(&peer) else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many inbound audit streams; dropping one");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.serve_audit(from, stream).await;
                drop(permit);
            });
        }
    }

    /// Answers one question from `from` and audits it.
    async fn serve_audit(&self, from: NodeId, stream: libp2p::Stream) {
        let started = tokio::time::Instant::now();
        let (mut r, mut w) = futures::AsyncReadExt::split(stream);
        let mut audit = CallRecord {
            time_ms: crate::security::audit::now_unix_ms(),
            side: Some(Side::Inbound),
            call_id: hex::encode(rand::random::<[u8; 16]>()),
            caller_node: from.to_string(),
            callee_node: self.0.calls.sec.mesh_node_id(),
            capability: AUDIT_CAPABILITY.into(),
            ..Default::default()
        };
        let answer = match self.answer_audit(from, &mut r, &mut audit).await {
            Ok(a) => a,
            Err(e) => {
                audit.outcome = code_name(&e);
                AuditAnswer::Error(WireError::from(&e))
            }
        };
        if let AuditAnswer::Entries { .. } = &answer {
            audit.outcome = "ok".into();
        }
        let _ = write_answer(&mut w, &answer).await;
        let _ = w.close().await;
        audit.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.0.calls.sec.audit(audit).await;
    }

    async fn answer_audit<R: futures::AsyncRead + Unpin>(
        &self,
        from: NodeId,
        r: &mut R,
        audit: &mut CallRecord,
    ) -> Result<AuditAnswer, CallError> {
        let roles = self.0.calls.admission.caller_roles(&from).await?;
        let req = tokio::time::timeout(AUDIT_REQUEST_TIMEOUT, read_request(r))
            .await
            .map_err(|_| CallError::new(ErrorCode::BadRequest, "audit request timed out"))?
            .map_err(|e| CallError::new(ErrorCode::BadRequest, format!("audit request: {e}")))?;
        // The authoritative check, with the roles of the verified certificate only.
        match self
            .0
            .calls
            .sec
            .check_inbound(&from, &roles, AUDIT_CAPABILITY)
        {
            Ok(d) => {
                audit.decision = d.label().into();
                audit.rule = d.rule;
            }
            Err((d, e)) => {
                tracing::warn!(caller = %from, rule = %d.rule, "audit query denied by policy");
                audit.decision = d.label().into();
                audit.rule = d.rule;
                return Err(e);
            }
        }
        let mut q = req.to_query();
        let limit = q.limit.unwrap_or(0);
        // One more than asked, so the answer can say whether more matched.
        q.limit = Some(limit + 1);
        let recs = self.audit_local(q).await?;
        let lines = recs
            .iter()
            .filter_map(|c| serde_json::to_string(c).ok())
            .collect();
        Ok(AuditAnswer::entries(lines, limit))
    }
}
