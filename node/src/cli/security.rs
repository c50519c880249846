//! `agentmesh revoke`, `agentmesh audit verify|query` and `agentmesh policy sign|push`.

use crate::cli::{
    authed, client, clip, exit, fail, get_json, parse_ttl, read_ok, unreachable, url, ApiArgs,
    CmdResult, CLI_HTTP_TIMEOUT_MS, HUMAN_COLS_MAX,
};
use crate::security::audit::{log_files, query_files, AuditQuery, CallRecord};
use agentmesh_crypto::{NodeId, Revocation};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest revocation reason accepted on the command line.
pub const REASON_LEN_MAX: usize = agentmesh_crypto::revocation::REASON_LEN_MAX;

/// `agentmesh revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The mesh root key file.
    #[arg(long)]
    pub root: PathBuf,
    /// The node id to revoke.
    #[arg(long)]
    pub node: String,
    /// Why (kept in the revocation, for operators).
    #[arg(long, default_value = "revoked by operator")]
    pub reason: String,
    /// The mesh id (default: from mesh.toml beside the root key).
    #[arg(long)]
    pub mesh_id: Option<String>,
    /// Also write the signed revocation (hex) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only sign (write --out or print); do not send it to a node.
    #[arg(long)]
    pub offline: bool,
    /// The node that spreads it.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `agentmesh audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check that the log is the given node's and intact: its signed genesis, the hash chain,
    /// every checkpoint signed by that node, a checkpoint at the end, and what other nodes
    /// witnessed; name the first changed, deleted, reordered or foreign-signed entry (exit 1).
    Verify(Box<VerifyArgs>),
    /// Filter audit entries (local files, or every node with --mesh).
    Query(Box<QueryArgs>),
}

pub use crate::cli::audit_verify::VerifyArgs;

/// `agentmesh audit query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Files to read (default: every file in --dir).
    pub files: Vec<PathBuf>,
    /// The audit directory.
    #[arg(long, default_value = "audit")]
    pub dir: PathBuf,
    /// Capability glob, e.g. `customer.*`.
    #[arg(long)]
    pub capability: Option<String>,
    /// Caller or callee agent name.
    #[arg(long)]
    pub agent: Option<String>,
    /// Caller or callee node id (or its last characters).
    #[arg(long)]
    pub node: Option<String>,
    /// allow | deny | audit_only_deny.
    #[arg(long)]
    pub decision: Option<String>,
    /// Entries newer than this age (e.g. 1d, 90m) or unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Entries older than this age or unix seconds.
    #[arg(long)]
    pub until: Option<String>,
    /// Most entries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Ask the node (--api) instead of reading files.
    #[arg(long)]
    pub api_only: bool,
    /// Ask every live member through the node at --api (over `/agentmesh/audit/1`); each
    /// answers only if its policy allows this node's roles `mesh.audit`.
    #[arg(long)]
    pub mesh: bool,
    /// The node to ask with --mesh / --api-only.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file (exit 3 if invalid; the error names file and key).
    Validate {
        /// The policy TOML.
        file: PathBuf,
    },
    /// Sign a policy (which must set `version`) with the mesh root key, as hex.
    Sign(PolicySignArgs),
    /// Give a signed policy to a node, which adopts it if newer and spreads it by gossip.
    Push(PolicyPushArgs),
}

