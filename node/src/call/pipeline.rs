//! The outbound call pipeline, in the order a call takes it: validate, audit and observe
//! ([`Outbound::call`]); deadline and loop refusal, fallback when every breaker is open
//! (`call_inner`); offers, RBAC and ranking, then attempts with retries (`call_routed`) or a
//! hedged race (`call_hedged`); one attempt to the local agent or over the call plane
//! (`launch`, `attempt`); and the accounting of each finished attempt (`settle`).

use crate::agent::local::LocalAgent;
use crate::call::callee::{self};
use crate::call::caller::{self, Answer, Attempt};
pub use crate::call::support::{idempotent, split_offers, IDEMPOTENT_ATTR};
use crate::call::support::{outbound_record, validate_call, OutboundGuard};
use crate::contract::{CallError, CallRequest, CallResponse, Candidate, ErrorCode};
use crate::membership::driver::{snapshot, SharedSnapshot};
use crate::net::call_proto::CallHeader;
use crate::net::transport::Transport;
use crate::resilience::retry::{classify, hop_budget_ms, transient_status, Retry};
use crate::routing::router::{self, Router};
use crate::routing::settings::CapabilitySettings;
use crate::routing::state::{health_failure, spec_now, Resilience};
use crate::security::admission::AdmissionTable;
use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::Priority;
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often an attempt in flight checks that gossip still sees its peer alive.
pub const PEER_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Largest deadline accepted.
pub const DEADLINE_MAX_MS: u64 = 10 * 60 * 1000;

/// The outbound side of one node: what a call needs to be routed, attempted and accounted.
/// The runtime builds one and shares its parts with the callee and the API.
pub struct Outbound {
    /// This node.
    pub node_id: NodeId,
    /// The swarm and the call plane.
    pub transport: Transport,
    /// The latest gossip snapshot.
    pub gossip: SharedSnapshot,
    /// Admission verdicts per peer.
    pub admission: Arc<AdmissionTable>,
    /// The local agent.
    pub agent: Arc<LocalAgent>,
    /// Load observed per node.
    pub router: Router,
    /// Scoreboard, breakers, limits, budgets and the settings in force.
    pub res: Resilience,
    /// RBAC and audit.
    pub sec: Arc<crate::security::Security>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::obs::metrics::Metrics>,
    /// The traffic matrix.
    pub traffic: Arc<crate::obs::traffic::TrafficTable>,
    /// Set when the node drains: new calls are refused.
    pub shutting_down: AtomicBool,
    /// Outbound calls in flight.
    pub outbound: Arc<AtomicU32>,
    /// This node's priority class (sent with every call; the callee sheds by it).
    pub priority: Priority,
    /// This node's zone and region (routing prefers candidates near them).
    pub locality: crate::routing::locality::Locality,
}

/// One attempt in flight, as a future (boxed so hedged attempts can race in one set).
type AttemptFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = AttemptDone<'a>> + Send + 'a>>;

/// A finished attempt with what [`Outbound`] needs to account for it.
struct AttemptDone<'a> {
    i: usize,
    permit: crate::resilience::breaker::Permit,
    slot: crate::routing::state::LimitSlot<'a>,
    started: tokio::time::Instant,
    result: Result<Answer, CallError>,
    span: tracing::Span,
    attempt_no: u32,
}

impl Outbound {
    /// Routes and performs a call with the capability's policy, breakers, retries and
    /// deadline; when every candidate's breaker is open, the capability's fallback is called
    /// instead (once). The response streams; `served_by` and `attempts` say who answered
    /// after how many tries.
    pub async fn call(&self, req: CallRequest) -> Result<CallResponse, CallError> {
        // One call id for the call, its audit entry and (for quorum) every voter.
        let call_id: [u8; 16] = req.call_id.unwrap_or_else(rand::random);
        if !self.sec.audits() {
            return self.call_observed(req, call_id).await;
        }
        // Fail closed (`on_full = "refuse_call"`): no call runs that cannot be recorded.
        let slot = self.sec.audit_reserve()?;
        let started = tokio::time::Instant::now();
        let time_ms = crate::security::audit::now_unix_ms();
        let rec = crate::security::audit::CallRecord {
            time_ms,
            side: Some(crate::security::audit::Side::Outbound),
            call_id: callee::hex_id(&call_id),
            caller_node: self.node_id.to_string(),
            caller_agent: self.agent.name(),
            capability: req.capability.clone(),
            trace_id: crate::security::audit::trace_id(req.traceparent.as_deref()),
            body_sha256: self.sec.body_hash(&req.body),
            ..Default::default()
        };
        let res = self.call_observed(req, call_id).await;
        let rec = outbound_record(rec, &res, started.elapsed());
        self.sec.audit_in(slot, rec).await;
        res
    }

