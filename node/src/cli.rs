//! The `agentmesh` command line (clap derive). Read commands take `--json`; human output fits
//! in 100 columns. Exit codes are listed in [`exit`].

use crate::api::{ATTEMPTS_HEADER, SERVED_BY_HEADER};
use crate::config::{load_cert_file, save_cert_file, NodeConfig};
use crate::demo_agent::DemoAgentOptions;
use crate::runtime::MeshHandle;
use agentmesh_crypto::{AdmissionCert, Keypair, NodeId};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit codes with a meaning scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed at run time (I/O, the mesh would not start, …).
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// A config, key or certificate file is missing or invalid.
    pub const CONFIG: u8 = 3;
    /// The node's API could not be reached.
    pub const UNREACHABLE: u8 = 4;
    /// The node answered with an error (the call or query failed).
    pub const REMOTE_ERROR: u8 = 5;
}

/// Widest line of human output.
pub const HUMAN_COLS_MAX: usize = 100;
/// Longest admission TTL `agentmesh admit` signs, in seconds (10 years).
pub const CERT_TTL_S_MAX: u64 = 10 * 365 * 86_400;
/// Timeout of one CLI request to a node's API, in ms (calls use their deadline plus this).
pub const CLI_HTTP_TIMEOUT_MS: u64 = 10_000;
/// Largest response body the CLI reads from a node, in bytes.
pub const CLI_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The default API URL of CLI commands.
pub const API_URL_DEFAULT: &str = "http://127.0.0.1:7600";
/// Name of the pid file in a node's state dir.
pub const PID_FILE: &str = "agentmesh.pid";
/// Name of the state file in a node's state dir.
pub const STATE_FILE: &str = "node.json";

/// agentmesh: a decentralized P2P mesh for AI agents.
///
/// Exit codes: 0 ok, 1 failure, 2 usage, 3 bad config/key/cert file, 4 node API unreachable,
/// 5 the node answered with an error.
#[derive(Debug, Parser)]
#[command(name = "agentmesh", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a node key (ed25519, mode 0600) and print its node id.
    Keygen(KeygenArgs),
    /// Manage the mesh root.
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Sign an admission certificate for a node with the mesh root key.
    Admit(AdmitArgs),
    /// Run a node until SIGTERM or SIGINT.
    Node(NodeArgs),
    /// List the mesh members a node sees.
    Members(ReadArgs),
    /// Show the ranked candidates for a capability and why.
    Routes(RoutesArgs),
    /// Call a capability through a node and print the answer.
    Call(CallArgs),
    /// Run the demo agent: a fast HTTP agent with configurable latency and errors.
    DemoAgent(DemoAgentArgs),
    /// Check, show or reload the routing and resilience settings.
    #[command(subcommand)]
    Config(crate::cli_config::ConfigCommand),
    /// Run or check a workflow file.
    #[command(subcommand)]
    Workflow(crate::cli_workflow::WorkflowCommand),
    /// Ask n agents on distinct nodes and decide by (byzantine) quorum; `quorum verify FILE`
    /// checks a saved decision offline.
    Quorum(crate::cli_workflow::QuorumArgs),
    /// Live view of mesh-wide traffic: busiest and slowest pairs, hot and idle agents.
    Top(crate::cli_top::TopArgs),
    /// Revoke a node with the mesh root key; the revocation spreads by gossip.
    Revoke(crate::cli_security::RevokeArgs),
    /// Verify or query the audit log.
    #[command(subcommand)]
    Audit(crate::cli_security::AuditCommand),
    /// Validate, sign or distribute an RBAC policy.
    #[command(subcommand)]
    Policy(crate::cli_security::PolicyCommand),
}

/// `agentmesh mesh …`.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a mesh root key and print its public node id.
    Init(MeshInitArgs),
}

