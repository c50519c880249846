//! The node's routing and resilience state: the settings in force (swappable on reload), the
//! scoreboard of observations and breakers, retry budgets, round-robin cursors and the RNG.
//! The decisions themselves are the pure functions of [`crate::routing::policies`], [`crate::resilience::breaker`]
//! and [`crate::resilience::retry`]; this module only holds their state between calls and reads the clock.

use crate::agent::local::LocalAgent;
use crate::contract::{CallError, CallRequest, ErrorCode, RouteCandidate, RouteExplanation};
use crate::resilience::adaptive::{AdaptiveConfig, Sample};
use crate::resilience::breaker::{BreakerConfig, Permit};
use crate::resilience::hedge::{HedgingConfig, LatencyWindow};
use crate::resilience::retry::{RetryBudget, RetryConfig};
use crate::routing::locality::{Locality, LocalityMode, Place, Proximity};
use crate::routing::policies::{
    self as policy, Ask, PolicyName, RankConfig, Ranking, Scoreboard, View,
};
use crate::routing::router::{Candidate, Router};
use crate::routing::settings::{CapabilitySettings, MeshConfig};
use agentmesh_crypto::NodeId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Most capabilities with a retry budget or cursor kept.
pub const RESILIENCE_CAPABILITIES_MAX: usize = 4096;
/// Most node ids whose text [`Resilience::id_text`] keeps; past it the memo starts afresh.
pub const ID_TEXTS_MAX: usize = 16_384;

/// The settings in force, swapped whole on reload; calls in flight keep the `Arc` they took.
pub type SharedSpec = Arc<RwLock<Arc<MeshConfig>>>;

