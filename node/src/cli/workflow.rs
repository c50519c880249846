//! `agentmesh workflow run|check` and `agentmesh quorum CAP | quorum verify FILE`.

use crate::cli::{
    authed, client, exit, fail, print_json, unreachable, url, ApiArgs, CmdResult,
    CLI_HTTP_TIMEOUT_MS, CLI_RESPONSE_BYTES_MAX,
};
use crate::quorum::{verify_decision, QuorumDecision, DECISION_BYTES_MAX};
use crate::workflow::{self, Workflow};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `agentmesh workflow …`.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Run a workflow file on a node (the node runs every step as a mesh call).
    ///
    /// Prints the output and a per-step record (served by, attempts, latency, outcome).
    /// Exit 5 if the workflow failed; the failing step is named.
    Run(WorkflowRunArgs),
    /// Check a workflow file without running it (exit 3 if invalid; the error names the step
    /// and the field).
    Check(WorkflowCheckArgs),
}

/// `agentmesh workflow run`.
#[derive(Debug, Args)]
pub struct WorkflowRunArgs {
    /// The workflow file (TOML).
    pub file: PathBuf,
    /// The workflow input, JSON.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Which node runs it.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the whole result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh workflow check`.
#[derive(Debug, Args)]
pub struct WorkflowCheckArgs {
    /// The workflow file (TOML).
    pub file: PathBuf,
}

/// `agentmesh quorum …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct QuorumArgs {
    /// `verify FILE`: check a saved decision offline.
    #[command(subcommand)]
    pub verify: Option<QuorumCommand>,
    /// The capability every voter is asked.
    #[arg(required = true)]
    pub capability: Option<String>,
    /// Voters, each on a distinct node.
    #[arg(long, default_value_t = 3)]
    pub n: u32,
    /// Byzantine faults tolerated (needs n >= 3f+1; 2f+1 matching votes decide).
    #[arg(long)]
    pub f: Option<u32>,
    /// JMESPath picking the compared part of each answer (e.g. `decision`).
    #[arg(long)]
    pub key: Option<String>,
    /// The payload, JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Deadline of the whole quorum, in ms.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Forward needs_review to this capability (e.g. `human.review`).
    #[arg(long)]
    pub review: Option<String>,
    /// Which node runs it.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the whole decision as JSON (what `quorum verify` reads).
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh quorum verify`.
#[derive(Debug, Subcommand)]
pub enum QuorumCommand {
    /// Check a decision saved with `quorum --json` offline: signatures, voters, tally.
    /// Exit 0 if valid, 5 if not.
    Verify(QuorumVerifyArgs),
}

/// `agentmesh quorum verify`.
#[derive(Debug, Args)]
pub struct QuorumVerifyArgs {
    /// The decision file (JSON).
    pub file: PathBuf,
    /// The mesh root's public key (peer id text, as `agentmesh mesh init` prints it): every
    /// voter's certificate must chain to it. Without it only signatures and the tally are
    /// checked, which proves nothing about who voted.
    #[arg(long)]
    pub root: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_input(flag: &str, s: &str) -> Result<serde_json::Value, crate::cli::Failure> {
    serde_json::from_str(s).map_err(|e| fail(exit::USAGE, format!("{flag} is not JSON: {e}")))
}

async fn post(
    api: &ApiArgs,
    path: &str,
    body: &serde_json::Value,
    timeout_ms: u64,
) -> Result<(u16, serde_json::Value), crate::cli::Failure> {
    let c = client(Duration::from_millis(timeout_ms + CLI_HTTP_TIMEOUT_MS))?;
    let rb = c
        .post(url(api, path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default());
    let resp = authed(rb, api)
        .send()
        .await
        .map_err(|e| unreachable(api, e))?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| unreachable(api, e))?;
    if bytes.len() > CLI_RESPONSE_BYTES_MAX {
        return Err(fail(exit::REMOTE_ERROR, "node answer too large"));
    }
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| fail(exit::REMOTE_ERROR, format!("node answered non-JSON: {e}")))?;
    Ok((status, v))
}

fn remote_error(status: u16, v: &serde_json::Value) -> crate::cli::Failure {
    fail(
        exit::REMOTE_ERROR,
        format!(
            "{} ({status}): {}{}",
            v["code"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or(""),
            v["field"]
                .as_str()
                .map(|f| format!(" [field {f}]"))
                .unwrap_or_default()
        ),
    )
}

/// Runs a `workflow` subcommand.
pub async fn run_workflow(c: WorkflowCommand) -> CmdResult {
    match c {
        WorkflowCommand::Check(a) => {
            let w = workflow::load_file(&a.file).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            println!(
                "{}: valid workflow {:?} ({} top-level step(s))",
                a.file.display(),
                w.name,
                w.steps.len()
            );
            Ok(())
        }
        WorkflowCommand::Run(a) => {
            let w: Workflow =
                workflow::load_file(&a.file).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            let input = parse_input("--input", &a.input)?;
            let body = serde_json::json!({
                "workflow": serde_json::to_value(&w).unwrap_or_default(),
                "input": input,
            });
            let timeout = w
                .deadline_ms
                .unwrap_or(workflow::spec::WORKFLOW_DEADLINE_MS_DEFAULT);
            let (status, v) = post(&a.api, "/v1/workflows/run", &body, timeout).await?;
            if v.get("steps").is_none() {
                return Err(remote_error(status, &v));
            }
            if a.json {
                print_json(&v);
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v["output"]).unwrap_or_default()
                );
                for s in v["steps"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{:<24} {:<10} {:>9.1} ms  {} attempt(s)  {}",
                        crate::cli::clip(s["step"].as_str().unwrap_or("?"), 24),
                        s["outcome"].as_str().unwrap_or("?"),
                        s["latency_ms"].as_f64().unwrap_or(0.0),
                        s["attempts"].as_u64().unwrap_or(0),
                        crate::cli::clip(s["served_by"].as_str().unwrap_or("-"), 40),
                    );
                }
            }
            if v["status"] != "completed" {
                return Err(remote_error(status, &v));
            }
            Ok(())
        }
    }
}

/// Runs `quorum CAP …` or `quorum verify FILE`.
pub async fn run_quorum(a: QuorumArgs) -> CmdResult {
    if let Some(QuorumCommand::Verify(v)) = a.verify {
        return verify(v);
    }
    let cap = a.capability.unwrap_or_default();
    let mut body = serde_json::json!({
        "payload": parse_input("--data", &a.data)?,
        "n": a.n,
    });
    if let Some(f) = a.f {
        body["f"] = f.into();
    }
    if let Some(k) = &a.key {
        body["key"] = k.clone().into();
    }
    if let Some(d) = a.deadline_ms {
        body["deadline_ms"] = d.into();
    }
    if let Some(r) = &a.review {
        body["review"] = r.clone().into();
    }
    let timeout = a
        .deadline_ms
        .unwrap_or(crate::quorum::QUORUM_DEADLINE_MS_DEFAULT);
    let (status, v) = post(&a.api, &format!("/v1/quorum/{cap}"), &body, timeout).await?;
    if !(200..300).contains(&status) {
        return Err(remote_error(status, &v));
    }
    if a.json {
        print_json(&v);
    } else {
        println!("{} {}", v["status"].as_str().unwrap_or("?"), v["value"]);
        for vote in v["votes"].as_array().into_iter().flatten() {
            println!(
                "  {:<54} {:>8.1} ms  {}",
                vote["node_id"].as_str().unwrap_or("?"),
                vote["latency_ms"].as_f64().unwrap_or(0.0),
                crate::cli::clip(&vote["value"].to_string(), 30)
            );
        }
        let dissent = v["dissenters"].as_array().map_or(0, Vec::len);
        println!("dissenters: {dissent}; latency {} ms", v["latency_ms"]);
    }
    Ok(())
}

fn verify(a: QuorumVerifyArgs) -> CmdResult {
    let meta = std::fs::metadata(&a.file)
        .map_err(|e| fail(exit::CONFIG, format!("{}: {e}", a.file.display())))?;
    if meta.len() > DECISION_BYTES_MAX as u64 {
        return Err(fail(exit::CONFIG, "decision file too large"));
    }
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| fail(exit::CONFIG, format!("{}: {e}", a.file.display())))?;
    let d: QuorumDecision = serde_json::from_str(&text).map_err(|e| {
        fail(
            exit::CONFIG,
            format!("{}: not a decision: {e}", a.file.display()),
        )
    })?;
    let root: Option<agentmesh_crypto::NodeId> = match &a.root {
        Some(t) => Some(
            t.trim()
                .parse()
                .map_err(|e| fail(exit::USAGE, format!("--root is not a public key: {e}")))?,
        ),
        None => None,
    };
    let r = verify_decision(&d, root.as_ref());
    if a.json {
        print_json(&serde_json::to_value(&r).unwrap_or_default());
    } else if r.valid {
        println!(
            "valid: {} {} ({} signature(s) verified, {} vote(s) counted, {} required; {})",
            r.status,
            d.value,
            r.signatures_ok,
            r.counted,
            d.required,
            if r.certificates_checked {
                "every voter admitted by the given root"
            } else {
                "voters' certificates NOT checked: pass --root"
            }
        );
    } else {
        println!("INVALID:");
        for p in &r.problems {
            println!("  {p}");
        }
    }
    if r.valid {
        Ok(())
    } else {
        Err(fail(
            exit::REMOTE_ERROR,
            format!("the decision does not verify: {}", r.problems.join("; ")),
        ))
    }
}
