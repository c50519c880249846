//! The mesh runtime: composes transport, admission, the gossip driver, the callee and the
//! router behind one cloneable [`MeshHandle`].
//!
//! Layering (parents pass commands down, children report up):
//! `MeshHandle` → { `transport` (swarm task), `admission` (per-peer verdicts), `gossip_driver`
//! (owns the state machine), `callee` (inbound calls), `router` + `caller` (outbound calls) }.

use crate::admission::{
    self, AdmissionReport, AdmissionTable, AdmitHello, AdmitVerdict, PeerVerdict, ADMIT_TIMEOUT,
};
use crate::call_proto::{CallHeader, CAPABILITY_LEN_MAX};
use crate::callee::{self, Callee, LocalAgent};
use crate::caller::{self, Answer, Attempt};
use crate::contract::{
    AgentRegistration, CallError, CallRequest, CallResponse, ErrorCode, MemberInfo,
    RouteExplanation, BODY_BYTES_MAX,
};
use crate::gossip_driver::{
    self, now_ms, snapshot, DriverCmd, DriverStats, GossipInit, SharedSnapshot,
};
use crate::mesh_config::{CapabilitySettings, MeshConfig};
use crate::resilience::{health_failure, Resilience};
pub use crate::resilience::{spec_now, SharedSpec};
use crate::retry::{classify, hop_budget_ms, transient_status, Retry};
use crate::router::{self, Candidate, Router};
use crate::transport::{self, SwarmCmd, Transport, TransportEvent, ADMIT_PROTOCOL};
use agentmesh_crypto::{Keypair, NodeId, SignedCert};
use agentmesh_gossip::member::{ADDRS_MAX, ADDR_LEN_MAX};
use agentmesh_gossip::record::{
    AgentInfo, Health, NodeRecord, Priority, ATTRIBUTES_MAX, CAPABILITIES_MAX,
};
use agentmesh_gossip::{Admission, Config, MemberState, RecordUpdate};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::admission::AdmissionMode;

/// One attempt in flight, as a future (boxed so hedged attempts can race in one set).
type AttemptFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = AttemptDone<'a>> + Send + 'a>>;

/// A finished attempt with what [`MeshHandle`] needs to account for it.
struct AttemptDone<'a> {
    i: usize,
    permit: crate::breaker::Permit,
    slot: crate::resilience::LimitSlot<'a>,
    started: tokio::time::Instant,
    result: Result<Answer, CallError>,
    span: tracing::Span,
    attempt_no: u32,
}
#[path = "runtime_audit.rs"]
mod runtime_audit;
#[path = "runtime_security.rs"]
mod runtime_security;
pub use runtime_audit::{NodeAudit, AUDIT_ANSWER_TIMEOUT};

/// Largest deadline accepted.
pub const DEADLINE_MAX_MS: u64 = 10 * 60 * 1000;
/// First pause between join rounds.
pub const JOIN_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest pause between join rounds.
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a join waits to see another member before joining again.
pub const JOIN_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// Most seed addresses used.
pub const SEEDS_MAX: usize = 16;
/// How often the local in-flight count is offered to gossip (it applies hysteresis).
pub const LOAD_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// After refusing a peer, how long we wait before disconnecting so it can read why.
pub const REJECT_LINGER: Duration = Duration::from_millis(300);
/// Inbound admit streams handled at once.
pub const ADMIT_STREAMS_MAX: usize = 1024;
/// Attempts of the outbound admission exchange before giving up on a peer.
pub const ADMIT_ATTEMPTS_MAX: u32 = 5;
/// First pause between admission attempts; doubles each time.
pub const ADMIT_RETRY_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest agent name accepted at registration.
pub const AGENT_NAME_LEN_MAX: usize = 128;

/// Gossip timing profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GossipProfile {
    /// LAN or one data centre (1 s period).
    #[default]
    Lan,
    /// Across regions (2 s period, longer timeouts).
    Wan,
}

/// Everything the runtime needs; plain data, built by `config.rs` from `node.toml`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The node key (its libp2p peer id is the node id).
    pub key: Keypair,
    /// This node's admission certificate (None in open meshes).
    pub cert: Option<SignedCert>,
    /// Who may connect.
    pub admission: AdmissionMode,
    /// Listen multiaddrs (default `/ip4/127.0.0.1/udp/0/quic-v1`).
    pub listen: Vec<String>,
    /// UDP port of the call plane, on the first listen address's IP (0: any free port; the
    /// port is advertised in the member record).
    pub call_port: u16,
    /// Seed multiaddrs to join through.
    pub seeds: Vec<String>,
    /// Discover peers with mDNS.
    pub mdns: bool,
    /// Gossip timing profile.
    pub profile: GossipProfile,
    /// The local agent, if registered statically.
    pub agent: Option<AgentRegistration>,
    /// Traffic priority.
    pub priority: Priority,
    /// Routing and resilience settings (`[defaults]`, `[capability."…"]`).
    pub mesh: MeshConfig,
    /// RBAC policy, audit log and certificate renewal (`[rbac]`, `[audit]`).
    pub security: crate::security::SecurityConfig,
}

impl RuntimeConfig {
    /// Defaults for `key`: open admission, loopback listener, no seeds, LAN profile.
    pub fn new(key: Keypair) -> Self {
        RuntimeConfig {
            key,
            cert: None,
            admission: AdmissionMode::Open,
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            call_port: 0,
            seeds: Vec::new(),
            mdns: false,
            profile: GossipProfile::Lan,
            agent: None,
            priority: Priority::Standard,
            mesh: MeshConfig::default(),
            security: Default::default(),
        }
    }
}

