//! Scenario 2 (cost with complexity): a mix of simple and complex tasks (one in five complex)
//! over three cheap novices (cost 1, 20 ms, failing 70 % of complex tasks with a 500, which
//! callers retry) and two fast experts (cost 10, 5 ms). The mesh caller marks each task with
//! `x-mesh-complexity` (`low`: the cheapest competent agent; `high`: experts); the baseline
//! caller uses `round_robin` and no hint. Every attempt an agent serves is billed at its
//! declared cost (counted on the agents' nodes, so retries cost too). Target: total cost
//! −40 % or better against round robin, with a success rate equal or better.

use super::common::{declare, metric_sum, metrics, pool, r1, route_row, stats, Seen};
use agentmesh_tests::{Mesh, Node, NodeOpts};

const CAP: &str = "scenario.task";
const NOVICES: usize = 3;
const EXPERTS: usize = 2;
const NOVICE_COST: f64 = 1.0;
const EXPERT_COST: f64 = 10.0;
/// Every `COMPLEX_EVERY`-th task is complex.
const COMPLEX_EVERY: usize = 5;
const NOVICE_FAILS_COMPLEX: f64 = 0.7;

fn complex(i: usize) -> bool {
    i.is_multiple_of(COMPLEX_EVERY)
}

fn body(i: usize) -> String {
    let c = if complex(i) { "high" } else { "low" };
    serde_json::json!({"task": i, "complexity": c}).to_string()
}

/// Attempts each agent node served (any outcome), by node.
async fn served(agents: &[Node]) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for a in agents {
        let t = metrics(a).await?;
        out.push(metric_sum(
            &t,
            "agentmesh_inbound_calls_total",
            &[&format!("capability=\"{CAP}\"")],
        ));
    }
    Ok(out)
}

fn bill(before: &[f64], after: &[f64], costs: &[f64]) -> (f64, f64) {
    let attempts: f64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
    let cost = after
        .iter()
        .zip(before)
        .zip(costs)
        .map(|((a, b), c)| (a - b) * c)
        .sum();
    (cost, attempts)
}

fn success(seen: &[Seen]) -> f64 {
    seen.iter().filter(|s| s.ok).count() as f64 / seen.len().max(1) as f64
}

/// Runs scenario 2 with `n` tasks per caller.
pub async fn run(n: usize) -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let smart = mesh.start_node(NodeOpts::caps(&["caller.smart"])).await?;
    let rr = mesh.start_node(NodeOpts::caps(&["caller.rr"])).await?;
    let mut agents = Vec::new();
    let mut costs = Vec::new();
    for k in 0..NOVICES + EXPERTS {
        let expert = k >= NOVICES;
        let opts = if expert {
            NodeOpts {
                latency_ms_p50: 5.0,
                ..NodeOpts::caps(&[CAP])
            }
        } else {
            NodeOpts {
                latency_ms_p50: 20.0,
                agent_args: vec![
                    "--fail-complex-rate".into(),
                    NOVICE_FAILS_COMPLEX.to_string(),
                ],
                ..NodeOpts::caps(&[CAP])
            }
        };
        let node = mesh.start_node(opts).await?;
        let (prof, cost) = if expert {
            ("expert", EXPERT_COST)
        } else {
            ("novice", NOVICE_COST)
        };
        declare(&node, &[CAP], prof, cost).await?;
        agents.push((node, prof));
        costs.push(cost);
    }
    for c in [&smart, &rr] {
        for (a, prof) in &agents {
            agentmesh_tests::wait_until(
                "the callers see every agent's declared proficiency",
                agentmesh_tests::CONVERGE_TIMEOUT,
                || async {
                    Ok(route_row(&mesh, c, CAP, a)
                        .await
                        .filter(|r| r["proficiency"] == *prof)
                        .map(|_| ()))
                },
            )
            .await?;
        }
    }
    let nodes: Vec<Node> = agents.iter().map(|(n, _)| n.clone()).collect();
    let deadline = ("x-mesh-deadline-ms", "5000".to_string());

    let b = served(&nodes).await?;
    let smart_seen = pool(&mesh, &smart, CAP, n, 4, |i| {
        let c = if complex(i) { "high" } else { "low" };
        (
            body(i),
            vec![("x-mesh-complexity", c.to_string()), deadline.clone()],
        )
    })
    .await;
    let m = served(&nodes).await?;
    let rr_seen = pool(&mesh, &rr, CAP, n, 4, |i| {
        (
            body(i),
            vec![
                ("x-mesh-policy", "round_robin".to_string()),
                deadline.clone(),
            ],
        )
    })
    .await;
    let e = served(&nodes).await?;
    let (smart_cost, smart_attempts) = bill(&b, &m, &costs);
    let (rr_cost, rr_attempts) = bill(&m, &e, &costs);
    let change = r1((smart_cost - rr_cost) / rr_cost * 100.0);
    let (s_ok, r_ok) = (success(&smart_seen), success(&rr_seen));
    let is_expert = |by: &str| {
        agents
            .iter()
            .any(|(a, p)| *p == "expert" && by.starts_with(&a.id))
    };
    let complex_to_experts = smart_seen
        .iter()
        .filter(|s| s.ok && complex(s.i) && is_expert(&s.by))
        .count();
    let simple_to_novices = smart_seen
        .iter()
        .filter(|s| s.ok && !complex(s.i) && !is_expert(&s.by))
        .count();
    let met = change <= -40.0 && s_ok >= r_ok;
    Ok(serde_json::json!({
        "scenario": 2,
        "name": "cost with complexity: x-mesh-complexity vs round_robin",
        "agents": [
            {"count": NOVICES, "proficiency": "novice", "cost": NOVICE_COST, "latency_p50_ms": 20.0, "fails_complex": NOVICE_FAILS_COMPLEX},
            {"count": EXPERTS, "proficiency": "expert", "cost": EXPERT_COST, "latency_p50_ms": 5.0},
        ],
        "tasks_per_caller": n,
        "complex_share": 1.0 / COMPLEX_EVERY as f64,
        "with_complexity": {
            "total_cost": smart_cost, "attempts": smart_attempts, "success_rate": s_ok,
            "complex_tasks_served_by_experts": complex_to_experts,
            "simple_tasks_served_by_novices": simple_to_novices,
            "latency": stats(&smart_seen),
        },
        "round_robin": {
            "total_cost": rr_cost, "attempts": rr_attempts, "success_rate": r_ok,
            "latency": stats(&rr_seen),
        },
        "total_cost_change_pct": change,
        "target_total_cost_change_pct": -40.0,
        "target_success_rate": "≥ round_robin's",
        "met": met,
    }))
}