/// `agentmesh keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key; refuses to overwrite.
    #[arg(long, default_value = "node.key")]
    pub out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh mesh init`.
#[derive(Debug, Args)]
pub struct MeshInitArgs {
    /// Directory for `root.key` and `mesh.toml`.
    #[arg(long, env = "AGENTMESH_HOME", default_value = ".agentmesh")]
    pub dir: PathBuf,
    /// The mesh id certificates will name (default: random).
    #[arg(long)]
    pub mesh_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh admit`.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The mesh root key file (from `agentmesh mesh init`).
    #[arg(long)]
    pub root: PathBuf,
    /// The node id to admit (printed by `agentmesh keygen`).
    #[arg(long)]
    pub node_pub: String,
    /// Comma-separated roles.
    #[arg(long, value_delimiter = ',', default_value = "agent")]
    pub roles: Vec<String>,
    /// Validity, e.g. 3600s, 90m, 12h, 30d.
    #[arg(long, default_value = "30d")]
    pub ttl: String,
    /// The mesh id (default: from mesh.toml beside the root key).
    #[arg(long)]
    pub mesh_id: Option<String>,
    /// Write the certificate here (default: print it to stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node.toml to run with.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Extra seed multiaddrs to join through (repeatable).
    #[arg(long = "join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// Serve the local API here instead of node.api_listen.
    #[arg(long, value_name = "ADDR")]
    pub api_listen: Option<SocketAddr>,
    /// Allow a non-loopback API address (api.token is still required).
    #[arg(long)]
    pub api_insecure_bind: bool,
}

/// Options shared by commands that talk to a node's API.
#[derive(Debug, Args, Clone)]
pub struct ApiArgs {
    /// The node's API.
    #[arg(long, env = "AGENTMESH_API", default_value = API_URL_DEFAULT)]
    pub api: String,
    /// Bearer token, if the node sets api.token.
    #[arg(long, env = "AGENTMESH_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `agentmesh members`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Which node to ask.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh routes`.
#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// The capability.
    pub capability: String,
    /// Attribute constraint k=v (repeatable).
    #[arg(long = "attr", value_name = "K=V")]
    pub attrs: Vec<String>,
    /// Minimum proficiency: novice | experienced | expert.
    #[arg(long)]
    pub min_proficiency: Option<String>,
    /// Routing policy to explain (default: the capability's).
    #[arg(long)]
    pub policy: Option<String>,
    /// Complexity hint: low | high.
    #[arg(long)]
    pub complexity: Option<String>,
    /// Which node to ask.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The capability.
    pub capability: String,
    /// The JSON body.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Attribute constraint k=v (repeatable).
    #[arg(long = "attr", value_name = "K=V")]
    pub attrs: Vec<String>,
    /// Minimum proficiency: novice | experienced | expert.
    #[arg(long)]
    pub min_proficiency: Option<String>,
    /// Deadline for the whole call, in ms.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Preferred agent name or node id.
    #[arg(long)]
    pub prefer: Option<String>,
    /// Routing policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Which node to ask.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `agentmesh demo-agent`.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct DemoAgentArgs {
    /// Address to serve on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8100")]
    pub listen: SocketAddr,
    /// Agent name, echoed in answers.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Median latency in ms.
    #[arg(long, default_value_t = 0.0)]
    pub latency_ms_p50: f64,
    /// 99th percentile latency in ms.
    #[arg(long, default_value_t = 0.0)]
    pub latency_ms_p99: f64,
    /// Fraction of calls that answer 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Seed of latency and error draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Capabilities answered (comma-separated; empty answers any).
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Cost per call declared when registering.
    #[arg(long, default_value_t = 0.0)]
    pub cost: f64,
    /// Proficiency declared when registering.
    #[arg(long, default_value = "experienced")]
    pub proficiency: String,
    /// Register with this node API (`PUT /v1/agent`) once serving.
    #[arg(long, value_name = "API_URL")]
    pub register: Option<String>,
    /// Write the bound address to this file once serving.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Call this capability onward through the node, passing on the chain and deadline.
    #[arg(long, value_name = "CAP")]
    pub forward: Option<String>,
    /// The node API used by `--forward` (default: the `--register` URL).
    #[arg(long, value_name = "API_URL")]
    pub node_api: Option<String>,
    // Workflow examples and quorum tests use it: a liar is a fixed wrong answer.
    /// Answer CAP with this fixed JSON, not the echo (`*`: every capability); repeatable.
    #[arg(long, value_name = "CAP=JSON")]
    pub answer: Vec<String>,
    /// HTTP status of injected failures (callers retry 503 and 429, not 500).
    #[arg(long, default_value_t = 500)]
    pub error_status: u16,
}