struct Inner {
    node_id: NodeId,
    transport: Transport,
    gossip: SharedSnapshot,
    driver: mpsc::Sender<DriverCmd>,
    admission: Arc<AdmissionTable>,
    agent: Arc<LocalAgent>,
    router: Router,
    res: Resilience,
    priority: Priority,
    config_path: Mutex<Option<std::path::PathBuf>>,
    driver_stats: Arc<DriverStats>,
    seeded: bool,
    joined: AtomicBool,
    shutting_down: AtomicBool,
    outbound: Arc<std::sync::atomic::AtomicU32>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    voter: crate::quorum::Voter,
    workflows: std::sync::RwLock<Arc<crate::workflow::WorkflowSet>>,
    metrics: Arc<crate::metrics::Metrics>,
    traffic: Arc<crate::traffic::TrafficTable>,
    sec: Arc<crate::security::Security>,
}

/// The running mesh node. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle(Arc<Inner>);

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshHandle({})", self.0.node_id)
    }
}

fn gossip_admission(m: &AdmissionMode) -> Admission {
    match m {
        AdmissionMode::Open => Admission::Open,
        AdmissionMode::Enforced { root, mesh_id } => Admission::Enforced {
            root: *root,
            mesh_id: mesh_id.clone(),
        },
    }
}

fn agent_info(reg: &AgentRegistration) -> AgentInfo {
    AgentInfo {
        name: reg.name.clone(),
        capabilities: reg.capabilities.clone(),
    }
}

/// Checks a registration against the named limits; `bad_request` names the field.
pub fn validate_registration(reg: &AgentRegistration) -> Result<(), CallError> {
    if reg.name.is_empty() || reg.name.len() > AGENT_NAME_LEN_MAX {
        return Err(CallError::bad_field(
            "name",
            format!("agent name must be 1..={AGENT_NAME_LEN_MAX} bytes"),
        ));
    }
    match reqwest::Url::parse(&reg.handler) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
        _ => {
            return Err(CallError::bad_field(
                "handler",
                format!("handler {:?} is not an http(s) URL", reg.handler),
            ))
        }
    }
    if reg.capabilities.len() > CAPABILITIES_MAX {
        return Err(CallError::bad_field(
            "capabilities",
            format!("at most {CAPABILITIES_MAX} capabilities"),
        ));
    }
    for c in &reg.capabilities {
        if c.name.is_empty() || c.name.len() > CAPABILITY_LEN_MAX {
            return Err(CallError::bad_field(
                "capabilities.name",
                format!("capability names must be 1..={CAPABILITY_LEN_MAX} bytes"),
            ));
        }
        if c.attributes.len() > ATTRIBUTES_MAX {
            return Err(CallError::bad_field(
                "capabilities.attributes",
                format!("at most {ATTRIBUTES_MAX} attributes per capability"),
            ));
        }
        if !c.cost.is_finite() || c.cost < 0.0 {
            return Err(CallError::bad_field(
                "capabilities.cost",
                "cost must be a finite, non-negative number",
            ));
        }
    }
    if reg.max_concurrency == 0 {
        return Err(CallError::bad_field(
            "max_concurrency",
            "max_concurrency must be at least 1",
        ));
    }
    Ok(())
}