/// The settings in force now.
pub fn spec_now(s: &SharedSpec) -> Arc<MeshConfig> {
    s.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Routing and resilience state of one node.
#[derive(Debug)]
pub struct Resilience {
    /// The settings in force.
    pub spec: SharedSpec,
    scores: Mutex<Scoreboard>,
    budgets: Mutex<HashMap<String, RetryBudget>>,
    cursors: Mutex<HashMap<String, u64>>,
    latencies: Mutex<HashMap<String, LatencyWindow>>,
    /// Each candidate's id text and its short form: base58 costs ~2 µs per id, and every
    /// call needs them (the ranked view, `served_by`); 7.5 % of a caller's CPU at 64 in flight.
    id_texts: Mutex<HashMap<NodeId, IdText>>,
    rng: Mutex<StdRng>,
    epoch: tokio::time::Instant,
}

/// A node id as text, and the short form shown in tables.
#[derive(Debug, Clone)]
pub struct IdText {
    /// The full peer-id text.
    pub full: Arc<str>,
    /// Its last 8 characters ([`NodeId::short`]).
    pub short: Arc<str>,
}

impl Resilience {
    /// Fresh state with `spec`, RNG seeded from `seed`.
    pub fn new(spec: MeshConfig, seed: u64) -> Self {
        Resilience {
            spec: Arc::new(RwLock::new(Arc::new(spec))),
            scores: Mutex::new(Scoreboard::default()),
            budgets: Mutex::new(HashMap::new()),
            cursors: Mutex::new(HashMap::new()),
            latencies: Mutex::new(HashMap::new()),
            id_texts: Mutex::new(HashMap::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Milliseconds since this node started (the clock of every state machine here).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// `id` as text, memoised (bounded by [`ID_TEXTS_MAX`]).
    pub fn id_text(&self, id: NodeId) -> IdText {
        let mut m = lock(&self.id_texts);
        if let Some(t) = m.get(&id) {
            return t.clone();
        }
        if m.len() >= ID_TEXTS_MAX {
            m.clear();
        }
        let full = id.to_string();
        let t = IdText {
            short: Arc::from(&full[full.len().saturating_sub(8)..]),
            full: Arc::from(full),
        };
        m.insert(id, t.clone());
        t
    }

    /// Replaces the settings; calls in flight keep theirs.
    pub fn set_spec(&self, spec: MeshConfig) {
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(spec);
    }

    /// Observed view of each candidate.
    pub fn views(
        &self,
        cands: &[Candidate],
        router: &Router,
        local: &LocalAgent,
        breaker: &BreakerConfig,
        here: &Locality,
    ) -> Vec<View> {
        let now = self.now_ms();
        let mut scores = lock(&self.scores);
        cands
            .iter()
            .map(|c| {
                let load = if c.local {
                    crate::routing::router::Judged {
                        in_flight: 0,
                        reported_in_flight: local.in_flight(),
                        reported_max: local.max_concurrency(),
                        rtt_us: Some(0),
                    }
                } else {
                    router.judge(c)
                };
                let (s, reset) =
                    scores.entry_at(c.node_id, &c.capability.name, c.record.incarnation, now);
                if reset {
                    tracing::info!(node = %c.node_id, capability = %c.capability.name, "member returned with a new incarnation: its scores start afresh");
                }
                let (success_rate, calls) = s.success(now);
                let state = s.breaker.state(now);
                let admits = !breaker.enabled || s.breaker.would_admit(now, breaker);
                let text = self.id_text(c.node_id);
                View {
                    node: text.full,
                    node_short: text.short,
                    agent: c.agent.clone(),
                    proficiency: c.capability.proficiency,
                    cost: c.capability.cost,
                    in_flight: load.in_flight,
                    reported_in_flight: load.reported_in_flight,
                    reported_max: load.reported_max,
                    latency_ms: s.ewma.get(),
                    success_rate,
                    calls,
                    breaker: state,
                    admits,
                    place: Place {
                        // The local agent shares the caller's zone, once the caller knows
                        // its zone; unlabelled, nobody is nearer than anybody.
                        proximity: if c.local && !here.is_empty() {
                            Proximity::Zone
                        } else {
                            Proximity::of(here, &Locality::of_record(&c.record))
                        },
                        rtt_us: load.rtt_us,
                    },
                }
            })
            .collect()
    }

    /// Ranks `cands` for `req`; advances the round-robin cursor if `advance`.
    pub fn rank(
        &self,
        views: &[View],
        req: &CallRequest,
        settings: &CapabilitySettings,
        advance: bool,
    ) -> Result<Ranking, CallError> {
        let policy = req.policy.as_deref().map(PolicyName::parse).transpose()?;
        let ask = Ask {
            policy,
            prefer: req.prefer.as_deref().filter(|p| !p.is_empty()),
            complexity: req.complexity,
            locality: req
                .locality
                .as_deref()
                .map(crate::routing::locality::LocalityMode::parse)
                .transpose()?,
        };
        let cfg = RankConfig {
            default_policy: settings.policy,
            tiers: &settings.quality,
            panic_threshold: settings.breaker.panic_threshold,
            locality: settings.locality,
        };
        let cursor = self.cursor(&req.capability, advance);
        let mut rng = lock(&self.rng);
        policy::rank(views, &ask, cfg, cursor, &mut *rng)
    }

    fn cursor(&self, capability: &str, advance: bool) -> u64 {
        let mut c = lock(&self.cursors);
        if !c.contains_key(capability) && c.len() >= RESILIENCE_CAPABILITIES_MAX {
            c.clear();
        }
        let v = c.entry(capability.to_string()).or_insert(0);
        let out = *v;
        if advance {
            *v = v.wrapping_add(1);
        }
        out
    }

    /// Every breaker this node holds and its state now.
    pub fn breaker_states(
        &self,
    ) -> Vec<(NodeId, String, crate::resilience::breaker::BreakerState)> {
        let now = self.now_ms();
        lock(&self.scores).breakers(now)
    }

    /// Asks the breaker of (`node`, `capability`) for a call slot.
    pub fn acquire(&self, node: NodeId, capability: &str, cfg: &BreakerConfig) -> Option<Permit> {
        let now = self.now_ms();
        lock(&self.scores)
            .entry(node, capability, now)
            .breaker
            .try_acquire(now, cfg)
    }

    /// Records an attempt's outcome for (`node`, `capability`).
    pub fn observe(
        &self,
        (node, capability): (NodeId, &str),
        rtt_ms: f64,
        ok: bool,
        permit: Permit,
        cfg: &BreakerConfig,
    ) {
        let now = self.now_ms();
        let mut rng = lock(&self.rng);
        lock(&self.scores).observe((node, capability), now, rtt_ms, ok, permit, cfg, &mut *rng);
    }

    /// Counts a failure in `node`'s success window for `capability` (every capability when
    /// `None`), not its breaker: a quorum dissent.
    pub fn penalize(&self, node: NodeId, capability: Option<&str>) {
        let now = self.now_ms();
        lock(&self.scores).penalize(node, capability, now);
    }

    /// Records a call against the capability's retry budget.
    pub fn deposit(&self, capability: &str, cfg: &RetryConfig) {
        let now = self.now_ms();
        self.with_budget(capability, now, cfg, |b| b.deposit(now, cfg));
    }

    /// Takes a retry from the capability's budget.
    pub fn withdraw(&self, capability: &str, cfg: &RetryConfig) -> bool {
        let now = self.now_ms();
        self.with_budget(capability, now, cfg, |b| b.withdraw(now, cfg))
    }

    fn with_budget<T>(
        &self,
        capability: &str,
        now: u64,
        cfg: &RetryConfig,
        f: impl FnOnce(&mut RetryBudget) -> T,
    ) -> T {
        let mut m = lock(&self.budgets);
        if !m.contains_key(capability) && m.len() >= RESILIENCE_CAPABILITIES_MAX {
            m.clear();
        }
        f(m.entry(capability.to_string())
            .or_insert_with(|| RetryBudget::new(now, cfg.budget_min_per_s)))
    }

    /// Records a successful attempt's latency for the capability's hedging delay.
    pub fn record_latency(&self, capability: &str, ms: f64) {
        let mut m = lock(&self.latencies);
        if !m.contains_key(capability) && m.len() >= RESILIENCE_CAPABILITIES_MAX {
            m.clear();
        }
        m.entry(capability.to_string()).or_default().push(ms);
    }

    /// The attempt timeout of `capability` now (see
    /// [`crate::resilience::retry::attempt_timeout_ms`]).
    pub fn attempt_timeout_ms(&self, capability: &str, cfg: &RetryConfig) -> Option<u64> {
        if cfg.attempt_timeout_p99_multiple == 0 {
            return None;
        }
        let m = lock(&self.latencies);
        let w = m.get(capability)?;
        crate::resilience::retry::attempt_timeout_ms(w.recent_quantile(0.99), w.len(), cfg)
    }

    /// How long a hedged call waits before its next attempt.
    pub fn hedge_delay(&self, capability: &str, cfg: &HedgingConfig) -> std::time::Duration {
        let ms = lock(&self.latencies)
            .get(capability)
            .map_or(cfg.delay_ms.max(cfg.min_delay_ms), |w| w.delay_ms(cfg));
        std::time::Duration::from_millis(ms)
    }

    /// Takes a slot under `node`'s adaptive concurrency limit (always granted when the
    /// capability does not enable it); `None` when the agent is at its limit.
    pub fn limit_acquire(
        &self,
        node: NodeId,
        capability: &str,
        cfg: &AdaptiveConfig,
    ) -> Option<LimitSlot<'_>> {
        if cfg.enabled {
            let now = self.now_ms();
            if !lock(&self.scores)
                .entry(node, capability, now)
                .limiter
                .try_acquire(cfg)
            {
                return None;
            }
        }
        Some(LimitSlot {
            res: self,
            node,
            capability: capability.to_string(),
            cfg: cfg.enabled.then(|| cfg.clone()),
        })
    }

    fn limit_release(
        &self,
        (node, capability): (NodeId, &str),
        cfg: &AdaptiveConfig,
        rtt_ms: f64,
        sample: Sample,
    ) {
        let now = self.now_ms();
        lock(&self.scores)
            .entry(node, capability, now)
            .limiter
            .release(cfg, rtt_ms, sample);
    }

    /// A full-jitter backoff before retry number `retry`, in ms.
    pub fn backoff_ms(&self, retry: u32, cfg: &RetryConfig) -> u64 {
        let mut rng = lock(&self.rng);
        crate::resilience::retry::backoff_ms(retry, cfg, &mut *rng)
    }

    /// Explains the ranking without advancing anything.
    pub fn explain(
        &self,
        cands: &[Candidate],
        ineligible: &[(Candidate, String)],
        views: &[View],
        req: &CallRequest,
        settings: &CapabilitySettings,
    ) -> Result<RouteExplanation, CallError> {
        let mut rows = Vec::new();
        let mut policy = req
            .policy
            .clone()
            .unwrap_or_else(|| settings.policy.name().to_string());
        match self.rank(views, req, settings, false) {
            Ok(r) => {
                policy = r.policy.name().to_string();
                if r.panic {
                    policy.push_str(" (panic mode)");
                }
                for (pos, &i) in r.order.iter().enumerate() {
                    let mut reason = r.reasons[i].clone();
                    if cands[i].local {
                        reason.push_str("; local agent (no network hop)");
                    }
                    rows.push(row(&cands[i], &views[i], Some(pos as u32 + 1), reason));
                }
                for i in (0..views.len()).filter(|i| !r.order.contains(i)) {
                    rows.push(row(&cands[i], &views[i], None, r.reasons[i].clone()));
                }
                if let Some(f) = r.prefer_fallback {
                    policy.push_str(&format!("; {f}"));
                }
            }
            Err(e) if e.code == ErrorCode::BadRequest => return Err(e),
            Err(e) => {
                for (c, v) in cands.iter().zip(views) {
                    let reason = format!("ineligible: {} ({})", e.message, v.breaker.name());
                    rows.push(row(c, v, None, reason));
                }
                if let (ErrorCode::CircuitOpen, Some(f)) = (e.code, &settings.fallback) {
                    policy.push_str(&format!("; every breaker open: calls go to fallback {f}"));
                }
            }
        }
        for (c, why) in ineligible {
            rows.push(RouteCandidate {
                rank: None,
                node_id: c.node_id.to_string(),
                agent: c.agent.clone(),
                proficiency: c.capability.proficiency,
                cost: c.capability.cost,
                in_flight: 0,
                reported_in_flight: None,
                latency_ms: None,
                success_rate: None,
                breaker: "closed".into(),
                adaptive_limit: None,
                zone: None,
                region: None,
                proximity: None,
                rtt_us: None,
                reason: format!("ineligible: {why}"),
            });
            let l = Locality::of_record(&c.record);
            if let Some(r) = rows.last_mut() {
                (r.zone, r.region) = labels(&l);
            }
        }
        if settings.adaptive.enabled {
            let now = self.now_ms();
            let mut scores = lock(&self.scores);
            for (r, c) in rows.iter_mut().zip(cands) {
                let l = &scores.entry(c.node_id, &c.capability.name, now).limiter;
                r.adaptive_limit =
                    Some(format!("{}/{}", l.in_flight(), l.limit(&settings.adaptive)));
            }
        }
        let locality = req
            .locality
            .as_deref()
            .and_then(|m| LocalityMode::parse(m).ok())
            .unwrap_or(settings.locality);
        Ok(RouteExplanation {
            capability: req.capability.clone(),
            policy,
            locality: locality.name().into(),
            candidates: rows,
        })
    }
}

/// A locality's labels as optional fields.
fn labels(l: &Locality) -> (Option<String>, Option<String>) {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    (some(&l.zone), some(&l.region))
}

fn row(c: &Candidate, v: &View, rank: Option<u32>, reason: String) -> RouteCandidate {
    let (zone, region) = labels(&Locality::of_record(&c.record));
    RouteCandidate {
        zone,
        region,
        proximity: Some(v.place.proximity.name().into()),
        rtt_us: v.place.rtt_us,
        rank,
        node_id: c.node_id.to_string(),
        agent: c.agent.clone(),
        proficiency: c.capability.proficiency,
        cost: c.capability.cost,
        in_flight: v.in_flight,
        reported_in_flight: Some(v.reported_in_flight),
        latency_ms: v.latency_ms.map(|l| (l * 10.0).round() / 10.0),
        success_rate: v.success_rate.map(|s| (s * 1000.0).round() / 1000.0),
        breaker: v.breaker.name().into(),
        adaptive_limit: None,
        reason,
    }
}

/// A slot under an agent's adaptive concurrency limit. [`LimitSlot::finish`] gives it back
/// with what the attempt showed; dropping it (a cancelled attempt) gives it back learning
/// nothing.
pub struct LimitSlot<'a> {
    res: &'a Resilience,
    node: NodeId,
    capability: String,
    cfg: Option<AdaptiveConfig>,
}

impl LimitSlot<'_> {
    /// Releases the slot with the attempt's latency and outcome.
    pub fn finish(mut self, rtt_ms: f64, sample: Sample) {
        if let Some(cfg) = self.cfg.take() {
            self.res
                .limit_release((self.node, &self.capability), &cfg, rtt_ms, sample);
        }
    }
}

impl Drop for LimitSlot<'_> {
    fn drop(&mut self) {
        if let Some(cfg) = self.cfg.take() {
            self.res
                .limit_release((self.node, &self.capability), &cfg, 0.0, Sample::Ignored);
        }
    }
}

