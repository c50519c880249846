//! Prometheus metrics (prometheus-client): one registry per node, served at `GET /metrics` on
//! the local API as OpenMetrics text or the Prometheus text format, by the `Accept` header
//! ([`crate::obs::exposition`]).
//!
//! Families (all prefixed `agentmesh_`):
//! - `calls_total{source_agent,target_agent,capability,outcome}`: routed calls made by this node;
//!   `call_duration_seconds{source_agent,target_agent,capability}`: their latency (to the answer
//!   head, retries included);
//! - `call_attempts_total{capability,outcome}`, `call_retries_total{capability}`;
//! - `inbound_calls_total{source_agent,capability,outcome}`: calls served for other nodes;
//! - `shed_total{priority}`, `overloaded_total`, `in_flight{direction}`;
//! - `routing_locality_total{capability,proximity}`: attempts by how near their agent was
//!   (`zone` also counts this node's own agent; without labels everything is `remote`);
//! - `breaker_state{target_node,target_agent,capability}`: 0 closed, 1 half open, 2 open (this
//!   node's view; one breaker per agent and capability);
//! - `routing_refusals_total{capability,reason}`: calls routing refused without reaching an
//!   agent (`no_eligible_agent`, `overloaded`, `shed`, `circuit_open`, `no_capability`, …);
//! - `gossip_members{state}`, `gossip_messages_total{direction}`, `gossip_bytes_total{direction}`,
//!   `gossip_suspicions_total`, `gossip_refutations_total`;
//! - `rbac_allowed_total`, `rbac_denied_total{caller_role,capability}` (caller pre-check and
//!   callee check), `rbac_denied_inbound_total`, `rbac_audit_only_denied_total`;
//!   `admission_refused_total` (connections refused at admission), `revoked_nodes`;
//!   `audit_entries_total`, `audit_dropped_total`, `audit_checkpoints_total`;
//! - `build_info{version,profile}` = 1.
//!
//! **Label cardinality is bounded.** Agent names and capabilities come from the mesh, so a
//! mesh with many agents could grow the series without end. At most [`METRIC_PAIRS_MAX`]
//! distinct `(source, target, capability)` triples, [`METRIC_CAPABILITIES_MAX`] capabilities
//! and [`METRIC_BREAKERS_MAX`] breaker targets get their own series; anything past a limit is
//! counted under the label value [`OTHER_LABEL`], so totals stay exact.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Most `(source agent, target agent, capability)` triples with series of their own.
pub const METRIC_PAIRS_MAX: usize = 256;
/// Most capabilities with series of their own (attempts, retries).
pub const METRIC_CAPABILITIES_MAX: usize = 128;
/// Most breaker targets reported.
pub const METRIC_BREAKERS_MAX: usize = 256;
/// The label value that stands for everything past a cardinality limit.
pub const OTHER_LABEL: &str = "other";
/// The label value for "no agent" (a node without agent, or a call that reached none).
pub const NONE_LABEL: &str = "none";
/// Longest label value kept; longer values are cut (agent names are ≤ 128 bytes anyway).
pub const LABEL_LEN_MAX: usize = 128;
/// Latency buckets, in seconds: 0.5 ms to 30 s.
pub const LATENCY_BUCKETS_S: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// The content type of [`Metrics::encode`]'s text (`/metrics` may convert it:
/// [`crate::obs::exposition`]).
pub const CONTENT_TYPE: &str = crate::obs::exposition::OPENMETRICS_CONTENT_TYPE;

/// Labels of `calls_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The calling agent (this node's agent).
    pub source_agent: String,
    /// The agent that answered (the last one tried).
    pub target_agent: String,
    /// Capability.
    pub capability: String,
    /// `ok`, `agent_error` (5xx) or an error code (`deadline_exceeded`, `circuit_open`, …).
    pub outcome: String,
}

/// Labels of the per-pair latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    /// The calling agent.
    pub source_agent: String,
    /// The agent that answered.
    pub target_agent: String,
    /// Capability.
    pub capability: String,
}

