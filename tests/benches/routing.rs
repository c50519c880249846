//! Routing-quality scenario (`scripts/bench-routing`): six demo agents offer one capability
//! with latencies spread 10× and costs spread 5×. One caller node compares `random` with
//! `latency` (client-visible mean and p99), `round_robin` with `cost` (total declared cost of
//! the agents that served, and success rate), then kills the fastest agent's process (its node
//! stays up, so every call to it fails) and reports the client-visible error rate before and
//! after its breaker opened and how long the breaker took to open. Prints JSON.
//!
//! `BENCH_CALLS` sets the calls per policy (default 300), `BENCH_CONCURRENCY` the calls in
//! flight (default 4). Everything is bounded: each call has a 5 s deadline, each phase a
//! fixed number of calls, the breaker wait 60 s.

use agentmesh_tests::{served_by, Mesh, Node, NodeOpts};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CAP: &str = "route.bench";
/// Median latency of each agent, ms (10× spread).
const LATENCY_MS: [f64; 6] = [4.0, 6.0, 9.0, 14.0, 22.0, 40.0];
/// Declared cost of each agent (5× spread; the faster, the dearer).
const COST: [f64; 6] = [0.50, 0.40, 0.30, 0.22, 0.15, 0.10];
const DEADLINE: (&str, &str) = ("x-mesh-deadline-ms", "5000");
const BREAKER_WAIT: Duration = Duration::from_secs(60);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One call as the client saw it.
struct Seen {
    at: Instant,
    ms: f64,
    ok: bool,
    by: String,
}

async fn calls(mesh: &Mesh, caller: &Node, policy: &str, n: usize, conc: usize) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let wave = left.min(conc);
        left -= wave;
        let batch = (0..wave).map(|_| async {
            let t = Instant::now();
            let r = mesh
                .call(caller, CAP, "{}", &[("x-mesh-policy", policy), DEADLINE])
                .await;
            let (ok, by) = match r {
                Ok(r) => (r.status().is_success(), served_by(&r)),
                Err(_) => (false, String::new()),
            };
            Seen {
                at: t,
                ms: t.elapsed().as_secs_f64() * 1000.0,
                ok,
                by,
            }
        });
        out.extend(futures::future::join_all(batch).await);
    }
    out
}

fn latency_stats(seen: &[Seen]) -> serde_json::Value {
    let mut ms: Vec<f64> = seen.iter().filter(|s| s.ok).map(|s| s.ms).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return serde_json::json!(null);
    }
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    serde_json::json!({
        "calls": seen.len(),
        "success_rate": seen.iter().filter(|s| s.ok).count() as f64 / seen.len() as f64,
        "mean_ms": (ms.iter().sum::<f64>() / ms.len() as f64 * 10.0).round() / 10.0,
        "p50_ms": (q(0.5) * 10.0).round() / 10.0,
        "p99_ms": (q(0.99) * 10.0).round() / 10.0,
    })
}

fn total_cost(seen: &[Seen], cost_of: &HashMap<String, f64>) -> f64 {
    let c: f64 = seen
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| cost_of.iter().find(|(id, _)| s.by.contains(id.as_str())))
        .map(|(_, c)| c)
        .sum();
    (c * 100.0).round() / 100.0
}

fn pct_change(from: f64, to: f64) -> f64 {
    ((to - from) / from * 1000.0).round() / 10.0
}