/// A command's failure: an exit code and a message for stderr.
#[derive(Debug)]
pub struct Failure {
    /// Exit code, one of [`exit`].
    pub code: u8,
    /// What went wrong.
    pub message: String,
}

pub(crate) fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

pub(crate) type CmdResult = Result<(), Failure>;

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Keygen(a) => keygen(a),
        Command::Mesh(MeshCommand::Init(a)) => mesh_init(a),
        Command::Admit(a) => admit(a),
        Command::Node(a) => run_node(a).await,
        Command::Members(a) => members(a).await,
        Command::Routes(a) => routes(a).await,
        Command::Call(a) => call(a).await,
        Command::DemoAgent(a) => demo_agent(a).await,
        Command::Config(c) => crate::cli_config::run(c).await,
        Command::Workflow(c) => crate::cli_workflow::run_workflow(c).await,
        Command::Quorum(a) => crate::cli_workflow::run_quorum(a).await,
        Command::Top(a) => crate::cli_top::run(a).await,
        Command::Revoke(a) => crate::cli_security::revoke(a).await,
        Command::Audit(c) => crate::cli_security::audit(c).await,
        Command::Policy(c) => crate::cli_security::policy(c).await,
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

pub(crate) fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn os_rng() -> rand::rngs::OsRng {
    rand::rngs::OsRng
}

fn keygen(a: KeygenArgs) -> CmdResult {
    let key = Keypair::generate(&mut os_rng());
    agentmesh_crypto::keyfile::save(&a.out, &key)
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let id = key.node_id().to_string();
    if a.json {
        print_json(&serde_json::json!({"node_id": id, "key_file": a.out}));
    } else {
        println!("{id}");
    }
    Ok(())
}

/// `mesh.toml` beside a root key: which mesh the key is the root of.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The mesh id certificates name.
    pub mesh_id: String,
    /// The root's node id.
    pub root_pub: String,
}

