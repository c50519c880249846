//! The mesh runtime: composes one node behind one cloneable [`MeshHandle`], and does nothing
//! else. The call path lives in `call/` ([`Outbound`]), routing in `routing/`.
//!
//! Layering (parents pass commands down, children report up):
//! `MeshHandle` → { `net::transport` (swarm task), `security::admission` (per-peer verdicts),
//! `membership::driver` (owns the gossip state machine), `call::callee` (inbound calls),
//! `call::pipeline` (outbound calls) }; `join.rs` admits and joins, `obs.rs` reports.

use crate::call::callee::{self, Callee, LocalAgent};
use crate::call::caller::{self};
use crate::contract::names::{health_name, state_name};
use crate::contract::{
    AgentRegistration, CallError, CallRequest, CallResponse, ErrorCode, MemberInfo,
    RouteExplanation,
};
use crate::membership::driver::{
    self as driver, now_ms, snapshot, DriverCmd, DriverStats, GossipInit,
};
use crate::net::transport::{self, SwarmCmd, TransportEvent, ADMIT_PROTOCOL};
use crate::routing::router::{self, Candidate, Router};
use crate::routing::settings::MeshConfig;
use crate::routing::state::Resilience;
pub use crate::routing::state::{spec_now, SharedSpec};
use crate::security::admission::{
    self, AdmissionReport, AdmissionTable, AdmitHello, AdmitVerdict, PeerVerdict, ADMIT_TIMEOUT,
};
use agentmesh_crypto::{Keypair, NodeId, SignedCert};
use agentmesh_gossip::member::{ADDRS_MAX, ADDR_LEN_MAX};
use agentmesh_gossip::record::{AgentInfo, Health, NodeRecord, Priority};
use agentmesh_gossip::{Admission, Config, MemberState, RecordUpdate};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::call::pipeline::Outbound;
pub use crate::call::pipeline::DEADLINE_MAX_MS;
pub use crate::security::admission::AdmissionMode;

mod audit;
mod evidence;
mod join;
mod obs;
mod schemas;
mod security;
pub use audit::{NodeAudit, AUDIT_ANSWER_TIMEOUT};

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

pub use crate::membership::GossipProfile;

/// Everything the runtime needs; plain data, built by `cli/node.rs` from `node.toml`.
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
    /// Zone and region labels, published in the signed record.
    pub locality: crate::routing::locality::Locality,
    /// Routing and resilience settings (`[defaults]`, `[capability."…"]`).
    pub mesh: MeshConfig,
    /// RBAC policy, audit log and certificate renewal (`[rbac]`, `[audit]`).
    pub security: crate::security::SecurityConfig,
    /// Signs quorum votes in place of the node key (None: the node key signs).
    pub vote_signer: Option<Arc<dyn crate::security::vote::VoteSigner>>,
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
            locality: Default::default(),
            mesh: MeshConfig::default(),
            security: Default::default(),
            vote_signer: None,
        }
    }
}

/// Reads fresh routing and resilience settings (from `node.toml`, in the CLI).
type SettingsSource = Box<dyn Fn() -> Result<MeshConfig, String> + Send + Sync>;

struct Inner {
    /// The outbound call pipeline and the state it shares with the rest of the node.
    calls: Outbound,
    driver: mpsc::Sender<DriverCmd>,
    settings_source: Mutex<Option<SettingsSource>>,
    driver_stats: Arc<DriverStats>,
    seeded: bool,
    joined: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    schemas: Arc<crate::routing::schemas::SchemaStore>,
    voter: crate::security::vote::Voter,
    /// Equivocation proofs caught here or received by gossip.
    evidence: crate::security::evidence::EvidenceStore,
    /// Dissenting votes that arrived after their quorum's decision.
    late_dissent: std::sync::atomic::AtomicU64,
}