async fn run() -> anyhow::Result<serde_json::Value> {
    let n = env("BENCH_CALLS", 300);
    let conc = env("BENCH_CONCURRENCY", 4).clamp(1, 64);
    let mut mesh = Mesh::new()?;
    // No retries and no quality tiers, so the breaker phase shows the breaker alone (with tiers
    // on, a 100 %-failing agent drops below the preferred tier after a few calls and is
    // skipped before its breaker judges it).
    let no_retry = "[defaults.retry]\nmax_attempts = 1\n\
        [defaults.quality]\nprefer = 0.0\nfallback = 0.0\nfloor = 0.0\n";
    let caller = mesh
        .start_node(NodeOpts {
            extra_toml: no_retry.into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await?;
    let mut agents = Vec::new();
    for (lat, cost) in LATENCY_MS.iter().zip(COST) {
        let node = mesh
            .start_node(NodeOpts {
                latency_ms_p50: *lat,
                cost: Some(cost),
                ..NodeOpts::caps(&[CAP])
            })
            .await?;
        agents.push(node);
    }
    mesh.wait_offers(&caller, CAP, agents.len()).await?;
    let cost_of: HashMap<String, f64> = agents
        .iter()
        .zip(COST)
        .map(|(a, c)| (a.id.clone(), c))
        .collect();

    // Warm-up: every agent observed a few times, so no policy starts blind.
    calls(&mesh, &caller, "round_robin", 6 * 5, conc).await;
    let random = calls(&mesh, &caller, "random", n, conc).await;
    let latency = calls(&mesh, &caller, "latency", n, conc).await;
    let rr = calls(&mesh, &caller, "round_robin", n, conc).await;
    let cost = calls(&mesh, &caller, "cost", n, conc).await;
    let (rs, ls) = (latency_stats(&random), latency_stats(&latency));
    let (rr_cost, cost_cost) = (total_cost(&rr, &cost_of), total_cost(&cost, &cost_of));

    // Breaker: the fastest agent's process dies; its node keeps offering it.
    let victim = agents[0].clone();
    let killed_at = Instant::now();
    mesh.procs.kill9(victim.agent_proc)?;
    let mut during = Vec::new();
    let mut last_routes = serde_json::Value::Null;
    let opened_after = {
        let mut opened = None;
        while opened.is_none() && killed_at.elapsed() < BREAKER_WAIT {
            during.extend(calls(&mesh, &caller, "round_robin", 12, conc).await);
            let (_, routes) = mesh.get(&caller, &format!("/v1/routes/{CAP}")).await?;
            let open = routes["candidates"].as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["node_id"] == victim.id.as_str() && r["breaker"] == "open")
            });
            if open {
                opened = Some(killed_at.elapsed());
            }
            last_routes = routes;
        }
        opened
    };
    let opened_after = opened_after
        .ok_or_else(|| {
            let errs = during.iter().filter(|s| !s.ok).count();
            anyhow::anyhow!(
                "breaker did not open within {BREAKER_WAIT:?} ({errs} of {} calls failed); routes: {last_routes}",
                during.len()
            )
        })?;
    let after = calls(&mesh, &caller, "round_robin", n, conc).await;
    let err_rate = |s: &[Seen]| {
        let bad = s.iter().filter(|x| !x.ok).count() as f64;
        (bad / s.len().max(1) as f64 * 1000.0).round() / 1000.0
    };
    let (before_open, _): (Vec<Seen>, Vec<Seen>) = during
        .into_iter()
        .partition(|s| s.at.duration_since(killed_at) <= opened_after);

    let mean = |v: &serde_json::Value| v["mean_ms"].as_f64().unwrap_or(f64::NAN);
    let p99 = |v: &serde_json::Value| v["p99_ms"].as_f64().unwrap_or(f64::NAN);
    let succ = |v: &[Seen]| v.iter().filter(|s| s.ok).count() as f64 / v.len().max(1) as f64;
    Ok(serde_json::json!({
        "bench": "bench-routing",
        "agents": LATENCY_MS.iter().zip(COST).map(|(l, c)| serde_json::json!({"latency_p50_ms": l, "cost": c})).collect::<Vec<_>>(),
        "calls_per_policy": n,
        "in_flight": conc,
        "random": rs,
        "latency": ls,
        "latency_vs_random": {
            "mean_change_pct": pct_change(mean(&rs), mean(&ls)),
            "p99_change_pct": pct_change(p99(&rs), p99(&ls)),
        },
        "round_robin": {"total_cost": rr_cost, "success_rate": succ(&rr)},
        "cost": {"total_cost": cost_cost, "success_rate": succ(&cost)},
        "cost_vs_round_robin": {"total_cost_change_pct": pct_change(rr_cost, cost_cost)},
        "breaker": {
            "retries": "off (max_attempts = 1), so the client sees what the breaker does",
            "time_to_open_ms": opened_after.as_millis(),
            "error_rate_before_open": err_rate(&before_open),
            "calls_before_open": before_open.len(),
            "error_rate_after_open": err_rate(&after),
            "calls_after_open": after.len(),
        },
    }))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
