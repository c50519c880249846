//! The callee side of `/agentmesh/call/1`: accept inbound call streams from admitted peers,
//! enforce the local in-flight limit, forward to the local agent and stream its answer back.

use crate::agent::client::AgentRequest;
pub use crate::agent::local::{InFlightGuard, LocalAgent};
use crate::contract::{AgentRegistration, CallError, ErrorCode};
use crate::net::call_proto::{
    read_body, read_header, write_resp, CallHeader, RespFrame, ResponseHead, WireError,
    CHUNK_BYTES_MAX,
};
use crate::security::admission::{AdmissionMode, AdmissionTable};
use agentmesh_crypto::NodeId;
use futures::{AsyncWriteExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Inbound call streams served at once (above `max_concurrency`, extra ones are answered
/// `overloaded` quickly; this bounds even those).
pub const INBOUND_CALL_STREAMS_MAX: usize = 4096;
/// Largest answer of known length that is read whole before the head is sent (so head, body
/// and end share one QUIC packet).
pub const SMALL_ANSWER_BYTES_MAX: usize = 16 * 1024;
/// Time a caller has to send the header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the callee needs.
#[derive(Clone)]
pub struct Callee {
    /// The local agent.
    pub agent: Arc<LocalAgent>,
    /// Admission state (calls from unadmitted peers are refused).
    pub admission: Arc<AdmissionTable>,
    /// Membership, for the caller's priority (from its signed record).
    pub gossip: crate::membership::driver::SharedSnapshot,
    /// The resilience settings in force (shedding thresholds).
    pub spec: crate::routing::state::SharedSpec,
    /// Signs quorum votes over answers (`CallHeader::want_vote`).
    pub voter: crate::security::vote::Voter,
    /// This node (for span attributes).
    pub node_id: NodeId,
    /// Inbound and shed counters.
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    /// RBAC (authoritative check here), revocations and the audit log.
    pub sec: Arc<crate::security::Security>,
}

/// What an inbound call turned out to be, for its span and counters.
#[derive(Debug, Default)]
struct InboundNote {
    capability: Option<String>,
    source_agent: Option<String>,
    local_agent: String,
    status: Option<u16>,
    cancelled: bool,
    span: Option<tracing::Span>,
}

impl Callee {
    /// The priority of `node`: its record's claim capped by its certificate (standard if
    /// unknown or uncertified; [`crate::security::effective_priority`]).
    pub fn priority_of(&self, node: &NodeId) -> agentmesh_gossip::record::Priority {
        crate::membership::driver::snapshot(&self.gossip)
            .members
            .iter()
            .find(|m| m.node_id == *node)
            .and_then(|m| {
                m.record
                    .as_ref()
                    .map(|r| crate::security::effective_priority(r))
            })
            .unwrap_or_default()
    }
}

/// Serves the call plane's inbound streams until its endpoint closes. Above
/// [`INBOUND_CALL_STREAMS_MAX`] streams at once, a stream is answered `overloaded` at once.
pub async fn accept_loop(callee: Callee, calls: Arc<crate::net::call_endpoint::CallEndpoint>) {
    let slots = Arc::new(Semaphore::new(INBOUND_CALL_STREAMS_MAX));
    calls
        .accept_loop(move |from, from_text, (mut w, r)| {
            let (c, slots) = (callee.clone(), slots.clone());
            async move {
                let Ok(_permit) = slots.try_acquire_owned() else {
                    tracing::warn!(caller = %from, "too many inbound call streams; refusing one");
                    let e = CallError::new(ErrorCode::Overloaded, "callee has too many calls");
                    let _ = write_resp(&mut w, &RespFrame::Error(WireError::from(&e))).await;
                    let _ = w.close().await;
                    return;
                };
                c.serve(from, &from_text, r, w).await;
            }
        })
        .await
}

impl Callee {
    /// Serves one inbound call stream from `from` (the node id its handshake proved; printed
    /// as `from_text`).
    pub async fn serve(
        &self,
        from: NodeId,
        from_text: &str,
        mut r: quinn::RecvStream,
        mut w: quinn::SendStream,
    ) {
        // Fail closed (`on_full = "refuse_call"`): refuse what the log could not record.
        let slot = match self.sec.audit_reserve() {
            Ok(s) => s,
            Err(e) => {
                let _ = write_resp(&mut w, &RespFrame::Error(WireError::from(&e))).await;
                let _ = w.close().await;
                return;
            }
        };
        let started = tokio::time::Instant::now();
        let mut audit = crate::security::audit::CallRecord {
            time_ms: crate::security::audit::now_unix_ms(),
            side: Some(crate::security::audit::Side::Inbound),
            caller_node: from_text.to_string(),
            ..Default::default()
        };
        let mut note = InboundNote::default();
        let result = self
            .serve_inner(from, &mut r, &mut w, &mut note, &mut audit)
            .await;
        self.observe(&note, &result);
        audit.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok(()) if audit.status.is_some_and(|s| s >= 500) => {
                audit.outcome = "agent_error".into()
            }
            Ok(()) if audit.status.is_some() => audit.outcome = "ok".into(),
            Ok(()) => audit.outcome = "caller_gone".into(),
            Err(e) => {
                audit.outcome = serde_json::to_value(e.code)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let frame = RespFrame::Error(WireError::from(e));
                let _ = write_resp(&mut w, &frame).await;
            }
        }
        let _ = w.flush().await;
        let _ = w.close().await;
        // A stream that never sent a header is not a call; everything else is audited.
        if !audit.capability.is_empty() || !audit.decision.is_empty() {
            self.sec.audit_in(slot, audit).await;
        }
    }

    /// Counts the inbound call and closes its span.
    fn observe(&self, note: &InboundNote, result: &Result<(), CallError>) {
        let outcome = match (result, note.status) {
            (Err(e), _) => crate::obs::metrics::error_outcome(e),
            (Ok(()), _) if note.cancelled => "cancelled".to_string(),
            (Ok(()), Some(s)) => crate::obs::metrics::status_outcome(s).to_string(),
            (Ok(()), None) => "ok".to_string(),
        };
        if let Some(span) = &note.span {
            crate::obs::telemetry::finish(span, &outcome, note.status);
        }
        let Some(cap) = &note.capability else {
            return;
        };
        let source = note
            .source_agent
            .as_deref()
            .unwrap_or(crate::obs::metrics::NONE_LABEL);
        self.metrics
            .record_inbound(source, &note.local_agent, cap, &outcome);
    }

    async fn serve_inner(
        &self,
        from: NodeId,
        r: &mut quinn::RecvStream,
        w: &mut quinn::SendStream,
        note: &mut InboundNote,
        audit: &mut crate::security::audit::CallRecord,
    ) -> Result<(), CallError> {
        let roles = self.admission.caller_roles(&from).await?;
        let header = tokio::time::timeout(HEADER_READ_TIMEOUT, read_header(r))
            .await
            .map_err(|_| CallError::new(ErrorCode::BadRequest, "call header timed out"))?
            .map_err(|e| CallError::new(ErrorCode::BadRequest, format!("call header: {e}")))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(header.deadline_ms);
        note.capability = Some(header.capability.clone());
        note.source_agent = header.caller_agent.clone();
        note.local_agent = self
            .agent
            .name()
            .unwrap_or_else(|| crate::obs::metrics::NONE_LABEL.into());
        let span =
            crate::obs::telemetry::server_span(&header, &from, &self.node_id, &note.local_agent);
        note.span = Some(span.clone());
        // In open meshes nothing is verified, so the header's roles are all there is.
        let roles = match self.admission.mode() {
            AdmissionMode::Open => header.caller_roles.clone(),
            AdmissionMode::Enforced { .. } => roles,
        };
        audit.call_id = hex_id(&header.call_id);
        audit.caller_agent = header.caller_agent.clone();
        audit.capability = header.capability.clone();
        audit.trace_id = crate::security::audit::trace_id(header.traceparent.as_deref());
        audit.callee_node = self.sec.mesh_node_id();
        audit.callee_agent = self.agent.name();
        // The authoritative RBAC check: roles from the verified certificate only.
        match self.sec.check_inbound(&from, &roles, &header.capability) {
            Ok(d) => {
                audit.decision = d.label().into();
                audit.rule = d.rule;
            }
            Err((d, e)) => {
                tracing::warn!(caller = %from, capability = %header.capability, rule = %d.rule, "inbound call denied by policy");
                audit.decision = d.label().into();
                audit.rule = d.rule;
                return Err(e);
            }
        }
        let reg = self.agent.offering(&header.capability)?;
        let shedding = crate::routing::state::spec_now(&self.spec).shedding.clone();
        let priority = self.priority_of(&from);
        crate::resilience::shed::admit(
            priority,
            self.agent.in_flight(),
            reg.max_concurrency,
            &shedding,
        )
        .inspect_err(|_| self.metrics.record_shed(priority))?;
        let _guard = self.agent.try_acquire()?;
        let body = tokio::time::timeout_at(deadline, read_body(r))
            .await
            .map_err(|_| deadline_err())?
            .map_err(|e| CallError::new(ErrorCode::BadRequest, format!("call body: {e}")))?;
        crate::net::call_endpoint::take_eof(r);
        audit.body_sha256 = self.sec.body_hash(&body);
        // What a vote will sign: the question as this node received it, and the terms.
        let subject = header
            .want_vote
            .as_ref()
            .map(|t| self.voter.subject(&header.capability, t, &body));
        let mut req = agent_request(
            &reg,
            &header,
            &audit.caller_node,
            roles,
            body.into(),
            deadline,
        );
        let handoff = crate::obs::telemetry::handoff_span(
            &span,
            &self.node_id,
            &header.capability,
            &reg.name,
            &reg.handler,
        );
        if let Some((tp, ts)) = crate::obs::telemetry::inject(&handoff) {
            req.traceparent = Some(tp);
            req.tracestate = ts.or(req.tracestate);
        }
        // Wait for the agent while watching for the caller to go away (it stops reading, or
        // the connection is lost): either cancels the agent request by dropping it.
        let gone = w.stopped();
        let resp = tokio::select! {
            res = tokio::time::timeout_at(deadline, self.agent.invoke(req)) => {
                let res = res.map_err(|_| deadline_err()).and_then(|r| r);
                match &res {
                    Ok(resp) => {
                        let s = resp.status();
                        crate::obs::telemetry::finish(&handoff, crate::obs::metrics::status_outcome(s), Some(s));
                    }
                    Err(e) => crate::obs::telemetry::finish(&handoff, &crate::obs::metrics::error_outcome(e), e.status),
                }
                res?
            }
            _ = gone => {
                tracing::debug!(caller = %from, "caller went away; agent request cancelled");
                crate::obs::telemetry::finish(&handoff, "cancelled", None);
                note.cancelled = true;
                return Ok(());
            }
        };
        drop(handoff);
        note.status = Some(resp.status());
        audit.status = Some(resp.status());
        let head = RespFrame::Head(ResponseHead {
            status: resp.status(),
            content_type: resp.content_type(),
            agent: reg.name.clone(),
            in_flight: self.agent.in_flight(),
            max_concurrency: reg.max_concurrency,
        });
        // A small answer of known length is read whole first, so that its head, body and end
        // leave in one packet; anything else streams as it comes.
        let small = resp
            .content_length()
            .is_some_and(|n| n <= SMALL_ANSWER_BYTES_MAX as u64);
        let mut body = resp.into_stream();
        let mut held = small.then(Vec::new);
        let mut pending_head = Some(head);
        if let Some(h) = pending_head.take_if(|_| !small) {
            write_resp(w, &h).await.map_err(io_err)?;
        }
        // The answer is kept only when a vote over it was asked for (bounded by the body limit).
        let mut answer = subject.is_some().then(Vec::new);
        loop {
            let next = tokio::time::timeout_at(deadline, body.next())
                .await
                .map_err(|_| deadline_err())?;
            let chunk = match next {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(chunk)) => chunk,
            };
            if let Some(a) = answer.as_mut() {
                if a.len() + chunk.len() > crate::contract::BODY_BYTES_MAX {
                    return Err(CallError::new(
                        ErrorCode::AgentError,
                        "answer exceeds the body limit",
                    ));
                }
                a.extend_from_slice(&chunk);
            }
            match held.as_mut() {
                // hyper holds the agent to its content-length, so this stays small.
                Some(h) if h.len() + chunk.len() <= SMALL_ANSWER_BYTES_MAX => {
                    h.extend_from_slice(&chunk)
                }
                _ => {
                    if let Some(h) = pending_head.take() {
                        write_resp(w, &h).await.map_err(io_err)?;
                    }
                    if let Some(h) = held.take().filter(|h| !h.is_empty()) {
                        write_resp(w, &RespFrame::Data(h)).await.map_err(io_err)?;
                    }
                    for part in chunk.chunks(CHUNK_BYTES_MAX) {
                        write_resp(w, &RespFrame::Data(part.to_vec()))
                            .await
                            .map_err(io_err)?;
                    }
                }
            }
        }
        if let Some(h) = pending_head.take() {
            write_resp(w, &h).await.map_err(io_err)?;
        }
        if let Some(h) = held.filter(|h| !h.is_empty()) {
            write_resp(w, &RespFrame::Data(h)).await.map_err(io_err)?;
        }
        if let (Some(a), Some(subject)) = (answer, subject) {
            let votes = self.voter.sign(header.call_id, &subject, &a);
            for vote in votes.into_iter().take(crate::contract::VOTE_FRAMES_MAX) {
                write_resp(w, &RespFrame::Vote(vote))
                    .await
                    .map_err(io_err)?;
            }
        }
        write_resp(w, &RespFrame::End).await.map_err(io_err)?;
        Ok(())
    }
}

