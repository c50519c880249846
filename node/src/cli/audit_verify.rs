//! `agentmesh audit verify`: is this the given node's log, intact, and does it match what the
//! rest of the mesh witnessed?

use crate::cli::{exit, fail, get_json, print_json, ApiArgs, CmdResult};
use crate::security::audit::{verify_files, VerifyOpts, VerifyReport, Witnessed};
use agentmesh_crypto::{NodeId, Signature};
use clap::Args;
use std::path::PathBuf;

/// Most `--witness` nodes asked.
pub const WITNESS_APIS_MAX: usize = 64;

/// `agentmesh audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Files in chain order (default: every file in --dir, oldest first).
    pub files: Vec<PathBuf>,
    /// The audit directory.
    #[arg(long, default_value = "audit")]
    pub dir: PathBuf,
    /// The node the log must belong to (its node id). Its genesis and every checkpoint must
    /// be signed by this node.
    #[arg(long)]
    pub node: Option<String>,
    /// …or the node's admission certificate file (hex), checked against --root.
    #[arg(long, requires = "root", conflicts_with = "node")]
    pub cert: Option<PathBuf>,
    /// The mesh root's public key (node id, `root_pub` in mesh.toml), for --cert.
    #[arg(long, requires = "cert")]
    pub root: Option<String>,
    /// The API of another node (repeatable): the log must match the newest checkpoint of
    /// this node that it witnessed in gossip. Detects truncation and rewrites of witnessed
    /// entries even by someone holding the node's key.
    #[arg(long)]
    pub witness: Vec<String>,
    /// Bearer token for --witness nodes.
    #[arg(long, env = "AGENTMESH_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accept entries after the last checkpoint (crashed or running node); they are
    /// reported as vouched for by nobody.
    #[arg(long)]
    pub allow_open_tail: bool,
    /// Check only the chain's internal consistency, trusting whoever signed it (NOT a proof
    /// of anything against someone who can write the files).
    #[arg(long, conflicts_with_all = ["node", "cert"])]
    pub unbound: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The expected node: from --node, or a root-signed --cert.
fn expected_node(a: &VerifyArgs) -> Result<Option<NodeId>, crate::cli::Failure> {
    if let Some(n) = &a.node {
        return n
            .parse()
            .map(Some)
            .map_err(|_| fail(exit::USAGE, format!("--node {n:?} is not a node id")));
    }
    let (Some(cert), Some(root)) = (&a.cert, &a.root) else {
        return Ok(None);
    };
    let root: NodeId = root
        .parse()
        .map_err(|_| fail(exit::USAGE, format!("--root {root:?} is not a node id")))?;
    let c = crate::security::certs::load_cert_file(cert).map_err(|e| fail(exit::CONFIG, e))?;
    let claimed = c
        .claimed()
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", cert.display())))?;
    // The root's signature is what binds the node id; validity is checked at its start.
    c.verify(
        &root,
        &claimed.mesh_id,
        &claimed.node_id,
        claimed.not_before,
    )
    .map_err(|e| {
        fail(
            exit::FAILURE,
            format!(
                "{}: not a certificate of this mesh root: {e}",
                cert.display()
            ),
        )
    })?;
    Ok(Some(claimed.node_id))
}

/// Asks one witness node what it saw of `node`.
async fn witnessed(
    api: &str,
    token: &Option<String>,
    node: &NodeId,
) -> Result<Option<Witnessed>, crate::cli::Failure> {
    let args = ApiArgs {
        api: api.to_string(),
        token: token.clone(),
    };
    let v = get_json(&args, &format!("/v1/audit/witnessed?node={node}")).await?;
    let bad = |what: &str| {
        fail(
            exit::REMOTE_ERROR,
            format!("{api}: bad witnessed {what}: {v}"),
        )
    };
    if v["size"].is_null() {
        return Ok(None);
    }
    let size = v["size"].as_u64().ok_or_else(|| bad("size"))?;
    let head: [u8; 32] = hex::decode(v["head"].as_str().unwrap_or(""))
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| bad("head"))?;
    let sig: [u8; 64] = hex::decode(v["sig"].as_str().unwrap_or(""))
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| bad("sig"))?;
    let by = v["by"].as_str().unwrap_or(api).to_string();
    Ok(Some(Witnessed {
        by,
        size,
        head,
        sig: Some(Signature(sig)),
    }))
}

/// Runs `agentmesh audit verify`.
pub async fn verify(a: VerifyArgs) -> CmdResult {
    let node = expected_node(&a)?;
    if node.is_none() && !a.unbound {
        return Err(fail(
            exit::USAGE,
            "say whose log this is: --node <id>, or --cert <file> --root <mesh root id> \
             (--unbound checks only internal consistency, which anyone who can write the files \
             can fake)",
        ));
    }
    if a.witness.len() > WITNESS_APIS_MAX {
        return Err(fail(
            exit::USAGE,
            format!("at most {WITNESS_APIS_MAX} --witness"),
        ));
    }
    let mut opts = VerifyOpts {
        node,
        witnessed: Vec::new(),
        allow_open_tail: a.allow_open_tail,
    };
    let mut unwitnessed = Vec::new();
    if let Some(n) = &node {
        for w in &a.witness {
            match witnessed(w, &a.token, n).await? {
                Some(w) => opts.witnessed.push(w),
                None => unwitnessed.push(w.clone()),
            }
        }
    }
    let files = crate::cli::security::files_or_dir(a.files, &a.dir)?;
    let r = verify_files(&files, &opts).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    if a.json {
        print_json(&serde_json::to_value(&r).unwrap_or_default());
    }
    for w in &unwitnessed {
        eprintln!("{w}: has witnessed no checkpoint of this node");
    }
    for w in &r.witnessed_ignored {
        eprintln!("ignored witness: {w}");
    }
    match &r.failure {
        None => {
            if !a.json {
                print_ok(&r, files.len());
            }
            Ok(())
        }
        Some(f) => Err(fail(
            exit::FAILURE,
            format!("{}:{}: {}", f.file, f.line, f.problem),
        )),
    }
}

fn print_ok(r: &VerifyReport, files: usize) {
    let whose = match &r.node {
        Some(n) => format!("log of {n}"),
        None => "UNBOUND (signer not checked)".to_string(),
    };
    println!(
        "ok: {whose}: {} entries from seq {}, {} calls, {} signed checkpoint(s), {} file(s), \
         {} witnessed checkpoint(s) matched",
        r.entries, r.starts_at, r.calls, r.checkpoints, files, r.witnessed_ok
    );
    if r.gap_entries > 0 {
        println!(
            "gaps: {} gap entr(ies), {} entries lost (audit queue full)",
            r.gap_entries, r.lost_total
        );
        for g in &r.gaps {
            println!(
                "  gap at seq {}: {} lost, calls started {}..={} (unix ms)",
                g.seq, g.lost, g.from_ms, g.to_ms
            );
        }
    }
    if let Some((from, to)) = r.open_tail {
        println!(
            "open tail: entries seq {from}..={to} follow the last checkpoint; nothing vouches for them"
        );
    }
}