/// `agentmesh policy sign`.
#[derive(Debug, Args)]
pub struct PolicySignArgs {
    /// The mesh root key file.
    #[arg(long)]
    pub root: PathBuf,
    /// The policy TOML.
    #[arg(long)]
    pub file: PathBuf,
    /// The mesh id (default: from mesh.toml beside the root key).
    #[arg(long)]
    pub mesh_id: Option<String>,
    /// Write the hex here (default: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `agentmesh policy push`.
#[derive(Debug, Args)]
pub struct PolicyPushArgs {
    /// The signed policy (hex, from `policy sign`).
    pub signed: PathBuf,
    /// The node.
    #[command(flatten)]
    pub api: ApiArgs,
}

fn mesh_id_for(root: &Path, given: Option<String>) -> Result<String, crate::cli::Failure> {
    match given {
        Some(m) => Ok(m),
        None => crate::cli::read_mesh_file_pub(root).map(|m| m.mesh_id),
    }
}

async fn post_hex(
    api: &ApiArgs,
    path: &str,
    hex_text: String,
) -> Result<serde_json::Value, crate::cli::Failure> {
    let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
    let resp = authed(c.post(url(api, path)).body(hex_text), api)
        .send()
        .await
        .map_err(|e| unreachable(api, e))?;
    let body = read_ok(api, resp).await?;
    Ok(serde_json::from_slice(&body).unwrap_or_default())
}

/// `agentmesh revoke`.
pub async fn revoke(a: RevokeArgs) -> CmdResult {
    let root =
        agentmesh_crypto::keyfile::load(&a.root).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    let node: NodeId = a
        .node
        .parse()
        .map_err(|_| fail(exit::USAGE, format!("--node {:?} is not a node id", a.node)))?;
    if a.reason.len() > REASON_LEN_MAX {
        return Err(fail(
            exit::USAGE,
            format!("--reason exceeds {REASON_LEN_MAX} bytes"),
        ));
    }
    let mesh_id = mesh_id_for(&a.root, a.mesh_id)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rev = Revocation {
        mesh_id,
        node_id: node,
        issued_at: now,
        reason: a.reason,
    }
    .sign(&root);
    let text = hex::encode(rev.to_bytes());
    if let Some(out) = &a.out {
        std::fs::write(out, &text)
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", out.display())))?;
    }
    if a.offline {
        if a.out.is_none() {
            println!("{text}");
        }
        return Ok(());
    }
    let v = post_hex(&a.api, "/v1/revocations", text).await?;
    println!(
        "revoked {}; spreading by gossip",
        v["revoked"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// Runs an `audit` subcommand.
pub async fn audit(c: AuditCommand) -> CmdResult {
    match c {
        AuditCommand::Verify(a) => crate::cli::audit_verify::verify(*a).await,
        AuditCommand::Query(a) => query(*a).await,
    }
}

pub(crate) fn files_or_dir(
    files: Vec<PathBuf>,
    dir: &Path,
) -> Result<Vec<PathBuf>, crate::cli::Failure> {
    if !files.is_empty() {
        return Ok(files);
    }
    let f = log_files(dir).map_err(|e| fail(exit::CONFIG, format!("{}: {e}", dir.display())))?;
    if f.is_empty() {
        return Err(fail(
            exit::CONFIG,
            format!("{}: no audit files", dir.display()),
        ));
    }
    Ok(f)
}

/// Parses `1d`/`90m`/… as "that long ago" or a bare number as unix seconds, into unix ms.
pub fn parse_when(s: &str, now_ms: u64) -> Result<u64, String> {
    if let Ok(unix_s) = s.parse::<u64>() {
        return Ok(unix_s.saturating_mul(1000));
    }
    let ago_s = parse_ttl(s)?;
    Ok(now_ms.saturating_sub(ago_s.saturating_mul(1000)))
}

fn build_query(a: &QueryArgs) -> Result<AuditQuery, crate::cli::Failure> {
    let now = crate::security::audit::now_unix_ms();
    let when = |v: &Option<String>, flag: &str| {
        v.as_deref()
            .map(|s| parse_when(s, now).map_err(|e| fail(exit::USAGE, format!("{flag} {e}"))))
            .transpose()
    };
    Ok(AuditQuery {
        capability: a.capability.clone(),
        agent: a.agent.clone(),
        node: a.node.clone(),
        decision: a.decision.clone(),
        since_ms: when(&a.since, "--since")?,
        until_ms: when(&a.until, "--until")?,
        limit: a.limit,
    })
}

fn query_string(q: &AuditQuery, mesh: bool) -> String {
    let mut u = reqwest::Url::parse("http://x/").expect("static url");
    {
        let mut p = u.query_pairs_mut();
        for (k, v) in [
            ("capability", q.capability.clone()),
            ("agent", q.agent.clone()),
            ("node", q.node.clone()),
            ("decision", q.decision.clone()),
            ("since_ms", q.since_ms.map(|v| v.to_string())),
            ("until_ms", q.until_ms.map(|v| v.to_string())),
            ("limit", q.limit.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                p.append_pair(k, &v);
            }
        }
        if mesh {
            p.append_pair("mesh", "true");
        }
    }
    u.query().unwrap_or("").to_string()
}

async fn query(a: QueryArgs) -> CmdResult {
    let q = build_query(&a)?;
    let entries: Vec<(String, CallRecord)> = if a.mesh || a.api_only {
        let v = get_json(&a.api, &format!("/v1/audit?{}", query_string(&q, a.mesh))).await?;
        let mut out = Vec::new();
        let nodes = v["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![v.clone()]);
        for n in nodes {
            let from = n["node_id"].as_str().unwrap_or("").to_string();
            if let Some(e) = n.get("error").and_then(|e| e.as_str()) {
                let code = n["code"].as_str().unwrap_or("error");
                eprintln!("{}: {code}: {e}", clip(&from, 60));
            }
            if n["truncated"] == true {
                eprintln!(
                    "{}: more entries matched than one answer holds",
                    clip(&from, 60)
                );
            }
            for e in n["entries"].as_array().cloned().unwrap_or_default() {
                if let Ok(r) = serde_json::from_value::<CallRecord>(e) {
                    out.push((from.clone(), r));
                }
            }
        }
        out
    } else {
        let files = files_or_dir(a.files.clone(), &a.dir)?;
        query_files(&files, &q)
            .map_err(|e| fail(exit::CONFIG, e.to_string()))?
            .into_iter()
            .map(|r| (String::new(), r))
            .collect()
    };
    if a.json {
        for (_, r) in &entries {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return Ok(());
    }
    println!(
        "{:<13} {:<8} {:<20} {:<12} {:<12} {:<15} {:>8} outcome",
        "time(s)", "side", "capability", "caller", "callee", "decision", "ms"
    );
    for (_, r) in &entries {
        let line = format!(
            "{:<13} {:<8} {:<20} {:<12} {:<12} {:<15} {:>8.1} {}",
            r.time_ms / 1000,
            match r.side {
                Some(crate::security::audit::Side::Inbound) => "in",
                _ => "out",
            },
            clip(&r.capability, 20),
            clip(r.caller_agent.as_deref().unwrap_or("-"), 12),
            clip(r.callee_agent.as_deref().unwrap_or("-"), 12),
            clip(&r.decision, 15),
            r.latency_ms,
            r.outcome
        );
        println!("{}", clip(&line, HUMAN_COLS_MAX));
    }
    eprintln!("{} entries", entries.len());
    Ok(())
}

/// Runs a `policy` subcommand.
pub async fn policy(c: PolicyCommand) -> CmdResult {
    match c {
        PolicyCommand::Validate { file } => {
            let p = crate::security::rbac::Policy::load(&file)
                .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            println!(
                "{}: valid (version {}, {:?}, {} deny and {} allow rules)",
                file.display(),
                p.version,
                p.mode,
                p.deny.len(),
                p.allow.len()
            );
            Ok(())
        }
        PolicyCommand::Sign(a) => {
            let root = agentmesh_crypto::keyfile::load(&a.root)
                .map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            let mesh_id = mesh_id_for(&a.root, a.mesh_id)?;
            let text = std::fs::read_to_string(&a.file)
                .map_err(|e| fail(exit::CONFIG, format!("{}: {e}", a.file.display())))?;
            let signed = crate::security::sign_policy(&root, &mesh_id, &text)
                .map_err(|e| fail(exit::CONFIG, format!("{}: {e}", a.file.display())))?;
            let hex_text = hex::encode(signed);
            match &a.out {
                Some(o) => std::fs::write(o, hex_text)
                    .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", o.display())))?,
                None => println!("{hex_text}"),
            }
            Ok(())
        }
        PolicyCommand::Push(a) => {
            let text = std::fs::read_to_string(&a.signed)
                .map_err(|e| fail(exit::CONFIG, format!("{}: {e}", a.signed.display())))?;
            let v = post_hex(&a.api, "/v1/policy", text.trim().to_string()).await?;
            if v["adopted"].as_bool() == Some(true) {
                println!(
                    "policy version {} adopted; spreading by gossip",
                    v["version"]
                );
            } else {
                println!("not adopted: the node already has this version or a newer one");
            }
            Ok(())
        }
    }
}