fn mesh_init(a: MeshInitArgs) -> CmdResult {
    let mesh_id = match a.mesh_id {
        Some(m) => m,
        None => format!("mesh-{:08x}", rand::Rng::gen::<u32>(&mut os_rng())),
    };
    if mesh_id.is_empty() || mesh_id.len() > agentmesh_crypto::cert::MESH_ID_LEN_MAX {
        return Err(fail(
            exit::USAGE,
            format!(
                "--mesh-id must be 1 to {} bytes",
                agentmesh_crypto::cert::MESH_ID_LEN_MAX
            ),
        ));
    }
    create_private_dir(&a.dir)?;
    let key_path = a.dir.join("root.key");
    let key = Keypair::generate(&mut os_rng());
    agentmesh_crypto::keyfile::save(&key_path, &key)
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let root_pub = key.node_id().to_string();
    let mesh = MeshFile {
        mesh_id: mesh_id.clone(),
        root_pub: root_pub.clone(),
    };
    let text = toml::to_string(&mesh).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    std::fs::write(a.dir.join("mesh.toml"), text)
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", a.dir.display())))?;
    if a.json {
        print_json(&serde_json::json!({
            "mesh_id": mesh_id, "root_pub": root_pub, "root_key": key_path,
        }));
    } else {
        println!("{root_pub}");
        eprintln!("mesh {mesh_id}: root key in {}", key_path.display());
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> CmdResult {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Parses a TTL like `3600s`, `90m`, `12h` or `30d` into seconds (at most [`CERT_TTL_S_MAX`]).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s:?}: expected a number and s | m | h | d, e.g. 30d"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s | m | h | d, e.g. 30d"))?;
    match n.checked_mul(mult) {
        Some(t) if t > 0 && t <= CERT_TTL_S_MAX => Ok(t),
        _ => Err(format!(
            "{s:?}: must be more than 0 and at most {CERT_TTL_S_MAX}s"
        )),
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn admit(a: AdmitArgs) -> CmdResult {
    let root =
        agentmesh_crypto::keyfile::load(&a.root).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    let node_id: NodeId = a.node_pub.parse().map_err(|_| {
        fail(
            exit::USAGE,
            format!(
                "--node-pub {:?} is not a node id (expected 12D3KooW…)",
                a.node_pub
            ),
        )
    })?;
    let ttl_s = parse_ttl(&a.ttl).map_err(|e| fail(exit::USAGE, format!("--ttl {e}")))?;
    let mesh_id = match a.mesh_id {
        Some(m) => m,
        None => read_mesh_file(&a.root)?.mesh_id,
    };
    let now = now_unix_s();
    let cert = AdmissionCert {
        mesh_id: mesh_id.clone(),
        node_id,
        roles: a.roles.clone(),
        not_before: now.saturating_sub(60),
        not_after: now + ttl_s,
    }
    .sign(&root)
    .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    if let Some(out) = &a.out {
        save_cert_file(out, &cert)
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", out.display())))?;
        // Read it back: what we wrote must be what a node will load.
        load_cert_file(out).map_err(|e| fail(exit::FAILURE, e))?;
    } else {
        println!("{}", hex::encode(cert.to_bytes()));
    }
    let summary = serde_json::json!({
        "mesh_id": mesh_id, "node_id": node_id.to_string(), "roles": a.roles,
        "not_after": now + ttl_s, "root_pub": root.node_id().to_string(), "cert_file": a.out,
    });
    if a.json {
        print_json(&summary);
    } else if a.out.is_some() {
        println!(
            "admitted {} to mesh {mesh_id} as [{}] for {}",
            node_id,
            a.roles.join(","),
            a.ttl
        );
    }
    Ok(())
}

/// Reads `mesh.toml` beside a root key (for commands in other modules).
pub(crate) fn read_mesh_file_pub(root_key: &Path) -> Result<MeshFile, Failure> {
    read_mesh_file(root_key)
}

fn read_mesh_file(root_key: &Path) -> Result<MeshFile, Failure> {
    let p = root_key
        .parent()
        .unwrap_or(Path::new("."))
        .join("mesh.toml");
    let text = std::fs::read_to_string(&p).map_err(|e| {
        fail(
            exit::CONFIG,
            format!(
                "{}: {e} (pass --mesh-id or keep mesh.toml beside the root key)",
                p.display()
            ),
        )
    })?;
    toml::from_str(&text).map_err(|e| fail(exit::CONFIG, format!("{}: {e}", p.display())))
}

// ---------------------------------------------------------------------------------------------
// agentmesh node

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

async fn run_node(a: NodeArgs) -> CmdResult {
    let mut cfg = NodeConfig::load(&a.config).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    cfg.override_api(a.api_listen, a.api_insecure_bind)
        .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    let rt_cfg = cfg
        .to_runtime(&a.join)
        .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    if cfg.enforced.is_none() {
        tracing::warn!(
            "mesh.admission = \"open\": ANY peer may join this mesh and call its agents; \
             use this for demos only"
        );
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
fn claim_pid_file(path: &Path) -> CmdResult {
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

async fn serve_node(
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
    let app = crate::api::router(mesh.clone(), cfg.file.api.token.clone());
    if let Some(a2a) = cfg.file.a2a.clone() {
        a2a.card_url().map_err(|e| fail(exit::CONFIG, e))?;
        tokio::spawn(crate::a2a_bridge::register_from_config(mesh.clone(), a2a));
    }
    let server = tokio::spawn(async move {
        // Nagle would hold a streamed body chunk behind the response head for ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.changed().await;
            })
            .await
    });
    mesh.set_config_path(cfg.path.clone());
    if let Some(w) = &cfg.file.workflows {
        let set = crate::workflow::WorkflowSet::load(&w.paths)
            .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
        tracing::info!(workflows = set.len(), "workflows loaded");
        mesh.set_workflows(set);
    }
    let reloader = tokio::spawn(crate::cli_config::reload_on_sighup(mesh.clone()));
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

fn write_state(dir: &Path, state: &NodeState) -> CmdResult {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text =
        serde_json::to_string_pretty(state).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", path.display())))
}

/// Resolves on SIGTERM or SIGINT, naming which.
async fn wait_for_signal() -> &'static str {
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

// ---------------------------------------------------------------------------------------------
// Commands that talk to a node's API.

/// An HTTP client with `timeout`.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(exit::FAILURE, e.to_string()))
}

pub(crate) fn url(api: &ApiArgs, path: &str) -> String {
    format!("{}{path}", api.api.trim_end_matches('/'))
}

pub(crate) fn authed(rb: reqwest::RequestBuilder, api: &ApiArgs) -> reqwest::RequestBuilder {
    match &api.token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

pub(crate) fn unreachable(api: &ApiArgs, e: reqwest::Error) -> Failure {
    fail(
        exit::UNREACHABLE,
        format!(
            "cannot reach the node API at {}: {e} (is the node running? see --api)",
            api.api
        ),
    )
}

/// Reads a response fully (up to [`CLI_RESPONSE_BYTES_MAX`]); a non-2xx status is a failure
/// carrying the node's error `code` and message.
pub(crate) async fn read_ok(
    api: &ApiArgs,
    resp: reqwest::Response,
) -> Result<bytes::Bytes, Failure> {
    let status = resp.status();
    let body = read_limited(resp).await.map_err(|e| unreachable(api, e))?;
    if status.is_success() {
        return Ok(body);
    }
    let msg = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => format!(
            "{} ({}): {}{}",
            v["code"].as_str().unwrap_or("error"),
            status.as_u16(),
            v["message"].as_str().unwrap_or(""),
            v["field"]
                .as_str()
                .map(|f| format!(" [field {f}]"))
                .unwrap_or_default()
        ),
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(&body)),
    };
    Err(fail(exit::REMOTE_ERROR, msg))
}

async fn read_limited(mut resp: reqwest::Response) -> Result<bytes::Bytes, reqwest::Error> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = CLI_RESPONSE_BYTES_MAX.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(out.freeze())
}