/// Labels of the inbound calls counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboundLabels {
    /// The calling agent, as its node named it.
    pub source_agent: String,
    /// Capability.
    pub capability: String,
    /// As for [`CallLabels::outcome`].
    pub outcome: String,
}

/// Labels of per-capability counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabels {
    /// Capability.
    pub capability: String,
}

/// Labels of per-capability counters with an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapOutcomeLabels {
    /// Capability.
    pub capability: String,
    /// Outcome of the attempt.
    pub outcome: String,
}

/// A single label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    /// `experimental | standard | critical`.
    pub priority: String,
}

/// A direction label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    /// `in | out` (gossip) or `inbound | outbound` (calls).
    pub direction: String,
}

/// A member state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `alive | suspect | dead | left`.
    pub state: String,
}

/// Labels of the breaker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// Target node id.
    pub target_node: String,
    /// Its agent.
    pub target_agent: String,
    /// The capability the breaker guards.
    pub capability: String,
}

/// Labels of the routing refusal counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The capability asked for.
    pub capability: String,
    /// Why routing refused: the error code.
    pub reason: String,
}

/// Labels of the locality counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocalityLabels {
    /// The capability called.
    pub capability: String,
    /// Where the attempt went: `zone`, `region` or `remote`.
    pub proximity: String,
}

/// Labels of the RBAC denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    /// The caller's certified roles, sorted and joined with `,` (`none` without roles).
    pub caller_role: String,
    /// Capability (or pseudo-capability such as `mesh.audit`).
    pub capability: String,
}

/// Security totals read at scrape time (RBAC, admission, audit log).
#[derive(Debug, Clone, Default)]
pub struct SecurityScrape {
    /// Calls the policy allowed.
    pub rbac_allowed: u64,
    /// `(caller roles, capability, denials)` series.
    pub rbac_denied: Vec<(String, String, u64)>,
    /// Inbound calls this node refused as callee.
    pub rbac_denied_inbound: u64,
    /// Calls that would have been denied (audit_only mode).
    pub rbac_audit_only_denied: u64,
    /// Connections refused at admission.
    pub admission_refused: u64,
    /// Nodes revoked by the mesh root, as this node knows.
    pub revoked_nodes: u64,
    /// Audit entries written.
    pub audit_entries: u64,
    /// Audit entries dropped (queue full or writer failed).
    pub audit_dropped: u64,
    /// Signed audit checkpoints written.
    pub audit_checkpoints: u64,
}

/// Labels of `build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// `debug | release`.
    pub profile: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// Values read at scrape time from the rest of the node.