    /// [`Outbound::call`] with its route span, metrics and traffic summary.
    async fn call_observed(
        &self,
        req: CallRequest,
        call_id: [u8; 16],
    ) -> Result<CallResponse, CallError> {
        let started = tokio::time::Instant::now();
        let source = self
            .agent
            .name()
            .unwrap_or_else(|| crate::obs::metrics::NONE_LABEL.into());
        let mut note = crate::call::observe::CallNote {
            route: crate::obs::telemetry::route_span(crate::obs::telemetry::CallContext {
                capability: &req.capability,
                caller_node: &self.node_id,
                caller_agent: &source,
                traceparent: req.traceparent.as_deref(),
                tracestate: req.tracestate.as_deref(),
            }),
            source,
            target: None,
        };
        let capability = req.capability.clone();
        let result = self.call_inner(req, call_id, &mut note).await;
        crate::call::observe::observe_call(
            &self.metrics,
            &self.traffic,
            &note,
            &capability,
            &result,
            started.elapsed(),
        );
        result
    }

    async fn call_inner(
        &self,
        req: CallRequest,
        call_id: [u8; 16],
        note: &mut crate::call::observe::CallNote,
    ) -> Result<CallResponse, CallError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(CallError::new(
                ErrorCode::Overloaded,
                "node is shutting down",
            ));
        }
        validate_call(&req)?;
        let spec = spec_now(&self.res.spec);
        let settings = spec.for_capability(&req.capability);
        let incoming = match req.chain.as_deref() {
            Some(t) => crate::resilience::chain::decode(t)?,
            None => Vec::new(),
        };
        let deadline_ms = req
            .deadline_ms
            .unwrap_or(settings.deadline.default_ms)
            .min(DEADLINE_MAX_MS);
        if deadline_ms < settings.deadline.min_ms {
            return Err(CallError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "deadline of {deadline_ms} ms is below the minimum of {} ms; not sent",
                    settings.deadline.min_ms
                ),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
        let chain = crate::resilience::chain::extend(
            incoming.clone(),
            self.node_id,
            &req.capability,
            settings.hop_limit,
        )?;
        let _outbound = OutboundGuard::new(self.outbound.clone());
        match self
            .call_routed(&req, settings, chain, deadline, call_id, note)
            .await
        {
            Err(e) if e.code == ErrorCode::CircuitOpen && settings.fallback.is_some() => {
                let fallback = settings.fallback.clone().unwrap_or_default();
                tracing::info!(capability = %req.capability, %fallback, "every breaker open; calling the fallback capability");
                let fb_settings = spec.for_capability(&fallback);
                let chain = crate::resilience::chain::extend(
                    incoming,
                    self.node_id,
                    &fallback,
                    fb_settings.hop_limit,
                )?;
                let mut fb_req = req.clone();
                fb_req.capability = fallback.clone();
                fb_req.prefer = None;
                let mut resp = self
                    .call_routed(&fb_req, fb_settings, chain, deadline, call_id, note)
                    .await?;
                resp.policy = format!("{}; fallback from {}", resp.policy, req.capability);
                Ok(resp)
            }
            other => other,
        }
    }

    async fn call_routed(
        &self,
        req: &CallRequest,
        settings: &CapabilitySettings,
        chain: Vec<(NodeId, String)>,
        deadline: tokio::time::Instant,
        call_id: [u8; 16],
        note: &mut crate::call::observe::CallNote,
    ) -> Result<CallResponse, CallError> {
        let offers = router::offers(&snapshot(&self.gossip).members, self.node_id, req);
        if offers.is_empty() {
            return Err(self.refused(
                &req.capability,
                CallError::new(
                    ErrorCode::NoCapability,
                    format!("no agent offers {}", req.capability),
                ),
            ));
        }
        let total = offers.len();
        let (mut cands, _) = split_offers(offers);
        if let Some(pin) = req.pin {
            cands.retain(|c| c.node_id == pin);
        }
        // Routing never picks a candidate the policy forbids; if none is left, fail fast.
        let (cands, forbidden) = self.sec.split_forbidden(cands, &req.capability);
        if cands.is_empty() && !forbidden.is_empty() {
            return Err(self.sec.forbid_all(&forbidden, &req.capability));
        }
        if cands.is_empty() {
            return Err(self.refused(
                &req.capability,
                CallError::new(
                    ErrorCode::NoEligibleAgent,
                    format!(
                        "{total} agent(s) offer {} but none matches the constraints",
                        req.capability
                    ),
                ),
            ));
        }
        let res = &self.res;
        res.deposit(&req.capability, &settings.retry);
        let header = CallHeader {
            call_id,
            capability: req.capability.clone(),
            attrs: req.attrs.clone(),
            min_proficiency: req.min_proficiency,
            deadline_ms: 0,
            chain,
            traceparent: req.traceparent.clone(),
            tracestate: req.tracestate.clone(),
            caller_node: self.node_id,
            caller_agent: self.agent.name(),
            caller_roles: self.sec.roles(),
            content_type: req.content_type.clone(),
            want_vote: req.want_vote.clone(),
            accept: req.accept.clone(),
        };
        if settings.hedging.enabled && cands.len() > 1 {
            return self
                .call_hedged(req, settings, &cands, &header, deadline, note)
                .await;
        }
        let mut tried: Vec<NodeId> = Vec::new();
        let mut attempts = 0u32;
        let fail = |mut e: CallError, attempts: u32| {
            e.attempts = attempts;
            Err(e)
        };
        loop {
            let launched = self.launch(
                &cands,
                req,
                settings,
                &header,
                deadline,
                &mut tried,
                (note, attempts + 1),
                true,
            );
            let (ranking, attempt) = match launched {
                Ok(l) => l,
                Err(e) => return fail(e, attempts),
            };
            attempts += 1;
            let (i, result) = self.settle(&cands, req, settings, note, attempt.await);
            let cand = &cands[i];
            let err = match result {
                Ok(a) => {
                    let retry_it = transient_status(a.status, &settings.retry)
                        && attempts < settings.retry.max_attempts()
                        && res.withdraw(&req.capability, &settings.retry);
                    if !retry_it {
                        return Ok(CallResponse {
                            status: a.status,
                            content_type: a.content_type,
                            body: a.body,
                            served_by: served_by(&res.id_text(cand.node_id).full, &a.agent),
                            attempts,
                            hedges: 0,
                            policy: ranking.policy.name().to_string(),
                            prefer_fallback: ranking.prefer_fallback,
                            call_id: header.call_id,
                            vote: a.vote,
                        });
                    }
                    CallError {
                        status: Some(a.status),
                        ..CallError::new(ErrorCode::Overloaded, "agent answered 429")
                    }
                }
                Err(e) => {
                    if classify(&e, &settings.retry, idempotent(cand)) == Retry::Permanent
                        || attempts >= settings.retry.max_attempts()
                    {
                        return fail(e, attempts);
                    }
                    if !res.withdraw(&req.capability, &settings.retry) {
                        let mut e = e;
                        e.message.push_str("; not retried: retry budget exhausted");
                        return fail(e, attempts);
                    }
                    e
                }
            };
            let pause = Duration::from_millis(res.backoff_ms(attempts, &settings.retry));
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if pause + Duration::from_millis(settings.deadline.min_ms) >= left {
                let mut e = err;
                e.message.push_str("; not retried: too little time left");
                return fail(e, attempts);
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// A hedged call (gRPC A6): the first attempt goes out at once; while it has not answered,
    /// another goes to an agent not tried yet every hedging delay (the capability's observed
    /// p95), up to `max_hedges`, each paid from the retry budget. A transient failure starts
    /// the next hedge at once; a permanent one ends the call. The first answer wins, and
    /// dropping the others cancels them down the chain.
    async fn call_hedged(
        &self,
        req: &CallRequest,
        settings: &CapabilitySettings,
        cands: &[Candidate],
        header: &CallHeader,
        deadline: tokio::time::Instant,
        note: &mut crate::call::observe::CallNote,
    ) -> Result<CallResponse, CallError> {
        let res = &self.res;
        let delay = res.hedge_delay(&req.capability, &settings.hedging);
        let mut tried: Vec<NodeId> = Vec::new();
        let fail = |mut e: CallError, attempts: u32| {
            e.attempts = attempts;
            Err(e)
        };
        let (ranking, first) = match self.launch(
            cands,
            req,
            settings,
            header,
            deadline,
            &mut tried,
            (note, 1),
            false,
        ) {
            Ok(l) => l,
            Err(e) => return fail(e, 0),
        };
        let mut racing = futures::stream::FuturesUnordered::new();
        racing.push(first);
        let (mut attempts, mut hedges) = (1u32, 0u32);
        let mut hedging = true;
        let mut next_hedge = tokio::time::Instant::now() + delay;
        let mut last_err: Option<CallError> = None;
        loop {
            let may_hedge =
                hedging && hedges < settings.hedging.max_hedges && tried.len() < cands.len();
            let hedge_now;
            tokio::select! {
                Some(done) = racing.next(), if !racing.is_empty() => {
                    let (i, result) = self.settle(cands, req, settings, note, done);
                    match result {
                        Ok(a) if !transient_status(a.status, &settings.retry) => {
                            return Ok(CallResponse {
                                status: a.status,
                                content_type: a.content_type,
                                body: a.body,
                                served_by: served_by(&res.id_text(cands[i].node_id).full, &a.agent),
                                attempts,
                                hedges,
                                policy: ranking.policy.name().to_string(),
                                prefer_fallback: ranking.prefer_fallback,
                                call_id: header.call_id,
                                vote: a.vote,
                            });
                        }
                        Ok(a) => {
                            last_err = Some(CallError {
                                status: Some(a.status),
                                ..CallError::new(ErrorCode::Overloaded, "agent answered 429")
                            });
                        }
                        Err(e) if classify(&e, &settings.retry, idempotent(&cands[i])) == Retry::Permanent => {
                            return fail(e, attempts)
                        }
                        Err(e) => last_err = Some(e),
                    }
                    hedge_now = may_hedge;
                    if !hedge_now && racing.is_empty() {
                        let e = last_err.take().unwrap_or_else(|| {
                            CallError::new(ErrorCode::Internal, "hedged call ended without an answer")
                        });
                        return fail(e, attempts);
                    }
                }
                _ = tokio::time::sleep_until(next_hedge), if may_hedge => hedge_now = true,
            }
            if !hedge_now {
                continue;
            }
            next_hedge = tokio::time::Instant::now() + delay;
            let launched = if res.withdraw(&req.capability, &settings.retry) {
                self.launch(
                    cands,
                    req,
                    settings,
                    header,
                    deadline,
                    &mut tried,
                    (note, attempts + 1),
                    false,
                )
            } else {
                Err(CallError::new(
                    ErrorCode::Overloaded,
                    "not hedged: retry budget exhausted",
                ))
            };
            match launched {
                Ok((_, f)) => {
                    racing.push(f);
                    attempts += 1;
                    hedges += 1;
                }
                Err(e) => {
                    hedging = false;
                    if racing.is_empty() {
                        return fail(last_err.take().unwrap_or(e), attempts);
                    }
                }
            }
        }
    }

    /// Picks the next candidate (untried first; tried ones too if `allow_tried`), takes its
    /// adaptive-limit slot and breaker permit, and returns the attempt as a future.
    #[allow(clippy::too_many_arguments)]
    fn launch<'a>(
        &'a self,
        cands: &'a [Candidate],
        req: &'a CallRequest,
        settings: &CapabilitySettings,
        header: &CallHeader,
        deadline: tokio::time::Instant,
        tried: &mut Vec<NodeId>,
        (note, attempt_no): (&crate::call::observe::CallNote, u32),
        allow_tried: bool,
    ) -> Result<(crate::routing::policies::Ranking, AttemptFuture<'a>), CallError> {
        let res = &self.res;
        let views = res.views(
            cands,
            &self.router,
            &self.agent,
            &settings.breaker,
            &self.locality,
        );
        // Only a call's first attempt advances the round-robin cursor.
        let ranking = res
            .rank(&views, req, settings, attempt_no == 1)
            .map_err(|e| self.refused(&req.capability, e))?;
        let untried = ranking
            .order
            .iter()
            .copied()
            .filter(|&i| !tried.contains(&cands[i].node_id));
        let again = ranking
            .order
            .iter()
            .copied()
            .filter(|&i| allow_tried && tried.contains(&cands[i].node_id));
        let mut limited = false;
        let mut picked = None;
        for i in untried.chain(again) {
            let Some(slot) =
                res.limit_acquire(cands[i].node_id, &req.capability, &settings.adaptive)
            else {
                limited = true;
                continue;
            };
            let permit = if ranking.panic {
                Some(crate::resilience::breaker::Permit::Normal)
            } else {
                res.acquire(cands[i].node_id, &req.capability, &settings.breaker)
            };
            if let Some(p) = permit {
                picked = Some((i, p, slot));
                break;
            }
        }
        let Some((i, permit, slot)) = picked else {
            return Err(self.refused(
                &req.capability,
                if limited {
                    CallError::new(
                        ErrorCode::Overloaded,
                        "every admitting agent is at its adaptive concurrency limit",
                    )
                } else {
                    CallError::new(
                        ErrorCode::CircuitOpen,
                        "no candidate's breaker admits a call now",
                    )
                },
            ));
        };
        let remaining = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64;
        let mut budget_ms = hop_budget_ms(remaining, &settings.deadline)?;
        // An attempt has its own timeout, so one stuck agent does not hold the whole deadline.
        if let Some(t) = res.attempt_timeout_ms(&req.capability, &settings.retry) {
            budget_ms = budget_ms.min(t);
        }
        tried.push(cands[i].node_id);
        self.metrics
            .record_locality(&req.capability, views[i].place.proximity.name());
        let mut h = header.clone();
        h.deadline_ms = budget_ms;
        let cand = &cands[i];
        let span = note.attempt_span(
            &self.node_id,
            req,
            crate::obs::telemetry::AttemptTarget {
                attempt: attempt_no,
                node: &cand.node_id,
                agent: &cand.agent,
                policy: ranking.policy.name(),
                breaker: views[i].breaker.name(),
                local: cand.local,
            },
        );
        (h.traceparent, h.tracestate) = match crate::obs::telemetry::inject(&span) {
            Some((tp, ts)) => (Some(tp), ts.or_else(|| req.tracestate.clone())),
            None => (req.traceparent.clone(), req.tracestate.clone()),
        };
        let started = tokio::time::Instant::now();
        let fut = async move {
            let until = started + Duration::from_millis(budget_ms);
            let result = self.attempt(&cands[i], &h, &req.body, until).await;
            AttemptDone {
                i,
                permit,
                slot,
                started,
                result,
                span,
                attempt_no,
            }
        };
        Ok((ranking, Box::pin(fut)))
    }

    /// Counts a refusal by routing in `/metrics` (reason: the error code) and returns it.
    fn refused(&self, capability: &str, e: CallError) -> CallError {
        if e.code != ErrorCode::BadRequest {
            let reason = serde_json::to_value(e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "internal".into());
            self.metrics.record_refusal(capability, &reason);
        }
        e
    }

    /// Feeds a finished attempt to the breaker, the scoreboard, the adaptive limit and the
    /// hedging latency window.
    fn settle(
        &self,
        cands: &[Candidate],
        req: &CallRequest,
        settings: &CapabilitySettings,
        note: &mut crate::call::observe::CallNote,
        done: AttemptDone<'_>,
    ) -> (usize, Result<Answer, CallError>) {
        let res = &self.res;
        note.attempt_done(
            &self.metrics,
            &done.span,
            req,
            &cands[done.i],
            done.attempt_no,
            &done.result,
        );
        let rtt_ms = done.started.elapsed().as_secs_f64() * 1000.0;
        let node = cands[done.i].node_id;
        let seen = done.result.as_ref().map(|a| a.status).map_err(|e| e.code);
        done.slot
            .finish(rtt_ms, crate::routing::state::limit_sample(&seen));
        match &done.result {
            Ok(_) => {
                res.observe(
                    (node, &req.capability),
                    rtt_ms,
                    true,
                    done.permit,
                    &settings.breaker,
                );
                res.record_latency(&req.capability, rtt_ms);
            }
            Err(e) => {
                tracing::debug!(target_node = %node, code = ?e.code, error = %e.message, "call attempt failed");
                res.observe(
                    (node, &req.capability),
                    rtt_ms,
                    !health_failure(e),
                    done.permit,
                    &settings.breaker,
                );
            }
        }
        (done.i, done.result)
    }

    /// One attempt to one candidate, local (HTTP) or remote (QUIC), until `deadline`.
    async fn attempt(
        &self,
        cand: &Candidate,
        header: &CallHeader,
        body: &bytes::Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, CallError> {
        let attempt = Attempt {
            header: header.clone(),
            body,
            deadline,
            reserve: Duration::ZERO,
        };
        if cand.local {
            let shedding = spec_now(&self.res.spec).shedding.clone();
            crate::resilience::shed::admit(
                self.priority,
                self.agent.in_flight(),
                self.agent.max_concurrency(),
                &shedding,
            )
            .inspect_err(|_| {
                self.metrics.record_shed(self.priority);
                self.metrics.record_refusal(&header.capability, "shed");
            })?;
            caller::call_local(&self.agent, cand, &attempt, self.sec.roles()).await
        } else {
            let call = caller::call_remote(
                &self.transport,
                &self.admission,
                &self.router,
                cand,
                &attempt,
            );
            tokio::select! {
                r = call => r,
                e = self.peer_lost(cand.node_id) => Err(e),
            }
        }
    }

    /// Resolves when gossip stops seeing `node` as alive (suspect, dead, left or gone): the
    /// attempt to it is abandoned at once and retried elsewhere within the same deadline.
    async fn peer_lost(&self, node: NodeId) -> CallError {
        // The first check after one interval: the peer was alive in the snapshot the call
        // was routed on a moment ago (an immediate tick cost a snapshot scan per attempt).
        let first = tokio::time::Instant::now() + PEER_WATCH_INTERVAL;
        let mut tick = tokio::time::interval_at(first, PEER_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let snap = snapshot(&self.gossip);
            let state = snap
                .members
                .iter()
                .find(|m| m.node_id == node)
                .map(|m| m.state);
            if state != Some(agentmesh_gossip::MemberState::Alive) {
                let what = state.map_or("gone".to_string(), |s| format!("{s:?}").to_lowercase());
                return CallError::new(
                    ErrorCode::AgentUnreachable,
                    format!("peer is {what} in gossip: attempt abandoned"),
                );
            }
        }
    }

    /// The live candidates for `req`, ranked by its policy (best first), then those the policy
    /// left out: the voters a quorum and a fork-join pick from.
    pub fn ranked_candidates(&self, req: &CallRequest) -> Result<Vec<Candidate>, CallError> {
        let spec = spec_now(&self.res.spec);
        let settings = spec.for_capability(&req.capability).clone();
        let offers = router::offers(&snapshot(&self.gossip).members, self.node_id, req);
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let (cands, _) = split_offers(offers);
        let res = &self.res;
        let views = res.views(
            &cands,
            &self.router,
            &self.agent,
            &settings.breaker,
            &self.locality,
        );
        let ranking = res.rank(&views, req, &settings, false)?;
        // Candidates the policy left out (below the quality floor, breaker open) come last:
        // a quorum still needs n distinct nodes, and their calls fail or dissent on their own.
        let rest = (0..cands.len()).filter(|i| !ranking.order.contains(i));
        let order = ranking.order.iter().copied().chain(rest);
        Ok(order.map(|i| cands[i].clone()).collect())
    }
}

/// `"<node id>/<agent>"`, as `x-mesh-served-by` carries it (joined, not formatted: once per call).
fn served_by(node: &str, agent: &str) -> String {
    let mut s = String::with_capacity(node.len() + 1 + agent.len());
    s.push_str(node);
    s.push('/');
    s.push_str(agent);
    s
}
