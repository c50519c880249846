//! Scenario 4 (an agent announces it is at capacity): two callers under steady load (default
//! policy) over three agents; one of them (`max_concurrency = 4`) is then filled by four long
//! calls on another capability made at its own node, so its node's gossiped load says "at
//! capacity". Figures: from the moment its node counts 4 calls in flight, how long until each
//! caller's routing shows it at capacity, and until no new call of the measured capability
//! reaches it from any caller (counted on its node, refused ones included). Target: within 1 s
//! (one SWIM protocol period on the LAN defaults when the target was set, two since issue 16
//! halved the period; the load is published every 500 ms at most).

use super::common::{metric_sum, metrics, r1, route_row};
use agentmesh_tests::load::{self, LoadSpec, Stop};
use agentmesh_tests::{Mesh, Node, NodeOpts};
use std::time::{Duration, Instant};

const CAP: &str = "scenario.capacity";
const HOLD: &str = "scenario.hold";
const MAX_CONCURRENCY: u32 = 4;
const RATE: u32 = 30;
const HOLD_MS: u64 = 8_000;
/// How long after it fills up its inbound count is watched.
const WATCH: Duration = Duration::from_secs(5);
/// The scenario's target: 1 s (see the module comment).
const TARGET_MS: f64 = 1000.0;

/// Calls of [`CAP`] that reached `node` from elsewhere (served or refused).
async fn reached(node: &Node) -> anyhow::Result<f64> {
    let t = metrics(node).await?;
    Ok(metric_sum(
        &t,
        "agentmesh_inbound_calls_total",
        &[&format!("capability=\"{CAP}\"")],
    ) + metric_sum(&t, "agentmesh_overloaded_total", &[]))
}

/// Runs scenario 4.
pub async fn run() -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let callers = [
        mesh.start_node(NodeOpts::caps(&["caller.a"])).await?,
        mesh.start_node(NodeOpts::caps(&["caller.b"])).await?,
    ];
    let full = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 10.0,
            max_concurrency: Some(MAX_CONCURRENCY),
            ..NodeOpts::caps(&[CAP, HOLD])
        })
        .await?;
    for _ in 0..2 {
        mesh.start_node(NodeOpts {
            latency_ms_p50: 10.0,
            ..NodeOpts::caps(&[CAP])
        })
        .await?;
    }
    for c in &callers {
        mesh.wait_offers(c, CAP, 3).await?;
    }
    let stop = Stop::default();
    let loads: Vec<_> = callers
        .iter()
        .map(|c| {
            let spec = LoadSpec {
                api: c.api.clone(),
                capability: CAP.into(),
                rate_per_s: RATE,
                deadline_ms: 5000,
            };
            tokio::spawn(load::run(spec, stop.clone(), Duration::from_secs(60)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_fill = reached(&full).await?;

    // Fill it: four long calls at its own node (only it offers HOLD).
    let http = reqwest::Client::new();
    let holders: Vec<_> = (0..MAX_CONCURRENCY)
        .map(|_| {
            let (http, api) = (http.clone(), full.api.clone());
            tokio::spawn(async move {
                // A holder refused because the agent was momentarily full tries again.
                let start = Instant::now();
                loop {
                    let t = Instant::now();
                    let r = http
                        .post(format!("{api}/v1/call/{HOLD}"))
                        .header("x-mesh-deadline-ms", "20000")
                        .json(&serde_json::json!({"sleep_ms": HOLD_MS}))
                        .send()
                        .await;
                    let held = t.elapsed() > Duration::from_millis(HOLD_MS / 2);
                    if held || start.elapsed() > Duration::from_secs(5) {
                        return r.map(|r| r.status().as_u16());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let t_full = loop {
        if mesh.agent_in_flight(&full).await? >= u64::from(MAX_CONCURRENCY) {
            break t0.elapsed();
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(5),
            "the agent never filled up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut seen_at = [None, None];
    let mut last = reached(&full).await?;
    let at_full = last;
    let mut last_rise = None;
    while t0.elapsed() < t_full + WATCH {
        let now = reached(&full).await?;
        if now > last {
            last = now;
            last_rise = Some(t0.elapsed() - t_full);
        }
        for (k, c) in callers.iter().enumerate() {
            if seen_at[k].is_none() {
                let row = route_row(&mesh, c, CAP, &full).await;
                if row.is_some_and(|r| r["reason"].as_str().unwrap_or("").contains("at capacity")) {
                    seen_at[k] = Some(t0.elapsed() - t_full);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.stop();
    let mut sent = 0;
    let mut failed = 0;
    for l in loads {
        let r = l.await??;
        sent += r.sent();
        failed += r.sent() - r.ok();
    }
    for h in holders {
        h.abort();
    }
    let ms = |d: Option<Duration>| d.map(|d| r1(d.as_secs_f64() * 1000.0));
    let no_new_calls_ms = ms(last_rise).unwrap_or(0.0);
    let seen_ms: Vec<Option<f64>> = seen_at.iter().map(|d| ms(*d)).collect();
    let met =
        no_new_calls_ms <= TARGET_MS && seen_ms.iter().all(|s| s.is_some_and(|s| s <= TARGET_MS));
    Ok(serde_json::json!({
        "scenario": 4,
        "name": "an agent at capacity: time until no node sends it new calls",
        "setup": {"callers": 2, "calls_per_s_each": RATE, "agents": 3, "max_concurrency_of_the_full_one": MAX_CONCURRENCY, "agent_latency_p50_ms": 10.0},
        "calls_reaching_it_before_it_filled": before_fill,
        "calls_reaching_it_after_it_filled": last - at_full,
        "callers_see_it_at_capacity_after_ms": seen_ms,
        "no_new_calls_after_ms": no_new_calls_ms,
        "target_ms": TARGET_MS,
        "caller_calls": {"sent": sent, "failed": failed},
        "met": met,
    }))
}
