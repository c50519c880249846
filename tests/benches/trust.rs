//! The cost of the trust work (`scripts/bench-trust`): signed, canonical quorum votes and the
//! audit log. Four nodes with audit on (the defaults: `[audit] dir` only): a caller and three
//! voters whose demo agents answer the same JSON. It measures routed calls per second through
//! the caller (16 in flight for `BENCH_SECS`, default 8 s) and the latency of sequential
//! majority quorums over the three voters (`BENCH_QUORUMS`, default 60). Prints one JSON line.
//!
//! It uses only what every binary since the audit log understands, so `AGENTMESH_BIN` can
//! point at an older build: the script runs this once per binary, alternating, and compares.

use agentmesh_tests::{Mesh, NodeOpts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ANSWER: &str = r#"{"decision":"approve"}"#;
/// Calls in flight during the throughput phase.
const WORKERS: usize = 16;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn audited(caps: &[&str]) -> NodeOpts {
    NodeOpts {
        extra_toml: "[audit]\ndir = \"audit\"\n".into(),
        max_concurrency: Some(512),
        agent_args: vec!["--answer".into(), format!("*={ANSWER}")],
        ..NodeOpts::caps(caps)
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i] * 100.0).round() / 100.0
}

async fn run() -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let caller = mesh.start_node(audited(&["bench.self"])).await?;
    for _ in 0..3 {
        mesh.start_node(audited(&["bench.vote"])).await?;
    }
    mesh.wait_offers(&caller, "bench.vote", 3).await?;

    // Warm-up: connections, estimates.
    for _ in 0..50 {
        mesh.call(&caller, "bench.vote", "{}", &[]).await?;
    }
    let secs = env("BENCH_SECS", 8);
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = (0..WORKERS).map(|_| {
        let (http, url) = (
            mesh.http.clone(),
            format!("{}/v1/call/bench.vote", caller.api),
        );
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                match http.post(&url).body("{}").send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    });
    futures::future::join_all(workers).await;
    let calls = done.load(Ordering::Relaxed);

    let quorums = env("BENCH_QUORUMS", 60);
    let mut ms = Vec::new();
    let mut decided = 0;
    for i in 0..quorums {
        let t = Instant::now();
        let (status, d) = mesh
            .post_json(
                &caller,
                "/v1/quorum/bench.vote",
                serde_json::json!({"payload": {"q": i}, "n": 3, "key": "decision", "deadline_ms": 5000}),
            )
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if status == 200 && d["status"] == "decided" {
            decided += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(serde_json::json!({
        "bench": "bench-trust",
        "bin": std::env::var("AGENTMESH_BIN").unwrap_or_default(),
        "calls_per_s": (calls as f64 / secs as f64).round(),
        "calls_failed": failed.load(Ordering::Relaxed),
        "quorums": quorums,
        "quorums_decided": decided,
        "quorum_p50_ms": pct(&ms, 0.5),
        "quorum_p99_ms": pct(&ms, 0.99),
    }))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run())?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