pub(crate) async fn get_json(api: &ApiArgs, path: &str) -> Result<serde_json::Value, Failure> {
    let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
    let resp = authed(c.get(url(api, path)), api)
        .send()
        .await
        .map_err(|e| unreachable(api, e))?;
    let body = read_ok(api, resp).await?;
    serde_json::from_slice(&body)
        .map_err(|e| fail(exit::REMOTE_ERROR, format!("node answered non-JSON: {e}")))
}

/// Shortens `s` to at most `n` characters, marking the cut with `…`.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

async fn members(a: ReadArgs) -> CmdResult {
    let v = get_json(&a.api, "/v1/members").await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!("{}", members_table(&v));
    Ok(())
}

/// The human table of `agentmesh members`, each line at most [`HUMAN_COLS_MAX`] columns.
pub fn members_table(v: &serde_json::Value) -> String {
    let empty = vec![];
    let list = v["members"].as_array().unwrap_or(&empty);
    let mut lines = vec![format!(
        "{:<12} {:<7} {:<9} {:<16} {}",
        "NODE", "STATE", "HEALTH", "AGENT", "CAPABILITIES"
    )];
    for m in list {
        let id = m["node_id"].as_str().unwrap_or("?");
        let short = &id[id.len().saturating_sub(10)..];
        let mark = if m["local"].as_bool().unwrap_or(false) {
            "*"
        } else {
            ""
        };
        let caps: Vec<&str> = m["capabilities"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let line = format!(
            "{:<12} {:<7} {:<9} {:<16} {}",
            format!("…{short}{mark}"),
            clip(m["state"].as_str().unwrap_or("?"), 7),
            clip(m["health"].as_str().unwrap_or("-"), 9),
            clip(m["agent"].as_str().unwrap_or("-"), 16),
            caps.join(",")
        );
        lines.push(clip(&line, HUMAN_COLS_MAX));
    }
    lines.push(format!("{} members (* = this node)", list.len()));
    lines.join("\n")
}

fn routing_query(attrs: &[String], min_proficiency: &Option<String>) -> Result<String, Failure> {
    let mut q = url_query();
    for kv in attrs {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| fail(exit::USAGE, format!("--attr {kv:?}: expected K=V")))?;
        q.append_pair(&format!("attr.{k}"), v);
    }
    if let Some(p) = min_proficiency {
        q.append_pair("min_proficiency", p);
    }
    let s = q.finish();
    Ok(if s.is_empty() { s } else { format!("?{s}") })
}

