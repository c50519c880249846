//! The `agentmesh` command line (clap derive). Read commands take `--json`; human output fits
//! in 100 columns. Exit codes are listed in [`exit`].

pub mod api_client;
pub mod audit_verify;
pub mod config;
pub mod demo;
pub mod mesh;
pub mod node;
pub mod security;
pub mod top;
pub mod workflow;

pub use api_client::*;
pub use demo::*;
pub use mesh::*;
pub use node::*;

use crate::agent::demo::DemoAgentOptions;
use crate::api::{ATTEMPTS_HEADER, SERVED_BY_HEADER};
use crate::runtime::MeshHandle;
use crate::security::certs::{load_cert_file, save_cert_file};
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
    /// List the mesh's capabilities with descriptions, schemas and who offers them.
    Capabilities(ReadArgs),
    /// Show the ranked candidates for a capability and why.
    Routes(RoutesArgs),
    /// Call a capability through a node and print the answer.
    Call(CallArgs),
    /// Run the demo agent: a fast HTTP agent with configurable latency and errors.
    DemoAgent(DemoAgentArgs),
    /// Check, show or reload the routing and resilience settings.
    #[command(subcommand)]
    Config(crate::cli::config::ConfigCommand),
    /// Run or check a workflow file.
    #[command(subcommand)]
    Workflow(crate::cli::workflow::WorkflowCommand),
    /// Ask n agents on distinct nodes and decide by (byzantine) quorum; `quorum verify FILE`
    /// checks a saved decision offline.
    Quorum(crate::cli::workflow::QuorumArgs),
    /// Live view of mesh-wide traffic: busiest and slowest pairs, hot and idle agents.
    Top(crate::cli::top::TopArgs),
    /// Revoke a node with the mesh root key; the revocation spreads by gossip.
    Revoke(crate::cli::security::RevokeArgs),
    /// Verify or query the audit log.
    #[command(subcommand)]
    Audit(crate::cli::security::AuditCommand),
    /// Validate, sign or distribute an RBAC policy.
    #[command(subcommand)]
    Policy(crate::cli::security::PolicyCommand),
    /// MCP: bridge a node's MCP endpoint to stdio for hosts that launch servers as processes.
    #[command(subcommand)]
    Mcp(McpCommand),
}

/// `agentmesh mcp …`.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve MCP on stdin/stdout, passing every request to the node's `/mcp`.
    Stdio(ApiArgs),
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
    // A failure a test switches on and off at run time.
    /// Fail every call (with `--error-status`) while this file exists.
    #[arg(long, value_name = "PATH")]
    pub fail_while_file: Option<PathBuf>,
    // A novice that cannot do hard tasks.
    /// Share of `"complexity": "high"` inputs that fail (with `--error-status`).
    #[arg(long, default_value_t = 0.0)]
    pub fail_complex_rate: f64,
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
        Command::Capabilities(a) => crate::cli::api_client::capabilities(a).await,
        Command::Mcp(McpCommand::Stdio(a)) => {
            let url = format!("{}/mcp", a.api.trim_end_matches('/'));
            crate::mcp::stdio::run(&url, a.token)
                .await
                .map_err(|e| fail(exit::UNREACHABLE, e.to_string()))
        }
        Command::Routes(a) => routes(a).await,
        Command::Call(a) => call(a).await,
        Command::DemoAgent(a) => demo_agent(a).await,
        Command::Config(c) => crate::cli::config::run(c).await,
        Command::Workflow(c) => crate::cli::workflow::run_workflow(c).await,
        Command::Quorum(a) => crate::cli::workflow::run_quorum(a).await,
        Command::Top(a) => crate::cli::top::run(a).await,
        Command::Revoke(a) => crate::cli::security::revoke(a).await,
        Command::Audit(c) => crate::cli::security::audit(c).await,
        Command::Policy(c) => crate::cli::security::policy(c).await,
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

/// Reads `[telemetry]` from the config file of `agentmesh node`, if that is the command. A
/// file that cannot be read yields nothing here; `agentmesh node` reports it properly.
pub fn telemetry_section(cli: &Cli) -> Option<crate::obs::telemetry::TelemetrySection> {
    let Command::Node(a) = &cli.command else {
        return None;
    };
    let text = std::fs::read_to_string(&a.config).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table.get("telemetry")?.clone().try_into().ok()
}

/// The node id of `agentmesh node`'s key, for the spans' `service.instance.id` (read before
/// the node starts, because the exporter is installed first). None for other commands or
/// when the config or key cannot be read; the node then reports the error itself.
pub fn telemetry_instance(cli: &Cli) -> Option<String> {
    let Command::Node(a) = &cli.command else {
        return None;
    };
    let cfg = crate::config::NodeConfig::load(&a.config).ok()?;
    let key = agentmesh_crypto::keyfile::load(&cfg.file.node.key_file).ok()?;
    Some(key.node_id().to_string())
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
