//! The routing scenarios of issue 15 on real processes (`scripts/bench-scenarios`). Prints one
//! JSON report: each scenario's figures next to its target and whether it was met. Not in CI.
//! One module per scenario (`scenarios/`):
//!
//! 1. [`latency`]: agents 10× apart in speed, `latency` against `random`;
//! 2. [`cost`]: simple and complex tasks, `x-mesh-complexity` against `round_robin`;
//! 3. [`chain`]: a failing agent in a workflow of 10 capabilities, isolated and recovered;
//! 4. [`capacity`]: an agent at capacity, time until no node sends it new calls;
//! 5. [`locality`]: agents in two zones, the share kept in the caller's zone and the spill-over.
//!
//! `BENCH_SCENARIOS=1,3` runs a subset.
//! Bounded: `BENCH_CALLS` (200) calls per policy in 1 and 2, a deadline on every call, every
//! phase of 3 and 4 bounded, the whole run under `BENCH_TIMEOUT_S` in the script.

#[path = "scenarios/capacity.rs"]
mod capacity;
#[path = "scenarios/chain.rs"]
mod chain;
#[path = "scenarios/common.rs"]
mod common;
#[path = "scenarios/cost.rs"]
mod cost;
#[path = "scenarios/latency.rs"]
mod latency;
#[path = "scenarios/locality.rs"]
mod locality;

async fn run() -> anyhow::Result<serde_json::Value> {
    let n = common::env("BENCH_CALLS", 200).clamp(10, 5000);
    let wanted: Vec<u32> = std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "1,2,3,4,5".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mut out = Vec::new();
    for s in wanted {
        let started = std::time::Instant::now();
        let r = match s {
            1 => latency::run(n).await,
            2 => cost::run(n).await,
            3 => chain::run().await,
            4 => capacity::run().await,
            5 => locality::run(n).await,
            _ => continue,
        };
        let mut v = r.unwrap_or_else(
            |e| serde_json::json!({"scenario": s, "error": format!("{e:#}"), "met": false}),
        );
        v["took_s"] = serde_json::json!(common::r1(started.elapsed().as_secs_f64()));
        eprintln!("scenario {s}: {v}");
        out.push(v);
    }
    Ok(serde_json::json!({
        "bench": "bench-scenarios",
        "scenarios": out,
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