fn url_query() -> reqwest::Url {
    reqwest::Url::parse("http://q/").expect("static URL")
}

trait QueryBuild {
    fn append_pair(&mut self, k: &str, v: &str);
    fn finish(self) -> String;
}

impl QueryBuild for reqwest::Url {
    fn append_pair(&mut self, k: &str, v: &str) {
        self.query_pairs_mut().append_pair(k, v);
    }
    fn finish(self) -> String {
        self.query().unwrap_or("").to_string()
    }
}

async fn routes(a: RoutesArgs) -> CmdResult {
    let mut q = routing_query(&a.attrs, &a.min_proficiency)?;
    for (k, v) in [("policy", &a.policy), ("complexity", &a.complexity)] {
        if let Some(v) = v {
            let pair = reqwest::Url::parse_with_params("http://q/", &[(k, v)])
                .map(|u| u.query().unwrap_or("").to_string())
                .unwrap_or_default();
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(&pair);
        }
    }
    let v = get_json(&a.api, &format!("/v1/routes/{}{q}", a.capability)).await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!("{}", routes_table(&v));
    Ok(())
}

/// The human table of `agentmesh routes`, each line at most [`HUMAN_COLS_MAX`] columns.
pub fn routes_table(v: &serde_json::Value) -> String {
    let empty = vec![];
    let list = v["candidates"].as_array().unwrap_or(&empty);
    let mut lines = vec![
        format!(
            "{} (policy {})",
            v["capability"].as_str().unwrap_or("?"),
            v["policy"].as_str().unwrap_or("?")
        ),
        format!(
            "{:<4} {:<11} {:<14} {:<11} {:>6} {:>4} {:>7} {:<9} {}",
            "RANK", "NODE", "AGENT", "PROFICIENCY", "COST", "INFL", "LAT_MS", "BREAKER", "WHY"
        ),
    ];
    for c in list {
        let id = c["node_id"].as_str().unwrap_or("?");
        let line = format!(
            "{:<4} {:<11} {:<14} {:<11} {:>6.2} {:>4} {:>7} {:<9} {}",
            c["rank"]
                .as_u64()
                .map(|r| r.to_string())
                .unwrap_or("-".into()),
            format!("…{}", &id[id.len().saturating_sub(10)..]),
            clip(c["agent"].as_str().unwrap_or("-"), 14),
            clip(c["proficiency"].as_str().unwrap_or("-"), 11),
            c["cost"].as_f64().unwrap_or(0.0),
            c["in_flight"].as_u64().unwrap_or(0),
            c["latency_ms"]
                .as_f64()
                .map(|l| format!("{l:.1}"))
                .unwrap_or("-".into()),
            clip(c["breaker"].as_str().unwrap_or("-"), 9),
            c["reason"].as_str().unwrap_or("")
        );
        lines.push(clip(&line, HUMAN_COLS_MAX));
    }
    lines.join("\n")
}

async fn call(a: CallArgs) -> CmdResult {
    serde_json::from_str::<serde_json::Value>(&a.data)
        .map_err(|e| fail(exit::USAGE, format!("--data is not JSON: {e}")))?;
    let q = routing_query(&a.attrs, &a.min_proficiency)?;
    let timeout = Duration::from_millis(a.deadline_ms.unwrap_or(0) + CLI_HTTP_TIMEOUT_MS);
    let c = client(timeout)?;
    let mut rb = c
        .post(url(&a.api, &format!("/v1/call/{}{q}", a.capability)))
        .header("content-type", "application/json")
        .body(a.data.clone());
    if let Some(d) = a.deadline_ms {
        rb = rb.header("x-mesh-deadline-ms", d.to_string());
    }
    if let Some(p) = &a.prefer {
        rb = rb.header("x-mesh-prefer", p);
    }
    if let Some(p) = &a.policy {
        rb = rb.header("x-mesh-policy", p);
    }
    let resp = authed(rb, &a.api)
        .send()
        .await
        .map_err(|e| unreachable(&a.api, e))?;
    let served_by = header_str(&resp, SERVED_BY_HEADER);
    let attempts = header_str(&resp, ATTEMPTS_HEADER);
    let body = read_ok(&a.api, resp).await?;
    println!("{}", String::from_utf8_lossy(&body));
    eprintln!("served by {served_by} ({attempts} attempt(s))");
    Ok(())
}