impl MeshHandle {
    /// Starts the node: listens, begins admission and gossip, joins the seeds in the
    /// background, and serves inbound calls.
    pub async fn start(cfg: RuntimeConfig) -> anyhow::Result<MeshHandle> {
        if cfg.admission == AdmissionMode::Open {
            tracing::warn!(
                "ADMISSION IS OPEN: any node that can reach this one may join the mesh and \
                 call its agent. Use open admission for demos only."
            );
        }
        if let Some(reg) = &cfg.agent {
            validate_registration(reg).map_err(|e| anyhow::anyhow!("agent: {e}"))?;
        }
        let node_id = cfg.key.node_id();
        let (transport, events) =
            transport::start(&cfg.key, &cfg.listen, cfg.call_port, cfg.mdns).await?;
        // The call-plane port first: it must survive the address cap.
        let addrs: Vec<String> = std::iter::once(transport.calls.advertisement())
            .chain(transport.listen_addrs.iter().map(|a| a.to_string()))
            .filter(|a| a.len() <= ADDR_LEN_MAX)
            .take(ADDRS_MAX)
            .collect();
        let admission = Arc::new(AdmissionTable::new(cfg.admission.clone()));
        let gcfg = match cfg.profile {
            GossipProfile::Lan => Config::lan(gossip_admission(&cfg.admission)),
            GossipProfile::Wan => Config::wan(gossip_admission(&cfg.admission)),
        };
        let mut record = NodeRecord::new(node_id);
        record.cert = cfg.cert.clone();
        record.agent = cfg.agent.as_ref().map(agent_info);
        if let Some(r) = &cfg.agent {
            record.max_concurrency = r.max_concurrency;
        }
        record.priority = cfg.priority;
        let driver_stats = Arc::new(DriverStats::default());
        let (driver, gossip) = gossip_driver::spawn(
            GossipInit {
                config: gcfg,
                key: cfg.key.clone(),
                addrs,
                record,
                rng_seed: rand::random::<u64>(),
            },
            transport.clone(),
            admission.clone(),
            driver_stats.clone(),
        )
        .await?;
        let agent = Arc::new(LocalAgent::new(cfg.agent.clone()));
        let sec = Arc::new(crate::security::Security::new(
            cfg.security.clone(),
            &cfg.key,
            cfg.cert.clone(),
            match &cfg.admission {
                AdmissionMode::Enforced { root, mesh_id } => Some((*root, mesh_id.clone())),
                AdmissionMode::Open => None,
            },
        )?);
        let inner = Arc::new(Inner {
            node_id,
            transport: transport.clone(),
            gossip,
            driver,
            admission: admission.clone(),
            agent: agent.clone(),
            router: Router::new(),
            res: Resilience::new(cfg.mesh.clone(), rand::random::<u64>()),
            priority: cfg.priority,
            config_path: Mutex::new(None),
            driver_stats,
            seeded: !cfg.seeds.is_empty(),
            joined: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            outbound: Arc::new(std::sync::atomic::AtomicU32::new(0)),
            tasks: Mutex::new(Vec::new()),
            voter: crate::quorum::Voter::new(cfg.key.clone()),
            workflows: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            traffic: Arc::new(crate::traffic::TrafficTable::default()),
            sec: sec.clone(),
        });
        let handle = MeshHandle(inner);
        handle.reapply_persisted_revocations().await;
        let hello = AdmitHello {
            cert: cfg.cert.clone(),
        };
        let mut control = transport.control.clone();
        let admit_in = control
            .accept(ADMIT_PROTOCOL)
            .map_err(|e| anyhow::anyhow!("admit protocol: {e}"))?;
        let audit_in = control
            .accept(transport::AUDIT_PROTOCOL)
            .map_err(|e| anyhow::anyhow!("audit protocol: {e}"))?;
        let mut tasks = vec![
            tokio::spawn(handle.clone().connection_events(events, hello, cfg.mdns)),
            tokio::spawn(handle.clone().admit_inbound(admit_in)),
            tokio::spawn(callee::accept_loop(
                Callee {
                    agent,
                    admission,
                    gossip: handle.0.gossip.clone(),
                    spec: handle.0.res.spec.clone(),
                    voter: handle.0.voter.clone(),
                    node_id,
                    metrics: handle.0.metrics.clone(),
                    sec,
                },
                transport.calls.clone(),
            )),
            tokio::spawn(handle.clone().publish_load()),
            tokio::spawn(handle.clone().publish_traffic()),
            tokio::spawn(handle.clone().security_loop()),
            tokio::spawn(handle.clone().audit_accept_loop(audit_in)),
        ];
        if !cfg.seeds.is_empty() {
            let seeds: Vec<String> = cfg.seeds.iter().take(SEEDS_MAX).cloned().collect();
            tasks.push(tokio::spawn(handle.clone().join_seeds(seeds)));
        }
        *lock(&handle.0.tasks) = tasks;
        tracing::info!(
            node = %node_id,
            listen = ?handle.listen_addrs(),
            "mesh node started"
        );
        Ok(handle)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.0.node_id
    }

    /// The multiaddrs this node listens on (as others should dial them).
    pub fn listen_addrs(&self) -> Vec<String> {
        self.0
            .transport
            .listen_addrs
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Every known member, self included.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = self.0.node_id;
        snapshot(&self.0.gossip)
            .members
            .iter()
            .map(|m| {
                let agent = m.record.as_ref().and_then(|r| r.agent.clone());
                MemberInfo {
                    node_id: m.node_id.to_string(),
                    state: state_name(m.state).into(),
                    addrs: m.addrs.clone(),
                    incarnation: m.incarnation,
                    agent: agent.as_ref().map(|a| a.name.clone()),
                    capabilities: agent
                        .map(|a| a.capabilities.into_iter().map(|c| c.name).collect())
                        .unwrap_or_default(),
                    health: m.record.as_ref().map(|r| health_name(r.health).into()),
                    local: m.node_id == me,
                }
            })
            .collect()
    }

    /// Capability → `["agent@<node short id>", …]` over alive members.
    pub fn capabilities(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in snapshot(&self.0.gossip).members.iter() {
            if m.state != MemberState::Alive {
                continue;
            }
            let Some(agent) = m.record.as_ref().and_then(|r| r.agent.as_ref()) else {
                continue;
            };
            for c in &agent.capabilities {
                out.entry(c.name.clone()).or_default().push(format!(
                    "{}@{}",
                    agent.name,
                    m.node_id.short()
                ));
            }
        }
        out
    }

    /// Ranks the candidates for `req` and says why, without calling anyone.
    pub fn routes(&self, req: &CallRequest) -> Result<RouteExplanation, CallError> {
        let spec = spec_now(&self.0.res.spec);
        let settings = spec.for_capability(&req.capability);
        let offers = router::offers(&snapshot(&self.0.gossip).members, self.0.node_id, req);
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let (cands, mut ineligible) = split_offers(offers);
        let (cands, forbidden) = self.0.sec.split_forbidden(cands, &req.capability);
        ineligible.extend(forbidden);
        let views = self
            .0
            .res
            .views(&cands, &self.0.router, &self.0.agent, &settings.breaker);
        self.0
            .res
            .explain(&cands, &ineligible, &views, req, settings)
    }

    /// The resilience settings in force.
    pub fn mesh_config(&self) -> Arc<MeshConfig> {
        spec_now(&self.0.res.spec)
    }

    /// Replaces the resilience settings. Calls in flight keep the settings they started with;
    /// observations and breaker states carry over.
    pub fn set_mesh_config(&self, spec: MeshConfig) {
        self.0.res.set_spec(spec);
        tracing::info!("routing and resilience settings applied");
    }

