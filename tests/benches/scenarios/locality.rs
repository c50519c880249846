//! Scenario 5 (locality): a caller in zone `a` and four agents, two in its zone and two in
//! zone `b` of the same region. The zone-`b` agents are four times faster, so the `latency`
//! policy alone would send them everything. Three phases, the figure of each next to its
//! target:
//! 1. healthy: the share of calls that stay in the caller's zone (target ≥ 95 %);
//! 2. the zone's agents full (`max_concurrency = 2` each, 16 calls in flight): calls spill to
//!    zone `b` instead of queueing (share reported; target: no call refused at a limit and
//!    no failure);
//! 3. the zone's agents killed (kill -9): the share served in zone `b` and the failures seen
//!    by the caller (target: 0 failures with retries on).

use super::common::{metric_sum, metrics};
use agentmesh_tests::{served_by, Mesh, Node, NodeOpts};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const CAP: &str = "scenario.locality";
const NEAR_MS: f64 = 20.0;
const FAR_MS: f64 = 5.0;
const NEAR_MAX_CONCURRENCY: u32 = 2;

fn zoned(zone: &str, latency_ms: f64, max: Option<u32>) -> NodeOpts {
    NodeOpts {
        node_toml: format!("zone = \"{zone}\"\nregion = \"r\""),
        latency_ms_p50: latency_ms,
        max_concurrency: max,
        ..NodeOpts::caps(&[CAP])
    }
}

/// `n` calls, `conc` in flight: who served each successful one, and the failures.
async fn pool(mesh: &Mesh, caller: &Node, n: usize, conc: usize) -> (Vec<String>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..conc).map(|_| {
        let next = next.clone();
        async move {
            let (mut by, mut bad) = (Vec::new(), 0);
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match mesh
                    .call(caller, CAP, "{}", &[("x-mesh-deadline-ms", "10000")])
                    .await
                {
                    Ok(r) if r.status().is_success() => by.push(served_by(&r)),
                    _ => bad += 1,
                }
            }
            (by, bad)
        }
    });
    let mut all = Vec::new();
    let mut bad = 0;
    for (by, b) in futures::future::join_all(workers).await {
        all.extend(by);
        bad += b;
    }
    (all, bad)
}

fn share_in(by: &[String], nodes: &[Node]) -> f64 {
    let n = by
        .iter()
        .filter(|s| nodes.iter().any(|x| s.starts_with(&x.id)))
        .count();
    (n as f64 / by.len().max(1) as f64 * 1000.0).round() / 1000.0
}

/// Scenario 5; `n` calls per phase.
pub async fn run(n: usize) -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let caller = mesh
        .start_node(NodeOpts {
            node_toml: "zone = \"a\"\nregion = \"r\"".into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await?;
    let mut near = Vec::new();
    let mut far = Vec::new();
    for _ in 0..2 {
        near.push(
            mesh.start_node(zoned("a", NEAR_MS, Some(NEAR_MAX_CONCURRENCY)))
                .await?,
        );
        far.push(mesh.start_node(zoned("b", FAR_MS, None)).await?);
    }
    mesh.wait_offers(&caller, CAP, 4).await?;
    let all: Vec<Node> = near.iter().chain(&far).cloned().collect();
    let refused_before = overloaded(&all).await?;

    // 1. Healthy, within the zone's capacity (2 in flight).
    let (by, bad1) = pool(&mesh, &caller, n, 2).await;
    let healthy = share_in(&by, &near);
    // 2. More in flight than the zone's agents accept.
    let (by, bad2) = pool(&mesh, &caller, n, 16).await;
    let full_spill = share_in(&by, &far);
    let refused = overloaded(&all).await? - refused_before;
    // 3. The zone's agents die.
    for a in &near {
        mesh.procs.kill9(a.proc_index)?;
    }
    let t = std::time::Instant::now();
    let (by, bad3) = pool(&mesh, &caller, n, 2).await;
    let dead_spill = share_in(&by, &far);
    let m1 = healthy >= 0.95 && bad1 == 0;
    let m2 = refused == 0 && bad2 == 0 && full_spill > 0.0;
    let m3 = bad3 == 0 && dead_spill == 1.0;
    Ok(serde_json::json!({
        "scenario": 5,
        "name": "locality: two zones, the caller's zone first, spill-over when full or dead",
        "agents": {
            "zone_a": {"count": 2, "latency_p50_ms": NEAR_MS, "max_concurrency": NEAR_MAX_CONCURRENCY},
            "zone_b": {"count": 2, "latency_p50_ms": FAR_MS},
        },
        "calls_per_phase": n,
        "healthy": {
            "in_flight": 2, "share_in_zone": healthy, "target_share_in_zone": 0.95,
            "failed": bad1, "met": m1,
        },
        "zone_full": {
            "in_flight": 16, "share_spilled_to_other_zone": full_spill,
            "calls_refused_at_max_concurrency": refused, "failed": bad2,
            "target": "no call refused at a limit, no failure, some spill-over", "met": m2,
        },
        "zone_dead": {
            "in_flight": 2, "share_served_in_other_zone": dead_spill, "failed": bad3,
            "phase_ms": t.elapsed().as_millis() as u64,
            "target": "0 failures, every call served in the other zone", "met": m3,
        },
        "met": m1 && m2 && m3,
    }))
}

/// Calls the agent nodes refused because their agent was at `max_concurrency`.
async fn overloaded(agents: &[Node]) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for a in agents {
        total += metric_sum(&metrics(a).await?, "agentmesh_overloaded_total", &[]);
    }
    Ok(total as u64)
}