fn header_str(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// agentmesh demo-agent

/// How long `--register` keeps retrying while the node comes up.
pub const DEMO_REGISTER_WAIT_MS: u64 = 30_000;

async fn demo_agent(a: DemoAgentArgs) -> CmdResult {
    let opts = DemoAgentOptions {
        name: a.name.clone(),
        latency_ms_p50: a.latency_ms_p50,
        latency_ms_p99: a.latency_ms_p99,
        error_rate: a.error_rate,
        seed: a.seed,
        capabilities: a.capabilities.clone(),
        forward: match (&a.forward, a.node_api.as_ref().or(a.register.as_ref())) {
            (Some(cap), Some(api)) => Some((api.clone(), cap.clone())),
            (Some(_), None) => {
                return Err(fail(
                    exit::USAGE,
                    "--forward needs --node-api or --register",
                ))
            }
            (None, _) => None,
        },
        answers: crate::demo_agent::parse_answers(&a.answer).map_err(|e| fail(exit::USAGE, e))?,
        error_status: a.error_status,
    };
    opts.validate().map_err(|e| fail(exit::USAGE, e))?;
    let (listener, addr) = crate::demo_agent::bind(a.listen)
        .await
        .map_err(|e| fail(exit::FAILURE, format!("--listen {}: {e}", a.listen)))?;
    if let Some(p) = &a.addr_file {
        std::fs::write(p, format!("{addr}\n"))
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", p.display())))?;
    }
    tracing::info!(name = %a.name, %addr, "demo agent serving");
    let server = tokio::spawn(crate::demo_agent::serve(listener, opts, async {
        wait_for_signal().await;
    }));
    if let Some(api) = &a.register {
        register_demo(&a, api, addr).await?;
    }
    server
        .await
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?
        .map_err(|e| fail(exit::FAILURE, e.to_string()))
}

async fn register_demo(a: &DemoAgentArgs, api: &str, addr: SocketAddr) -> CmdResult {
    let caps: Vec<serde_json::Value> = a
        .capabilities
        .iter()
        .map(|c| serde_json::json!({"name": c, "proficiency": a.proficiency, "cost": a.cost}))
        .collect();
    let reg = serde_json::json!({
        "name": a.name, "handler": format!("http://{addr}"), "capabilities": caps,
    });
    let api_args = ApiArgs {
        api: api.to_string(),
        token: std::env::var("AGENTMESH_API_TOKEN").ok(),
    };
    let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEMO_REGISTER_WAIT_MS);
    loop {
        let sent = authed(c.put(url(&api_args, "/v1/agent")), &api_args)
            .header("content-type", "application/json")
            .body(reg.to_string())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                read_ok(&api_args, resp).await?;
                tracing::info!(api, "registered with node");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(unreachable(&api_args, e));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_ttl("90m").unwrap(), 5400);
        assert_eq!(parse_ttl("15").unwrap(), 15);
        for bad in ["", "0d", "d", "3w", "-1d", "99999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_fit_100_columns() {
        let long = "x".repeat(300);
        let m = serde_json::json!({"members": [{
            "node_id": "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA", "state": "alive",
            "agent": long, "capabilities": [long, long], "health": "serving", "local": true,
        }]});
        let r = serde_json::json!({"capability": "a", "policy": "round_robin", "candidates": [{
            "rank": 1, "node_id": "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "agent": long, "proficiency": "expert", "cost": 1.5, "in_flight": 3,
            "latency_ms": 2.25, "breaker": "closed", "reason": long,
        }]});
        for t in [members_table(&m), routes_table(&r)] {
            for line in t.lines() {
                assert!(line.chars().count() <= HUMAN_COLS_MAX, "{line}");
            }
        }
    }

    #[test]
    fn routing_query_encodes() {
        let q = routing_query(&["region=eu west".into()], &Some("expert".into())).unwrap();
        assert_eq!(q, "?attr.region=eu+west&min_proficiency=expert");
        assert!(routing_query(&["novalue".into()], &None).is_err());
    }
}