    /// Remembers the config file that [`MeshHandle::reload_config`] re-reads.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        *lock(&self.0.config_path) = Some(path);
    }

    /// Re-reads the config file and applies its resilience settings. A file that fails
    /// validation is refused (the error names file, key and valid values) and the settings
    /// in force stay.
    pub fn reload_config(&self) -> Result<Arc<MeshConfig>, String> {
        let path = lock(&self.0.config_path)
            .clone()
            .ok_or_else(|| "this node was not started from a config file".to_string())?;
        let cfg = crate::config::NodeConfig::load(&path).map_err(|e| e.to_string())?;
        self.set_mesh_config(cfg.mesh);
        Ok(self.mesh_config())
    }

    /// The local agent's registration, if one is registered.
    pub fn agent_registration(&self) -> Option<AgentRegistration> {
        self.0.agent.registration().map(|r| (*r).clone())
    }

    /// Registers or replaces the local agent and publishes it in this node's record.
    pub async fn register_agent(&self, reg: AgentRegistration) -> Result<(), CallError> {
        validate_registration(&reg)?;
        let info = agent_info(&reg);
        let max = reg.max_concurrency;
        self.0.agent.set_registration(Some(reg));
        for u in [
            RecordUpdate::MaxConcurrency(max),
            RecordUpdate::Agent(Some(info)),
        ] {
            self.0
                .driver
                .send(DriverCmd::Update(u))
                .await
                .map_err(|_| CallError::new(ErrorCode::Internal, "gossip driver stopped"))?;
        }
        Ok(())
    }

    /// Routes and performs a call with the capability's policy, breakers, retries and
    /// deadline; when every candidate's breaker is open, the capability's fallback is called
    /// instead (once). The response streams; `served_by` and `attempts` say who answered
    /// after how many tries.
    pub async fn call(&self, req: CallRequest) -> Result<CallResponse, CallError> {
        // One call id for the call, its audit entry and (for quorum) every voter.
        let call_id: [u8; 16] = req.call_id.unwrap_or_else(rand::random);
        if !self.0.sec.audits() {
            return self.call_observed(req, call_id).await;
        }
        let started = tokio::time::Instant::now();
        let time_ms = crate::audit::now_unix_ms();
        let rec = crate::audit::CallRecord {
            time_ms,
            side: Some(crate::audit::Side::Outbound),
            call_id: callee::hex_id(&call_id),
            caller_node: crate::transport::id_text(&self.0.node_id).to_string(),
            caller_agent: self.0.agent.name(),
            capability: req.capability.clone(),
            trace_id: crate::audit::trace_id(req.traceparent.as_deref()),
            body_sha256: self.0.sec.body_hash(&req.body),
            ..Default::default()
        };
        let res = self.call_observed(req, call_id).await;
        let rec = runtime_security::outbound_record(rec, &res, started.elapsed());
        self.0.sec.audit(rec).await;
        res
    }

    /// [`MeshHandle::call`] with its route span, metrics and traffic summary.
    async fn call_observed(
        &self,
        req: CallRequest,
        call_id: [u8; 16],
    ) -> Result<CallResponse, CallError> {
        let started = tokio::time::Instant::now();
        let source = self
            .0
            .agent
            .name()
            .unwrap_or_else(|| crate::metrics::NONE_LABEL.into());
        let mut note = crate::obs_api::CallNote {
            route: crate::telemetry::route_span(crate::telemetry::CallContext {
                capability: &req.capability,
                caller_node: &self.0.node_id,
                caller_agent: &source,
                traceparent: req.traceparent.as_deref(),
                tracestate: req.tracestate.as_deref(),
            }),
            source,
            target: None,
        };
        let capability = req.capability.clone();
        let result = self.call_inner(req, call_id, &mut note).await;
        crate::obs_api::observe_call(
            &self.0.metrics,
            &self.0.traffic,
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
        note: &mut crate::obs_api::CallNote,
    ) -> Result<CallResponse, CallError> {
        if self.0.shutting_down.load(Ordering::Acquire) {
            return Err(CallError::new(
                ErrorCode::Overloaded,
                "node is shutting down",
            ));
        }
        validate_call(&req)?;
        let spec = spec_now(&self.0.res.spec);
        let settings = spec.for_capability(&req.capability);
        let incoming = match req.chain.as_deref() {
            Some(t) => crate::chain::decode(t)?,
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
        let chain = crate::chain::extend(
            incoming.clone(),
            self.0.node_id,
            &req.capability,
            settings.hop_limit,
        )?;
        let _outbound = OutboundGuard::new(self.0.outbound.clone());
        match self
            .call_routed(&req, settings, chain, deadline, call_id, note)
            .await
        {
            Err(e) if e.code == ErrorCode::CircuitOpen && settings.fallback.is_some() => {
                let fallback = settings.fallback.clone().unwrap_or_default();
                tracing::info!(capability = %req.capability, %fallback, "every breaker open; calling the fallback capability");
                let fb_settings = spec.for_capability(&fallback);
                let chain = crate::chain::extend(
                    incoming,
                    self.0.node_id,
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
        note: &mut crate::obs_api::CallNote,
    ) -> Result<CallResponse, CallError> {
        let offers = router::offers(&snapshot(&self.0.gossip).members, self.0.node_id, req);
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let total = offers.len();
        let (mut cands, _) = split_offers(offers);
        if let Some(pin) = req.pin {
            cands.retain(|c| c.node_id == pin);
        }
        // Routing never picks a candidate the policy forbids; if none is left, fail fast.
        let (cands, forbidden) = self.0.sec.split_forbidden(cands, &req.capability);
        if cands.is_empty() && !forbidden.is_empty() {
            return Err(self.0.sec.forbid_all(&forbidden, &req.capability));
        }
        if cands.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoEligibleAgent,
                format!(
                    "{total} agent(s) offer {} but none matches the constraints",
                    req.capability
                ),
            ));
        }
        let res = &self.0.res;
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
            caller_node: self.0.node_id,
            caller_agent: self.0.agent.name(),
            caller_roles: self.0.sec.roles(),
            content_type: req.content_type.clone(),
            want_vote: req.want_vote,
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
                    let retry_it = transient_status(a.status)
                        && attempts < settings.retry.max_attempts
                        && res.withdraw(&req.capability, &settings.retry);
                    if !retry_it {
                        return Ok(CallResponse {
                            status: a.status,
                            content_type: a.content_type,
                            body: a.body,
                            served_by: format!(
                                "{}/{}",
                                crate::transport::id_text(&cand.node_id),
                                a.agent
                            ),
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
                    if classify(&e) == Retry::Permanent || attempts >= settings.retry.max_attempts {
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
        note: &mut crate::obs_api::CallNote,
    ) -> Result<CallResponse, CallError> {
        let res = &self.0.res;
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
                        Ok(a) if !transient_status(a.status) => {
                            return Ok(CallResponse {
                                status: a.status,
                                content_type: a.content_type,
                                body: a.body,
                                served_by: format!(
                                    "{}/{}",
                                    crate::transport::id_text(&cands[i].node_id),
                                    a.agent
                                ),
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
                        Err(e) if classify(&e) == Retry::Permanent => return fail(e, attempts),
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
        (note, attempt_no): (&crate::obs_api::CallNote, u32),
        allow_tried: bool,
    ) -> Result<(crate::policy::Ranking, AttemptFuture<'a>), CallError> {
        let res = &self.0.res;
        let views = res.views(cands, &self.0.router, &self.0.agent, &settings.breaker);
        // Only a call's first attempt advances the round-robin cursor.
        let ranking = res.rank(&views, req, settings, attempt_no == 1)?;
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
            let Some(slot) = res.limit_acquire(cands[i].node_id, &settings.adaptive) else {
                limited = true;
                continue;
            };
            let permit = if ranking.panic {
                Some(crate::breaker::Permit::Normal)
            } else {
                res.acquire(cands[i].node_id, &settings.breaker)
            };
            if let Some(p) = permit {
                picked = Some((i, p, slot));
                break;
            }
        }
        let Some((i, permit, slot)) = picked else {
            return Err(if limited {
                CallError::new(
                    ErrorCode::Overloaded,
                    "every admitting agent is at its adaptive concurrency limit",
                )
            } else {
                CallError::new(
                    ErrorCode::CircuitOpen,
                    "no candidate's breaker admits a call now",
                )
            });
        };
        let remaining = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64;
        let budget_ms = hop_budget_ms(remaining, &settings.deadline)?;
        tried.push(cands[i].node_id);
        let mut h = header.clone();
        h.deadline_ms = budget_ms;
        let cand = &cands[i];
        let span = note.attempt_span(
            &self.0.node_id,
            req,
            crate::telemetry::AttemptTarget {
                attempt: attempt_no,
                node: &cand.node_id,
                agent: &cand.agent,
                policy: ranking.policy.name(),
                breaker: views[i].breaker.name(),
                local: cand.local,
            },
        );
        (h.traceparent, h.tracestate) = match crate::telemetry::inject(&span) {
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

    /// Feeds a finished attempt to the breaker, the scoreboard, the adaptive limit and the
    /// hedging latency window.
    fn settle(
        &self,
        cands: &[Candidate],
        req: &CallRequest,
        settings: &CapabilitySettings,
        note: &mut crate::obs_api::CallNote,
        done: AttemptDone<'_>,
    ) -> (usize, Result<Answer, CallError>) {
        let res = &self.0.res;
        note.attempt_done(
            &self.0.metrics,
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
            .finish(rtt_ms, crate::resilience::limit_sample(&seen));
        match &done.result {
            Ok(_) => {
                res.observe(node, rtt_ms, true, done.permit, &settings.breaker);
                res.record_latency(&req.capability, rtt_ms);
            }
            Err(e) => {
                tracing::debug!(target_node = %node, code = ?e.code, error = %e.message, "call attempt failed");
                res.observe(
                    node,
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
            let shedding = spec_now(&self.0.res.spec).shedding.clone();
            crate::shed::admit(
                self.0.priority,
                self.0.agent.in_flight(),
                self.0.agent.max_concurrency(),
                &shedding,
            )
            .inspect_err(|_| self.0.metrics.record_shed(self.0.priority))?;
            caller::call_local(&self.0.agent, cand, &attempt, self.0.sec.roles()).await
        } else {
            caller::call_remote(
                &self.0.transport,
                &self.0.admission,
                &self.0.router,
                cand,
                &attempt,
            )
            .await
        }
    }

    /// The live candidates for `req`, ranked by its policy (best first), then those the policy
    /// left out: the voters a quorum and a fork-join pick from.
    pub fn ranked_candidates(&self, req: &CallRequest) -> Result<Vec<Candidate>, CallError> {
        let spec = spec_now(&self.0.res.spec);
        let settings = spec.for_capability(&req.capability).clone();
        let offers = router::offers(&snapshot(&self.0.gossip).members, self.0.node_id, req);
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let (cands, _) = split_offers(offers);
        let res = &self.0.res;
        let views = res.views(&cands, &self.0.router, &self.0.agent, &settings.breaker);
        let ranking = res.rank(&views, req, &settings, false)?;
        // Candidates the policy left out (below the quality floor, breaker open) come last:
        // a quorum still needs n distinct nodes, and their calls fail or dissent on their own.
        let rest = (0..cands.len()).filter(|i| !ranking.order.contains(i));
        let order = ranking.order.iter().copied().chain(rest);
        Ok(order.map(|i| cands[i].clone()).collect())
    }

    /// Counts a failure against `node`'s observed quality (a quorum dissent or
    /// equivocation): routing by `quality` then sends it less traffic.
    pub fn penalize(&self, node: NodeId) {
        self.0.res.penalize(node);
    }

    /// This node's vote signer.
    pub fn voter(&self) -> &crate::quorum::Voter {
        &self.0.voter
    }

    /// The workflows loaded from the node's config.
    pub fn workflows(&self) -> Arc<crate::workflow::WorkflowSet> {
        self.0
            .workflows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the workflows served by `POST /v1/workflows/{name}/run`.
    pub fn set_workflows(&self, set: crate::workflow::WorkflowSet) {
        *self.0.workflows.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// True once the node is serving and, if it has seeds, has joined through one of them.
    pub fn is_ready(&self) -> bool {
        !self.0.shutting_down.load(Ordering::Acquire)
            && (!self.0.seeded || self.0.joined.load(Ordering::Acquire))
    }

    /// A one-line admission status: `ok (…)` or `admission rejected by <peer>: <reason>`.
    pub fn admission_status(&self) -> String {
        self.0.admission.report().to_string()
    }

    /// The admission status as data.
    pub fn admission_report(&self) -> AdmissionReport {
        self.0.admission.report()
    }

    /// Calls in flight to the local agent now (inbound mesh calls and local calls).
    pub fn local_in_flight(&self) -> u32 {
        self.0.agent.in_flight()
    }

    /// Peers this node refused at admission since start.
    pub fn admission_rejections(&self) -> u64 {
        self.0.admission.rejected_total()
    }

    /// Gossip frames dropped (queue full, unreachable, unadmitted) since start.
    pub fn gossip_frames_dropped(&self) -> u64 {
        let s = &self.0.driver_stats;
        s.dropped_queue_full.load(Ordering::Relaxed)
            + s.dropped_unreachable.load(Ordering::Relaxed)
            + s.dropped_unadmitted.load(Ordering::Relaxed)
    }

    /// Leaves gracefully: stop taking calls, gossip the leave and flush it, then let in-flight
    /// calls finish for up to `drain`, then stop the transport.
    pub async fn shutdown(&self, drain: Duration) {
        if self.0.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("leaving the mesh");
        self.0.agent.set_draining();
        let _ = self
            .0
            .driver
            .send(DriverCmd::Update(RecordUpdate::Health(Health::Draining)))
            .await;
        let (tx, rx) = oneshot::channel();
        if self.0.driver.send(DriverCmd::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let until = tokio::time::Instant::now() + drain;
        while (self.0.agent.in_flight() > 0 || self.0.outbound.load(Ordering::Acquire) > 0)
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(a) = &self.0.sec.audit {
            a.flush().await;
        }
        let _ = self.0.driver.send(DriverCmd::Stop).await;
        let _ = self.0.transport.cmds.send(SwarmCmd::Shutdown).await;
        for t in lock(&self.0.tasks).drain(..) {
            t.abort();
        }
        tracing::info!("mesh node stopped");
    }

    // ---- background tasks ----

    async fn connection_events(
        self,
        mut events: mpsc::Receiver<TransportEvent>,
        hello: AdmitHello,
        mdns: bool,
    ) {
        while let Some(ev) = events.recv().await {
            match ev {
                TransportEvent::Connected(peer) => {
                    let Ok(node) = NodeId::from_peer_id(&peer) else {
                        self.0.transport.disconnect(peer);
                        continue;
                    };
                    self.0.admission.connected(node);
                    // The current certificate: a renewal is presented without a restart.
                    let hello = match self.0.sec.cert() {
                        Some(c) => AdmitHello { cert: Some(c) },
                        None => hello.clone(),
                    };
                    tokio::spawn(self.clone().admit_outbound(peer, node, hello));
                }
                TransportEvent::Disconnected(peer) => {
                    if let Ok(node) = NodeId::from_peer_id(&peer) {
                        self.0.admission.disconnected(&node);
                    }
                }
                TransportEvent::Discovered(peer, addrs) if mdns => {
                    tokio::spawn(self.clone().join_discovered(peer, addrs));
                }
                TransportEvent::Discovered(..) => {}
            }
        }
    }

    /// Presents our certificate to a newly connected peer and records its verdict.
    async fn admit_outbound(self, peer: libp2p::PeerId, node: NodeId, hello: AdmitHello) {
        // Transient failures (a stream reset while both sides dial at once, a busy peer) are
        // retried with backoff; a verdict, either way, ends the exchange.
        let mut backoff = ADMIT_RETRY_BACKOFF_MIN;
        for attempt in 1..=ADMIT_ATTEMPTS_MAX {
            let mut control = self.0.transport.control.clone();
            let exchange = async {
                let mut s = control
                    .open_stream(peer, ADMIT_PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())?;
                admission::present(&mut s, &hello)
                    .await
                    .map_err(|e| e.to_string())
            };
            let outcome = tokio::time::timeout(ADMIT_TIMEOUT, exchange).await;
            let transient = matches!(outcome, Ok(Err(_)) | Err(_));
            if transient && attempt < ADMIT_ATTEMPTS_MAX {
                tracing::debug!(%peer, attempt, "admission exchange failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            self.record_admission_outcome(peer, node, outcome);
            return;
        }
    }

    fn record_admission_outcome(
        &self,
        peer: libp2p::PeerId,
        node: NodeId,
        outcome: Result<Result<AdmitVerdict, String>, tokio::time::error::Elapsed>,
    ) {
        match outcome {
            Ok(Ok(AdmitVerdict::Accepted)) => {
                tracing::debug!(%peer, "admitted by peer");
                self.0
                    .admission
                    .set_ours(node, PeerVerdict::Admitted { roles: Vec::new() });
            }
            Ok(Ok(AdmitVerdict::Rejected { reason })) => {
                tracing::error!("admission rejected by {peer}: {reason}");
                self.0
                    .admission
                    .set_ours(node, PeerVerdict::Rejected(reason));
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "admission exchange failed");
                self.0.admission.fail_ours(node, e);
            }
            Err(_) => {
                tracing::warn!(%peer, "admission exchange timed out");
                self.0.admission.fail_ours(node, "timed out".into());
            }
        }
    }

    /// Judges certificates presented to us.
    async fn admit_inbound(self, mut incoming: libp2p_stream::IncomingStreams) {
        let slots = Arc::new(tokio::sync::Semaphore::new(ADMIT_STREAMS_MAX));
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(node) = NodeId::from_peer_id(&peer) else {
                    this.0.transport.disconnect(peer);
                    return;
                };
                let now_s = now_ms() / 1000;
                let judged = tokio::time::timeout(
                    ADMIT_TIMEOUT,
                    admission::judge(&mut stream, &this.0.admission, &node, now_s),
                )
                .await;
                let verdict = match judged {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => PeerVerdict::Rejected(format!("admission exchange failed: {e}")),
                    Err(_) => PeerVerdict::Rejected("admission exchange timed out".into()),
                };
                if let PeerVerdict::Rejected(reason) = &verdict {
                    tracing::warn!(%peer, %reason, "refusing peer at admission");
                }
                let verdict = match verdict {
                    PeerVerdict::Admitted { .. } if this.0.sec.is_revoked(&node) => {
                        PeerVerdict::Rejected("revoked by the mesh root".into())
                    }
                    v => v,
                };
                let rejected = matches!(verdict, PeerVerdict::Rejected(_));
                this.0.admission.set_theirs(node, verdict);
                if rejected {
                    // Let the verdict reach the peer before closing the connection.
                    tokio::time::sleep(REJECT_LINGER).await;
                    this.0.transport.disconnect(peer);
                }
            });
        }
    }

    /// Dials the seeds until one admits us, then joins through those that did.
    async fn join_seeds(self, seeds: Vec<String>) {
        let addrs = transport::parse_addrs(&seeds);
        if addrs.is_empty() {
            tracing::error!(?seeds, "no valid seed address; cannot join");
            return;
        }
        let mut pause = JOIN_RETRY_MIN;
        loop {
            let mut joined = Vec::new();
            for a in &addrs {
                let peer = match self.0.transport.dial_addr(a.clone()).await {
                    Ok(p) if p == self.0.transport.local_peer => continue,
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(seed = %a, error = %e, "seed not reachable");
                        continue;
                    }
                };
                let Ok(node) = NodeId::from_peer_id(&peer) else {
                    continue;
                };
                match self.0.admission.wait_mutual(&node, ADMIT_TIMEOUT).await {
                    Ok(()) => joined.push(node),
                    Err(reason) => tracing::debug!(seed = %a, %reason, "seed not admitted"),
                }
            }
            let only_self = addrs
                .iter()
                .all(|a| self.0.transport.listen_addrs.iter().any(|l| l == a));
            if only_self && joined.is_empty() {
                self.0.joined.store(true, Ordering::Release);
                return;
            }
            if !joined.is_empty() {
                tracing::info!(seeds = joined.len(), "joining the mesh");
                let _ = self.0.driver.send(DriverCmd::Join(joined)).await;
                // The join is one frame; if it was lost, nobody knows us yet. Confirm by
                // seeing another live member, else join again.
                if self.wait_for_peers(JOIN_CONFIRM_TIMEOUT).await {
                    self.0.joined.store(true, Ordering::Release);
                    return;
                }
                tracing::debug!("join not confirmed yet; retrying");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(JOIN_RETRY_MAX);
        }
    }

    /// Waits until the membership shows another alive member.
    async fn wait_for_peers(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let others = snapshot(&self.0.gossip)
                .members
                .iter()
                .any(|m| m.node_id != self.0.node_id && m.state == MemberState::Alive);
            if others {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn join_discovered(self, peer: libp2p::PeerId, addrs: Vec<libp2p::Multiaddr>) {
        let Ok(node) = NodeId::from_peer_id(&peer) else {
            return;
        };
        self.0.transport.dial_peer(peer, addrs);
        if self
            .0
            .admission
            .wait_mutual(&node, ADMIT_TIMEOUT)
            .await
            .is_ok()
        {
            let _ = self.0.driver.send(DriverCmd::Join(vec![node])).await;
            self.0.joined.store(true, Ordering::Release);
        }
    }

    /// Publishes this node's traffic summary to gossip when it changed (bounded size).
    async fn publish_traffic(self) {
        let mut tick = tokio::time::interval(crate::traffic::TRAFFIC_PUBLISH_INTERVAL);
        loop {
            tick.tick().await;
            let room = self.traffic_room();
            if room == 0 {
                continue;
            }
            if let Some(bytes) = self.0.traffic.take_changed(room) {
                let _ = self.0.driver.try_send(DriverCmd::Update(RecordUpdate::Ext {
                    key: crate::traffic::TRAFFIC_EXT_KEY.into(),
                    value: Some(bytes),
                }));
            }
        }
    }

    /// Bytes the traffic summary may take in this node's record: whatever the rest of the
    /// record leaves under the record limit (minus room for the signature envelope), so the
    /// summary can never push an agent update over the limit.
    fn traffic_room(&self) -> usize {
        const ENVELOPE_BYTES: usize = 512;
        let snap = snapshot(&self.0.gossip);
        let Some(rec) = snap
            .members
            .iter()
            .find(|m| m.node_id == self.0.node_id)
            .and_then(|m| m.record.clone())
        else {
            return 0;
        };
        let mut rest = (*rec).clone();
        rest.ext.remove(crate::traffic::TRAFFIC_EXT_KEY);
        let used = postcard::to_stdvec(&rest)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        agentmesh_gossip::record::RECORD_BYTES_MAX
            .saturating_sub(ENVELOPE_BYTES)
            .saturating_sub(used)
    }

    /// The Prometheus exposition of this node's metrics.
    pub fn metrics_text(&self) -> String {
        let snap = snapshot(&self.0.gossip);
        let mut members: BTreeMap<&'static str, u64> = BTreeMap::new();
        for s in ["alive", "suspect", "dead", "left"] {
            members.insert(s, 0);
        }
        for m in snap.members.iter() {
            *members.entry(state_name(m.state)).or_default() += 1;
        }
        let state = crate::metrics::ScrapeState {
            in_flight_inbound: self.0.agent.in_flight(),
            in_flight_outbound: self.0.outbound.load(Ordering::Acquire),
            overloaded_total: self.0.agent.overloaded_total.load(Ordering::Relaxed),
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
                    (b.node_id, b.agent, v)
                })
                .collect(),
            security: self.security_scrape(),
        };
        self.0.metrics.encode(&state)
    }

    /// This node's circuit breakers, with the agent each target node runs.
    pub fn breakers(&self) -> Vec<crate::mesh_view::BreakerRow> {
        let snap = snapshot(&self.0.gossip);
        self.0
            .res
            .breaker_states()
            .into_iter()
            .map(|(node, state)| {
                let agent = snap
                    .members
                    .iter()
                    .find(|m| m.node_id == node)
                    .map(crate::mesh_view::agent_name)
                    .unwrap_or_else(|| crate::metrics::NONE_LABEL.into());
                crate::mesh_view::BreakerRow {
                    node_id: node.to_string(),
                    agent,
                    state: state.name().into(),
                }
            })
            .collect()
    }

    /// The mesh-wide traffic matrix from every node's gossiped summary.
    pub fn mesh_matrix(&self) -> crate::mesh_view::Matrix {
        let snap = snapshot(&self.0.gossip);
        crate::mesh_view::matrix(&self.0.node_id, &snap.members, &self.0.traffic.summary())
    }

    /// The mesh-wide summary: slowest pairs, most-called and idle agents, breakers.
    pub fn mesh_summary(&self) -> crate::mesh_view::Summary {
        let m = self.mesh_matrix();
        crate::mesh_view::summary(&m, self.breakers(), self.0.traffic.slowest(now_ms()))
    }

    async fn publish_load(self) {
        let mut last = u32::MAX;
        let mut tick = tokio::time::interval(LOAD_PUBLISH_INTERVAL);
        loop {
            tick.tick().await;
            let now = self.0.agent.in_flight();
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

struct OutboundGuard(Arc<std::sync::atomic::AtomicU32>);

impl OutboundGuard {
    fn new(c: Arc<std::sync::atomic::AtomicU32>) -> Self {
        c.fetch_add(1, Ordering::AcqRel);
        OutboundGuard(c)
    }
}

impl Drop for OutboundGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Splits offers into eligible candidates and `(candidate, why not)`.
fn split_offers(
    offers: Vec<(Candidate, Option<String>)>,
) -> (Vec<Candidate>, Vec<(Candidate, String)>) {
    let mut ok = Vec::new();
    let mut not = Vec::new();
    for (c, why) in offers {
        match why {
            None => ok.push(c),
            Some(w) => not.push((c, w)),
        }
    }
    (ok, not)
}

fn validate_call(req: &CallRequest) -> Result<(), CallError> {
    if req.capability.is_empty() || req.capability.len() > CAPABILITY_LEN_MAX {
        return Err(CallError::bad_field(
            "capability",
            format!("capability must be 1..={CAPABILITY_LEN_MAX} bytes"),
        ));
    }
    if req.body.len() > BODY_BYTES_MAX {
        return Err(CallError::bad_field(
            "body",
            format!("body exceeds {BODY_BYTES_MAX} bytes"),
        ));
    }
    if req.attrs.len() > crate::call_proto::CALL_ATTRS_MAX {
        return Err(CallError::bad_field(
            "attrs",
            "too many attribute constraints",
        ));
    }
    Ok(())
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Serving => "serving",
        Health::Draining => "draining",
        Health::Degraded => "degraded",
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
