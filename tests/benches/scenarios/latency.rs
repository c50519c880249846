//! Scenario 1 (latency): six agents whose speeds differ tenfold (two at 5 ms, four at 50 ms,
//! each with `max_concurrency = 8`); one caller compares `latency` with `random` at 4 and at 16
//! calls in flight. Target: mean latency −70 % or better, and no agent pushed past its
//! concurrency limit (no agent node counts a call refused for `max_concurrency`).

use super::common::{metric_sum, metrics, pool, stats};
use agentmesh_tests::{Mesh, Node, NodeOpts};

const CAP: &str = "scenario.latency";
/// (median latency ms, agents).
const FLEET: [(f64, usize); 2] = [(5.0, 2), (50.0, 4)];
const MAX_CONCURRENCY: u32 = 8;

/// Calls each agent node refused because its agent was at `max_concurrency`.
async fn overloaded(agents: &[Node]) -> anyhow::Result<u64> {
    let mut total = 0.0;
    for a in agents {
        total += metric_sum(&metrics(a).await?, "agentmesh_overloaded_total", &[]);
    }
    Ok(total as u64)
}

fn with_policy(
    policy: &'static str,
) -> impl Fn(usize) -> (String, Vec<(&'static str, String)>) + Sync {
    move |_| {
        (
            "{}".to_string(),
            vec![
                ("x-mesh-policy", policy.to_string()),
                ("x-mesh-deadline-ms", "5000".to_string()),
            ],
        )
    }
}

/// Runs scenario 1 with `n` calls per policy and concurrency.
pub async fn run(n: usize) -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let caller = mesh.start_node(NodeOpts::caps(&["caller.only"])).await?;
    let mut agents = Vec::new();
    for (lat, count) in FLEET {
        for _ in 0..count {
            agents.push(
                mesh.start_node(NodeOpts {
                    latency_ms_p50: lat,
                    max_concurrency: Some(MAX_CONCURRENCY),
                    ..NodeOpts::caps(&[CAP])
                })
                .await?,
            );
        }
    }
    mesh.wait_offers(&caller, CAP, agents.len()).await?;
    // Warm-up: every agent observed a few times.
    pool(
        &mesh,
        &caller,
        CAP,
        agents.len() * 4,
        2,
        with_policy("round_robin"),
    )
    .await;
    let mut rows = Vec::new();
    let mut met = true;
    for conc in [4usize, 16] {
        let before = overloaded(&agents).await?;
        let r = pool(&mesh, &caller, CAP, n, conc, with_policy("random")).await;
        let l = pool(&mesh, &caller, CAP, n, conc, with_policy("latency")).await;
        let refused = overloaded(&agents).await? - before;
        let (r, l) = (stats(&r), stats(&l));
        let mean = |v: &serde_json::Value| v["mean_ms"].as_f64().unwrap_or(f64::NAN);
        let change = ((mean(&l) - mean(&r)) / mean(&r) * 1000.0).round() / 10.0;
        let ok = change <= -70.0 && refused == 0;
        met &= ok;
        rows.push(serde_json::json!({
            "in_flight": conc,
            "random": r,
            "latency": l,
            "mean_change_pct": change,
            "target_mean_change_pct": -70.0,
            "calls_refused_at_max_concurrency": refused,
            "target_calls_refused_at_max_concurrency": 0,
            "met": ok,
        }));
    }
    Ok(serde_json::json!({
        "scenario": 1,
        "name": "latency: agents 10x apart, latency vs random",
        "agents": FLEET.iter().map(|(l, c)| serde_json::json!({"latency_p50_ms": l, "count": c, "max_concurrency": MAX_CONCURRENCY})).collect::<Vec<_>>(),
        "calls_per_policy": n,
        "runs": rows,
        "met": met,
    }))
}