#[derive(Debug, Clone, Default)]
pub struct ScrapeState {
    /// Calls in flight to the local agent.
    pub in_flight_inbound: u32,
    /// Routed calls this node is making now.
    pub in_flight_outbound: u32,
    /// Calls refused because the agent was at `max_concurrency`.
    pub overloaded_total: u64,
    /// Members per state name.
    pub members: Vec<(&'static str, u64)>,
    /// The gossip state machine's counters.
    pub gossip: agentmesh_gossip::Stats,
    /// `(node id, agent, capability, state 0/1/2)` of each breaker this node holds.
    pub breakers: Vec<(String, String, String, i64)>,
    /// Security totals.
    pub security: SecurityScrape,
}

/// The node's metric families and their cardinality guards.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: HistFamily<PairLabels>,
    attempts: Family<CapOutcomeLabels, Counter>,
    retries: Family<CapLabels, Counter>,
    inbound: Family<InboundLabels, Counter>,
    shed: Family<PriorityLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    locality: Family<LocalityLabels, Counter>,
    overloaded: Counter,
    in_flight: Family<DirLabels, Gauge>,
    breaker: Family<BreakerLabels, Gauge>,
    members: Family<StateLabels, Gauge>,
    gossip_messages: Family<DirLabels, Counter>,
    gossip_bytes: Family<DirLabels, Counter>,
    suspicions: Counter,
    refutations: Counter,
    rbac_allowed: Counter,
    rbac_denied: Family<DeniedLabels, Counter>,
    rbac_denied_inbound: Counter,
    rbac_audit_only_denied: Counter,
    admission_refused: Counter,
    revoked_nodes: Gauge,
    audit_entries: Counter,
    audit_dropped: Counter,
    audit_checkpoints: Counter,
    input_rejected: Family<CapLabels, Counter>,
    schema_unavailable: Counter,
    pairs: Mutex<HashSet<(String, String, String)>>,
    caps: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `s` cut to [`LABEL_LEN_MAX`] bytes on a char boundary.
fn label(s: &str) -> String {
    crate::net::call_proto::truncate(s, LABEL_LEN_MAX)
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentmesh");
        let m = Metrics {
            registry: Registry::default(),
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            attempts: Family::default(),
            retries: Family::default(),
            inbound: Family::default(),
            shed: Family::default(),
            refusals: Family::default(),
            locality: Family::default(),
            overloaded: Counter::default(),
            in_flight: Family::default(),
            breaker: Family::default(),
            members: Family::default(),
            gossip_messages: Family::default(),
            gossip_bytes: Family::default(),
            suspicions: Counter::default(),
            refutations: Counter::default(),
            rbac_allowed: Counter::default(),
            rbac_denied: Family::default(),
            rbac_denied_inbound: Counter::default(),
            rbac_audit_only_denied: Counter::default(),
            admission_refused: Counter::default(),
            revoked_nodes: Gauge::default(),
            audit_entries: Counter::default(),
            audit_dropped: Counter::default(),
            audit_checkpoints: Counter::default(),
            input_rejected: Family::default(),
            schema_unavailable: Counter::default(),
            pairs: Mutex::new(HashSet::new()),
            caps: Mutex::new(HashSet::new()),
        };
        registry.register(
            "calls",
            "Routed calls made by this node, by final outcome",
            m.calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Latency of routed calls to the answer head, retries included",
            m.latency.clone(),
        );
        registry.register(
            "call_attempts",
            "Attempts of routed calls",
            m.attempts.clone(),
        );
        registry.register("call_retries", "Retries of routed calls", m.retries.clone());
        registry.register(
            "inbound_calls",
            "Calls this node served for other nodes",
            m.inbound.clone(),
        );
        registry.register("shed", "Calls shed by caller priority", m.shed.clone());
        registry.register(
            "routing_refusals",
            "Calls routing refused without an agent answering, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "routing_locality",
            "Attempts sent by this node, by how near the agent was (zone, region, remote)",
            m.locality.clone(),
        );
        registry.register(
            "overloaded",
            "Calls refused because the agent was at max_concurrency",
            m.overloaded.clone(),
        );
        registry.register(
            "in_flight",
            "Calls in flight (inbound: to the local agent; outbound: routed by this node)",
            m.in_flight.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per target as this node sees it: 0 closed, 1 half open, 2 open",
            m.breaker.clone(),
        );
        registry.register(
            "gossip_members",
            "Members known, by state",
            m.members.clone(),
        );
        registry.register(
            "gossip_messages",
            "Gossip frames in and out",
            m.gossip_messages.clone(),
        );
        registry.register(
            "gossip_bytes",
            "Gossip bytes in and out",
            m.gossip_bytes.clone(),
        );
        registry.register(
            "gossip_suspicions",
            "Suspicions this node raised",
            m.suspicions.clone(),
        );
        registry.register(
            "gossip_refutations",
            "Suspicions about this node that it refuted",
            m.refutations.clone(),
        );
        m.register_security(&mut registry);
        registry.register(
            "input_rejected",
            "Calls refused before routing: the input broke the capability's schema",
            m.input_rejected.clone(),
        );
        registry.register(
            "schema_unavailable",
            "Input checks skipped: no owner could serve the capability's schema",
            m.schema_unavailable.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                profile: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
                .into(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics { registry, ..m }
    }

    fn register_security(&self, registry: &mut Registry) {
        registry.register(
            "rbac_allowed",
            "Calls the RBAC policy allowed",
            self.rbac_allowed.clone(),
        );
        registry.register(
            "rbac_denied",
            "Calls the RBAC policy denied (caller pre-check and callee check), by caller role",
            self.rbac_denied.clone(),
        );
        registry.register(
            "rbac_denied_inbound",
            "Inbound calls this node denied as callee",
            self.rbac_denied_inbound.clone(),
        );
        registry.register(
            "rbac_audit_only_denied",
            "Calls that would have been denied (audit_only mode)",
            self.rbac_audit_only_denied.clone(),
        );
        registry.register(
            "admission_refused",
            "Connections refused at admission (no, foreign, expired or revoked certificate)",
            self.admission_refused.clone(),
        );
        registry.register(
            "revoked_nodes",
            "Nodes revoked by the mesh root, as this node knows",
            self.revoked_nodes.clone(),
        );
        registry.register(
            "audit_entries",
            "Audit log entries written",
            self.audit_entries.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit log entries dropped (queue full or writer failed)",
            self.audit_dropped.clone(),
        );
        registry.register(
            "audit_checkpoints",
            "Signed audit checkpoints written",
            self.audit_checkpoints.clone(),
        );
    }

    fn apply_security(&self, s: &SecurityScrape) {
        set_counter(&self.rbac_allowed, s.rbac_allowed);
        for (role, cap, n) in &s.rbac_denied {
            let labels = DeniedLabels {
                caller_role: label(role),
                capability: label(cap),
            };
            set_counter(&self.rbac_denied.get_or_create(&labels), *n);
        }
        set_counter(&self.rbac_denied_inbound, s.rbac_denied_inbound);
        set_counter(&self.rbac_audit_only_denied, s.rbac_audit_only_denied);
        set_counter(&self.admission_refused, s.admission_refused);
        self.revoked_nodes.set(s.revoked_nodes as i64);
        set_counter(&self.audit_entries, s.audit_entries);
        set_counter(&self.audit_dropped, s.audit_dropped);
        set_counter(&self.audit_checkpoints, s.audit_checkpoints);
    }

    /// The `(source, target, capability)` labels to use: themselves while under
    /// [`METRIC_PAIRS_MAX`], else [`OTHER_LABEL`] three times.
    fn pair(&self, source: &str, target: &str, capability: &str) -> (String, String, String) {
        let key = (label(source), label(target), label(capability));
        let mut set = lock(&self.pairs);
        if set.contains(&key) {
            return key;
        }
        if set.len() < METRIC_PAIRS_MAX {
            set.insert(key.clone());
            return key;
        }
        (OTHER_LABEL.into(), OTHER_LABEL.into(), OTHER_LABEL.into())
    }

    fn cap(&self, capability: &str) -> String {
        let c = label(capability);
        let mut set = lock(&self.caps);
        if set.contains(&c) || set.len() < METRIC_CAPABILITIES_MAX {
            set.insert(c.clone());
            return c;
        }
        OTHER_LABEL.into()
    }

    /// Records a finished routed call.
    pub fn record_call(
        &self,
        source: &str,
        target: &str,
        capability: &str,
        outcome: &str,
        seconds: f64,
    ) {
        let (source_agent, target_agent, capability) = self.pair(source, target, capability);
        self.calls
            .get_or_create(&CallLabels {
                source_agent: source_agent.clone(),
                target_agent: target_agent.clone(),
                capability: capability.clone(),
                outcome: outcome.into(),
            })
            .inc();
        self.latency
            .get_or_create(&PairLabels {
                source_agent,
                target_agent,
                capability,
            })
            .observe(seconds);
    }

    /// Records one attempt of a routed call; `retry` when it was not the first.
    pub fn record_attempt(&self, capability: &str, outcome: &str, retry: bool) {
        let capability = self.cap(capability);
        if retry {
            self.retries
                .get_or_create(&CapLabels {
                    capability: capability.clone(),
                })
                .inc();
        }
        self.attempts
            .get_or_create(&CapOutcomeLabels {
                capability,
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records a call served for another node.
    pub fn record_inbound(&self, source: &str, local_agent: &str, capability: &str, outcome: &str) {
        let (source_agent, _, capability) = self.pair(source, local_agent, capability);
        self.inbound
            .get_or_create(&InboundLabels {
                source_agent,
                capability,
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Records a call that routing refused (`reason`: the error code's name).
    pub fn record_refusal(&self, capability: &str, reason: &str) {
        let capability = self.cap(capability);
        self.refusals
            .get_or_create(&RefusalLabels {
                capability,
                reason: label(reason),
            })
            .inc();
    }

    /// Counts an attempt sent to an agent at `proximity` (`zone`, `region`, `remote`).
    pub fn record_locality(&self, capability: &str, proximity: &str) {
        let capability = self.cap(capability);
        self.locality
            .get_or_create(&LocalityLabels {
                capability,
                proximity: label(proximity),
            })
            .inc();
    }

    /// Counts a call refused before routing for breaking `capability`'s input schema.
    pub fn input_rejected(&self, capability: &str) {
        let capability = self.cap(capability);
        self.input_rejected
            .get_or_create(&CapLabels { capability })
            .inc();
    }

    /// Counts an input check skipped because the schema could not be fetched.
    pub fn schema_unavailable(&self) {
        self.schema_unavailable.inc();
    }

    /// Records a call shed for a caller of `priority`.
    pub fn record_shed(&self, priority: agentmesh_gossip::record::Priority) {
        self.shed
            .get_or_create(&PriorityLabels {
                priority: crate::contract::names::priority_name(priority).into(),
            })
            .inc();
    }

    /// Sets the scrape-time values and encodes every family as OpenMetrics text.
    pub fn encode(&self, s: &ScrapeState) -> String {
        self.apply(s);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn apply(&self, s: &ScrapeState) {
        let dir = |d: &str| DirLabels {
            direction: d.into(),
        };
        self.in_flight
            .get_or_create(&dir("inbound"))
            .set(s.in_flight_inbound as i64);
        self.in_flight
            .get_or_create(&dir("outbound"))
            .set(s.in_flight_outbound as i64);
        set_counter(&self.overloaded, s.overloaded_total);
        for (state, n) in &s.members {
            self.members
                .get_or_create(&StateLabels {
                    state: (*state).into(),
                })
                .set(*n as i64);
        }
        let g = &s.gossip;
        set_counter(&self.gossip_messages.get_or_create(&dir("in")), g.msgs_in);
        set_counter(&self.gossip_messages.get_or_create(&dir("out")), g.msgs_out);
        set_counter(&self.gossip_bytes.get_or_create(&dir("in")), g.bytes_in);
        set_counter(&self.gossip_bytes.get_or_create(&dir("out")), g.bytes_out);
        set_counter(&self.suspicions, g.suspicions);
        set_counter(&self.refutations, g.refutations);
        self.apply_security(&s.security);
        // Breakers come and go with members: rebuild the family each scrape.
        self.breaker.clear();
        for (i, (node, agent, capability, state)) in s.breakers.iter().enumerate() {
            let labels = if i < METRIC_BREAKERS_MAX {
                BreakerLabels {
                    target_node: label(node),
                    target_agent: label(agent),
                    capability: label(capability),
                }
            } else {
                BreakerLabels {
                    target_node: OTHER_LABEL.into(),
                    target_agent: OTHER_LABEL.into(),
                    capability: OTHER_LABEL.into(),
                }
            };
            let g = self.breaker.get_or_create(&labels);
            g.set(g.get().max(*state));
        }
    }
}

/// Sets a counter to a total kept elsewhere (the gossip machine's own counters).
fn set_counter(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

/// The outcome label of a call that the agent answered with `status`.
pub fn status_outcome(status: u16) -> &'static str {
    if status >= 500 {
        "agent_error"
    } else {
        "ok"
    }
}

/// The outcome label of a failed call: its error code's name (`deadline_exceeded`, …).
pub fn error_outcome(e: &crate::contract::CallError) -> String {
    serde_json::to_value(e.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "internal".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn calls_are_counted_with_their_labels() {
        let m = Metrics::new();
        m.record_call("a", "b", "x.y", "ok", 0.002);
        m.record_call("a", "b", "x.y", "ok", 0.004);
        m.record_call("a", "b", "x.y", "deadline_exceeded", 1.0);
        let text = m.encode(&ScrapeState::default());
        let ok = r#"agentmesh_calls_total{source_agent="a",target_agent="b",capability="x.y",outcome="ok"}"#;
        assert_eq!(value(&text, ok), Some(2.0), "{text}");
        let dl = r#"agentmesh_calls_total{source_agent="a",target_agent="b",capability="x.y",outcome="deadline_exceeded"}"#;
        assert_eq!(value(&text, dl), Some(1.0));
        let count = r#"agentmesh_call_duration_seconds_count{source_agent="a",target_agent="b",capability="x.y"}"#;
        assert_eq!(value(&text, count), Some(3.0));
        assert!(text.contains("agentmesh_build_info{"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Past the pair limit, new triples are counted under `other`, and nothing is lost.
    #[test]
    fn cardinality_is_bounded_and_totals_stay_exact() {
        let m = Metrics::new();
        let n = METRIC_PAIRS_MAX + 50;
        for i in 0..n {
            m.record_call("src", &format!("agent-{i}"), "cap", "ok", 0.001);
        }
        let text = m.encode(&ScrapeState::default());
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("agentmesh_calls_total{"))
            .collect();
        assert_eq!(series.len(), METRIC_PAIRS_MAX + 1);
        let total: f64 = series
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(total, n as f64);
        let other = r#"agentmesh_calls_total{source_agent="other",target_agent="other",capability="other",outcome="ok"}"#;
        assert_eq!(value(&text, other), Some(50.0));
    }

    #[test]
    fn scrape_state_is_reflected() {
        let m = Metrics::new();
        let s = ScrapeState {
            in_flight_inbound: 3,
            in_flight_outbound: 1,
            overloaded_total: 7,
            members: vec![("alive", 3), ("suspect", 1)],
            gossip: agentmesh_gossip::Stats {
                msgs_in: 10,
                bytes_in: 1000,
                suspicions: 2,
                ..Default::default()
            },
            breakers: vec![("n1".into(), "a1".into(), "c1".into(), 2)],
            security: SecurityScrape {
                rbac_denied: vec![("processing".into(), "admin.reset".into(), 4)],
                admission_refused: 2,
                audit_entries: 9,
                ..Default::default()
            },
        };
        let text = m.encode(&s);
        assert_eq!(
            value(&text, r#"agentmesh_in_flight{direction="inbound"}"#),
            Some(3.0)
        );
        assert_eq!(value(&text, "agentmesh_overloaded_total"), Some(7.0));
        assert_eq!(
            value(&text, r#"agentmesh_gossip_members{state="suspect"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"agentmesh_gossip_bytes_total{direction="in"}"#),
            Some(1000.0)
        );
        assert_eq!(value(&text, "agentmesh_gossip_suspicions_total"), Some(2.0));
        assert_eq!(
            value(
                &text,
                r#"agentmesh_breaker_state{target_node="n1",target_agent="a1",capability="c1"}"#
            ),
            Some(2.0)
        );
        let denied =
            r#"agentmesh_rbac_denied_total{caller_role="processing",capability="admin.reset"}"#;
        assert_eq!(value(&text, denied), Some(4.0), "{text}");
        assert_eq!(value(&text, "agentmesh_admission_refused_total"), Some(2.0));
        assert_eq!(value(&text, "agentmesh_audit_entries_total"), Some(9.0));
    }
}
