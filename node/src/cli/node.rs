//! `agentmesh node`: starting a node from `node.toml`: the file's settings become the runtime's configuration
//! here, where the CLI starts the node, so `config` knows nothing of the runtime.

use super::*;
use crate::config::{check_addrs, ConfigError, NodeConfig, ProfileName};
use crate::membership::GossipProfile;
use crate::runtime::RuntimeConfig;
use crate::security::admission::AdmissionMode;
use crate::security::certs::load_cert_file;

/// Reads the key and certificate files named by `cfg` and builds the runtime's
/// configuration. `extra_seeds` (from `--join`) are added to the file's seeds.
pub fn runtime_config(
    cfg: &NodeConfig,
    extra_seeds: &[String],
) -> Result<RuntimeConfig, ConfigError> {
    let file_name = cfg.path.display().to_string();
    let err = |field: &str, message: String| ConfigError {
        file: file_name.clone(),
        field: field.to_string(),
        message,
    };
    check_addrs("--join", extra_seeds).map_err(|(f, m)| err(&f, m))?;
    let n = &cfg.file.node;
    let key = agentmesh_crypto::keyfile::load(&n.key_file)
        .map_err(|e| err("node.key_file", e.to_string()))?;
    let cert = match &n.cert_file {
        Some(p) => Some(load_cert_file(p).map_err(|e| err("node.cert_file", e))?),
        None => None,
    };
    if let (Some(c), Some((_, mesh_id))) = (&cert, &cfg.enforced) {
        let claimed = c
            .claimed()
            .map_err(|e| err("node.cert_file", e.to_string()))?;
        if claimed.node_id != key.node_id() {
            return Err(err(
                "node.cert_file",
                format!(
                    "certificate is for node {}, but node.key_file is node {}",
                    claimed.node_id,
                    key.node_id()
                ),
            ));
        }
        if &claimed.mesh_id != mesh_id {
            return Err(err(
                "node.cert_file",
                format!(
                    "certificate is for mesh {:?}, but mesh.mesh_id is {mesh_id:?}",
                    claimed.mesh_id
                ),
            ));
        }
    }
    let admission = match &cfg.enforced {
        Some((root, mesh_id)) => AdmissionMode::Enforced {
            root: *root,
            mesh_id: mesh_id.clone(),
        },
        None => AdmissionMode::Open,
    };
    let mut seeds = n.seeds.clone();
    seeds.extend(extra_seeds.iter().cloned());
    Ok(RuntimeConfig {
        key,
        cert,
        admission,
        listen: n.listen.clone(),
        call_port: n.call_port,
        seeds,
        mdns: n.mdns,
        profile: match n.gossip_profile {
            ProfileName::Lan => GossipProfile::Lan,
            ProfileName::Wan => GossipProfile::Wan,
        },
        agent: cfg.file.agent.clone(),
        priority: n.priority,
        locality: crate::routing::locality::Locality::new(&n.zone, &n.region)
            .map_err(|(f, m)| err(&format!("node.{f}"), m))?,
        mesh: cfg.mesh.clone(),
        security: crate::security::SecurityConfig {
            policy: match &cfg.file.rbac {
                Some(r) => Some(
                    crate::security::rbac::Policy::load(&r.policy_file)
                        .map_err(|e| err("rbac.policy_file", e.to_string()))?,
                ),
                None => None,
            },
            audit: cfg.file.audit.clone(),
            cert_file: n.cert_file.clone(),
            revocations_file: Some(n.state_dir.join(crate::security::REVOCATIONS_FILE)),
        },
        vote_signer: None,
    })
}

/// What `node.json` in the state dir records about a running node.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    /// The node id.
    pub node_id: String,
    /// Process id.
    pub pid: u32,
    /// `running` or `stopped`.
    pub status: String,
    /// The API's URL.
    pub api: String,
    /// The QUIC listen addresses, with the node's peer id.
    pub listen_addrs: Vec<String>,
    /// The config file.
    pub config: PathBuf,
    /// Start time, unix seconds.
    pub started_unix_s: u64,
}

pub(crate) async fn run_node(a: NodeArgs) -> CmdResult {
    run_node_with(a, |_| {}).await
}