/// The running mesh node. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle(Arc<Inner>);

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshHandle({})", self.0.calls.node_id)
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
        capabilities: reg.capabilities.iter().map(|c| c.to_capability()).collect(),
    }
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
            crate::contract::validate_registration(reg)
                .map_err(|e| anyhow::anyhow!("agent: {e}"))?;
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
        // Capped at what the certificate grants (warns if node.toml asks for more).
        let priority = crate::security::own_priority(cfg.cert.as_ref(), cfg.priority);
        record.priority = priority;
        if let Some(bytes) = cfg.locality.encode() {
            record
                .ext
                .insert(crate::routing::locality::LOCALITY_EXT.into(), bytes);
        }
        let driver_stats = Arc::new(DriverStats::default());
        let (driver, gossip) = driver::spawn(
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
            calls: Outbound {
                node_id,
                transport: transport.clone(),
                gossip,
                admission: admission.clone(),
                agent: agent.clone(),
                router: Router::new(),
                res: Resilience::new(cfg.mesh.clone(), rand::random::<u64>()),
                sec: sec.clone(),
                metrics: Arc::new(crate::obs::metrics::Metrics::new()),
                traffic: Arc::new(crate::obs::traffic::TrafficTable::default()),
                shutting_down: AtomicBool::new(false),
                outbound: Arc::new(std::sync::atomic::AtomicU32::new(0)),
                priority,
                locality: cfg.locality.clone(),
            },
            driver,
            settings_source: Mutex::new(None),
            driver_stats,
            seeded: !cfg.seeds.is_empty(),
            joined: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            schemas: Arc::new(crate::routing::schemas::SchemaStore::default()),
            voter: {
                let mesh_id = match &cfg.admission {
                    AdmissionMode::Enforced { mesh_id, .. } => mesh_id.clone(),
                    AdmissionMode::Open => String::new(),
                };
                let v = crate::security::vote::Voter::new(cfg.key.clone(), mesh_id);
                match &cfg.vote_signer {
                    Some(s) => v.with_signer(s.clone()),
                    None => v,
                }
            },
            evidence: Default::default(),
            late_dissent: Default::default(),
        });
        let handle = MeshHandle(inner);
        if let Some(reg) = &cfg.agent {
            handle.0.schemas.set_local(&reg.capabilities);
        }
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
        let schema_in = control
            .accept(transport::SCHEMA_PROTOCOL)
            .map_err(|e| anyhow::anyhow!("schema protocol: {e}"))?;
        let mut tasks = vec![
            tokio::spawn(handle.clone().schema_accept_loop(schema_in)),
            tokio::spawn(handle.clone().connection_events(events, hello, cfg.mdns)),
            tokio::spawn(handle.clone().admit_inbound(admit_in)),
            tokio::spawn(callee::accept_loop(
                Callee {
                    agent,
                    admission,
                    gossip: handle.0.calls.gossip.clone(),
                    spec: handle.0.calls.res.spec.clone(),
                    voter: handle.0.voter.clone(),
                    node_id,
                    metrics: handle.0.calls.metrics.clone(),
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
        self.0.calls.node_id
    }

    /// The multiaddrs this node listens on (as others should dial them).
    pub fn listen_addrs(&self) -> Vec<String> {
        self.0
            .calls
            .transport
            .listen_addrs
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Every known member, self included.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = self.0.calls.node_id;
        snapshot(&self.0.calls.gossip)
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
        for m in snapshot(&self.0.calls.gossip).members.iter() {
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
        let spec = spec_now(&self.0.calls.res.spec);
        let settings = spec.for_capability(&req.capability);
        let offers = router::offers(
            &snapshot(&self.0.calls.gossip).members,
            self.0.calls.node_id,
            req,
        );
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let (cands, mut ineligible) = crate::call::pipeline::split_offers(offers);
        let (cands, forbidden) = self.0.calls.sec.split_forbidden(cands, &req.capability);
        ineligible.extend(forbidden);
        let views = self.0.calls.res.views(
            &cands,
            &self.0.calls.router,
            &self.0.calls.agent,
            &settings.breaker,
            &self.0.calls.locality,
        );
        self.0
            .calls
            .res
            .explain(&cands, &ineligible, &views, req, settings)
    }

    /// The resilience settings in force.
    pub fn mesh_config(&self) -> Arc<MeshConfig> {
        spec_now(&self.0.calls.res.spec)
    }

    /// Replaces the resilience settings. Calls in flight keep the settings they started with;
    /// observations and breaker states carry over.
    pub fn set_mesh_config(&self, spec: MeshConfig) {
        self.0.calls.res.set_spec(spec);
        tracing::info!("routing and resilience settings applied");
    }

    /// Where [`MeshHandle::reload_config`] reads settings from (the CLI passes a reader of
    /// `node.toml`, so the runtime knows nothing of the file format).
    pub fn set_settings_source(
        &self,
        source: impl Fn() -> Result<MeshConfig, String> + Send + Sync + 'static,
    ) {
        *lock(&self.0.settings_source) = Some(Box::new(source));
    }

    /// Re-reads the settings source and applies its routing and resilience settings. Settings
    /// that fail validation are refused (the error names file, key and valid values) and the
    /// settings in force stay.
    pub fn reload_config(&self) -> Result<Arc<MeshConfig>, String> {
        let spec = {
            let source = lock(&self.0.settings_source);
            let read = source
                .as_ref()
                .ok_or_else(|| "this node was not started from a config file".to_string())?;
            read()?
        };
        self.set_mesh_config(spec);
        Ok(self.mesh_config())
    }

    /// The local agent's registration, if one is registered.
    pub fn agent_registration(&self) -> Option<AgentRegistration> {
        self.0.calls.agent.registration().map(|r| (*r).clone())
    }

    /// Registers or replaces the local agent and publishes it in this node's record.
    pub async fn register_agent(&self, reg: AgentRegistration) -> Result<(), CallError> {
        crate::contract::validate_registration(&reg)?;
        let info = agent_info(&reg);
        let max = reg.max_concurrency;
        self.0.schemas.set_local(&reg.capabilities);
        self.0.calls.agent.set_registration(Some(reg));
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
    /// deadline (see [`Outbound::call`]). The input is first checked against the capability's
    /// input schema when its offers declare one: a bad input is a `bad_request`, no hop made.
    pub async fn call(&self, req: CallRequest) -> Result<CallResponse, CallError> {
        self.check_input(&req).await?;
        self.0.calls.call(req).await
    }

    /// The live candidates for `req`, best first (see [`Outbound::ranked_candidates`]).
    pub fn ranked_candidates(&self, req: &CallRequest) -> Result<Vec<Candidate>, CallError> {
        self.0.calls.ranked_candidates(req)
    }

    /// Counts a failure against `node`'s observed quality (a quorum dissent or
    /// equivocation): routing by `quality` then sends it less traffic.
    pub fn penalize(&self, node: NodeId, capability: &str) {
        self.0.calls.res.penalize(node, Some(capability));
    }

    /// Counts a failure against every capability `node` serves (an equivocation proof from
    /// gossip names the node, not the capability it lied about).
    pub fn penalize_node(&self, node: NodeId) {
        self.0.calls.res.penalize(node, None);
    }

    /// This node's vote signer.
    pub fn voter(&self) -> &crate::security::vote::Voter {
        &self.0.voter
    }

    /// True once the node is serving and, if it has seeds, has joined through one of them.
    pub fn is_ready(&self) -> bool {
        !self.0.calls.shutting_down.load(Ordering::Acquire)
            && (!self.0.seeded || self.0.joined.load(Ordering::Acquire))
    }

    /// A one-line admission status: `ok (…)` or `admission rejected by <peer>: <reason>`.
    pub fn admission_status(&self) -> String {
        self.0.calls.admission.report().to_string()
    }

    /// The admission status as data.
    pub fn admission_report(&self) -> AdmissionReport {
        self.0.calls.admission.report()
    }

    /// Calls in flight to the local agent now (inbound mesh calls and local calls).
    pub fn local_in_flight(&self) -> u32 {
        self.0.calls.agent.in_flight()
    }

    /// Peers this node refused at admission since start.
    pub fn admission_rejections(&self) -> u64 {
        self.0.calls.admission.rejected_total()
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
        if self.0.calls.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("leaving the mesh");
        self.0.calls.agent.set_draining();
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
        while (self.0.calls.agent.in_flight() > 0
            || self.0.calls.outbound.load(Ordering::Acquire) > 0)
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(a) = &self.0.calls.sec.audit {
            a.flush().await;
        }
        let _ = self.0.driver.send(DriverCmd::Stop).await;
        let _ = self.0.calls.transport.cmds.send(SwarmCmd::Shutdown).await;
        for t in lock(&self.0.tasks).drain(..) {
            t.abort();
        }
        tracing::info!("mesh node stopped");
    }

    // ---- background tasks ----
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