/// What an attempt's result says to the adaptive limit: an overload, a timeout or an
/// unreachable agent is a drop; an answer is judged by its latency; anything else says nothing.
pub fn limit_sample(result: &Result<u16, ErrorCode>) -> Sample {
    match result {
        Ok(429) | Ok(503) => Sample::Dropped,
        Ok(_) => Sample::Answered,
        Err(ErrorCode::Overloaded | ErrorCode::DeadlineExceeded | ErrorCode::AgentUnreachable) => {
            Sample::Dropped
        }
        Err(_) => Sample::Ignored,
    }
}

/// Whether a failed attempt says something about the agent's health (breaker, success rate).
/// Overload, refusals and bad requests do not: the agent is fine, it said no.
pub fn health_failure(e: &CallError) -> bool {
    matches!(
        e.code,
        ErrorCode::AgentError | ErrorCode::AgentUnreachable | ErrorCode::DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_the_id_printed_and_stays_bounded() {
        let res = Resilience::new(MeshConfig::default(), 1);
        for i in 0..3u8 {
            let id = NodeId([i; 32]);
            let t = res.id_text(id);
            assert_eq!(&*t.full, id.to_string());
            assert_eq!(&*t.short, id.short());
            // The memo answers the same text again.
            assert_eq!(&*res.id_text(id).full, id.to_string());
        }
        for i in 0..(ID_TEXTS_MAX + 10) as u32 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            let _ = res.id_text(NodeId(b));
        }
        assert!(lock(&res.id_texts).len() <= ID_TEXTS_MAX);
    }
}