/// Runs a node like `agentmesh node`, after `adjust` changed the runtime configuration built
/// from `node.toml` (for programs that embed a node, such as a test's misbehaving voter).
pub async fn run_node_with(
    a: NodeArgs,
    adjust: impl FnOnce(&mut RuntimeConfig),
) -> Result<(), Failure> {
    let mut cfg = NodeConfig::load(&a.config).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    cfg.override_api(a.api_listen, a.api_insecure_bind)
        .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    let mut rt_cfg =
        runtime_config(&cfg, &a.join).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    adjust(&mut rt_cfg);
    if cfg.enforced.is_none() {
        tracing::warn!(
            "mesh.admission = \"open\": ANY peer may join this mesh and call its agents; \
             use this for demos only"
        );
    }
    if cfg.file.rbac.is_none() {
        tracing::warn!(
            "no [rbac] policy_file: every admitted peer may call this node's agent (only \
             `mesh.audit`, reading this node's audit log, stays denied); set [rbac] policy_file \
             (see examples/policy.toml) for deny-by-default"
        );
    }
    if cfg.file.audit.is_none() {
        tracing::warn!("no [audit] section: calls to and from this node are not audited");
    }
    let state_dir = cfg.file.node.state_dir.clone();
    create_private_dir(&state_dir)?;
    let pid_path = state_dir.join(PID_FILE);
    claim_pid_file(&pid_path)?;
    let result = serve_node(&cfg, rt_cfg, &state_dir).await;
    let _ = std::fs::remove_file(&pid_path);
    result
}

/// Writes our pid, refusing if a live process already holds the file.
pub(crate) fn claim_pid_file(path: &Path) -> CmdResult {
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if alive && pid as u32 != std::process::id() {
                return Err(fail(
                    exit::FAILURE,
                    format!("{}: node already running as pid {pid}", path.display()),
                ));
            }
        }
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", path.display())))
}

pub(crate) async fn serve_node(
    cfg: &NodeConfig,
    rt_cfg: crate::runtime::RuntimeConfig,
    state_dir: &Path,
) -> CmdResult {
    let listener = tokio::net::TcpListener::bind(cfg.api_listen)
        .await
        .map_err(|e| {
            fail(
                exit::FAILURE,
                format!("node.api_listen {}: {e}", cfg.api_listen),
            )
        })?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let mesh = MeshHandle::start(rt_cfg)
        .await
        .map_err(|e| fail(exit::FAILURE, format!("mesh runtime: {e:#}")))?;
    let node_id = mesh.node_id().to_string();
    let mut state = NodeState {
        node_id: node_id.clone(),
        pid: std::process::id(),
        status: "running".into(),
        api: format!("http://{api_addr}"),
        listen_addrs: mesh.listen_addrs(),
        config: cfg.path.clone(),
        started_unix_s: now_unix_s(),
    };
    write_state(state_dir, &state)?;
    tracing::info!(node_id = %node_id, api = %state.api, listen = ?state.listen_addrs, "node up");

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let workflows = match &cfg.file.workflows {
        Some(w) => {
            let set = crate::workflow::WorkflowSet::load(&w.paths)
                .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            tracing::info!(workflows = set.len(), "workflows loaded");
            set
        }
        None => Default::default(),
    };
    let mcp_cfg = cfg.file.mcp.clone().unwrap_or_default();
    let mcp = crate::mcp::agents::McpAgents::new(
        mesh.clone(),
        mcp_cfg.agent.clone(),
        mcp_cfg.max_concurrency,
    );
    mcp.start_config(&mcp_cfg)
        .await
        .map_err(|e| fail(exit::CONFIG, format!("mcp: {e}")))?;
    let app = crate::api::api_with_mcp(mesh.clone(), cfg.file.api.token.clone(), workflows, mcp);
    if let Some(a2a) = cfg.file.a2a.clone() {
        a2a.card_url().map_err(|e| fail(exit::CONFIG, e))?;
        tokio::spawn(crate::a2a::bridge::register_from_config(mesh.clone(), a2a));
    }
    let server = tokio::spawn(crate::api::edge::serve(listener, app, async move {
        let _ = stop_rx.changed().await;
    }));
    let path = cfg.path.clone();
    mesh.set_settings_source(move || {
        crate::config::NodeConfig::load(&path)
            .map(|c| c.mesh)
            .map_err(|e| e.to_string())
    });
    let reloader = tokio::spawn(crate::cli::config::reload_on_sighup(mesh.clone()));
    let signal = wait_for_signal().await;
    reloader.abort();
    let drain = Duration::from_millis(cfg.file.node.drain_timeout_ms);
    tracing::info!(%signal, drain_ms = drain.as_millis() as u64, "leaving the mesh and draining");
    mesh.shutdown(drain).await;
    let _ = stop_tx.send(true);
    // In-flight API responses finished with the drain; do not hang on idle keep-alives.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    state.status = "stopped".into();
    write_state(state_dir, &state)?;
    tracing::info!("node stopped");
    Ok(())
}

pub(crate) fn write_state(dir: &Path, state: &NodeState) -> CmdResult {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text =
        serde_json::to_string_pretty(state).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", path.display())))
}

/// Resolves on SIGTERM or SIGINT, naming which.
pub(crate) async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => tokio::select! {
            _ = t.recv() => "SIGTERM",
            _ = i.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