fn deadline_err() -> CallError {
    CallError::new(ErrorCode::DeadlineExceeded, "deadline passed at the callee")
}

fn io_err(e: crate::net::call_proto::ProtoError) -> CallError {
    CallError::new(
        ErrorCode::AgentUnreachable,
        format!("stream to caller: {e}"),
    )
}

/// Builds the agent request for an inbound call.
pub fn agent_request(
    reg: &AgentRegistration,
    header: &CallHeader,
    from: &str,
    roles: Vec<String>,
    body: bytes::Bytes,
    deadline: tokio::time::Instant,
) -> AgentRequest {
    AgentRequest {
        handler: reg.handler.clone(),
        capability: header.capability.clone(),
        body,
        content_type: header.content_type.clone(),
        deadline: deadline.saturating_duration_since(tokio::time::Instant::now()),
        caller_node: from.to_string(),
        caller_agent: header.caller_agent.clone(),
        // Roles come from the verified certificate, not from the header.
        caller_roles: roles,
        call_id: hex_id(&header.call_id),
        traceparent: header.traceparent.clone(),
        tracestate: header.tracestate.clone(),
        chain: Some(crate::resilience::chain::encode(&header.chain)),
        accept: header.accept.clone(),
    }
}

/// Lower-case hex of a call id.
pub fn hex_id(id: &[u8; 16]) -> String {
    // The hex crate, not a `format!` per byte (4.4 % of a callee's CPU at 64 in flight).
    hex::encode(id)
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_id_is_lower_case_hex_of_each_byte() {
        let id: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let slow: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex_id(&id), slow);
    }
}
