//! Scenario 3 (a failing agent in a chain of 10 capabilities): a workflow of ten call steps
//! `chain.c0` … `chain.c9`, run continuously (4 runs in flight) by one node with the default
//! settings (policy `latency`, retries on). Two agents offer every capability; a third offers
//! only `chain.c4` and is switched to failing every call (500) for a while, then healed (its
//! demo agent's `--fail-while-file`). Figures: the share of workflow runs that failed (what
//! users see) while it failed, when its breaker opened, and after it healed, when the breaker
//! closed and when it served a call again. Targets: under 1 % of runs failed; the breaker
//! opened, then closed and traffic returned (time to recover reported).

use super::common::route_row;
use agentmesh_tests::{Mesh, NodeOpts};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEPS: usize = 10;
/// The capability the failing agent offers.
const FAILING_CAP: &str = "chain.c4";
const IN_FLIGHT: usize = 4;
const DEADLINE_MS: u64 = 10_000;
/// Bounds of each phase.
const OPEN_WAIT: Duration = Duration::from_secs(30);
const RECOVER_WAIT: Duration = Duration::from_secs(60);
/// How long the failure lasts after the breaker opened.
const ISOLATED_FOR: Duration = Duration::from_secs(5);

fn workflow() -> String {
    let mut t = format!("name = \"chain\"\ndeadline_ms = {DEADLINE_MS}\n");
    for k in 0..STEPS {
        t.push_str(&format!(
            "[[steps]]\nid = \"s{k}\"\ncall = \"chain.c{k}\"\n"
        ));
    }
    t
}

/// One workflow run as the user saw it.
#[derive(Debug, Clone)]
struct Run {
    started: Duration,
    ok: bool,
    /// Who served the `chain.c4` step, and its attempts.
    c4_by: String,
    c4_attempts: u64,
}

async fn one_run(http: &reqwest::Client, api: &str) -> (bool, String, u64) {
    let r = http
        .post(format!("{api}/v1/workflows/chain/run"))
        .json(&serde_json::json!({"input": {}}))
        .send()
        .await;
    let Ok(r) = r else {
        return (false, String::new(), 0);
    };
    let ok = r.status().is_success();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    let step = v["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "s4").cloned())
        .unwrap_or_default();
    let by = step["served_by"].as_str().unwrap_or("").to_string();
    (
        ok && v["status"] == "completed",
        by,
        step["attempts"].as_u64().unwrap_or(0),
    )
}

/// Runs scenario 3.
pub async fn run() -> anyhow::Result<serde_json::Value> {
    let mut mesh = Mesh::new()?;
    let dir = mesh.path().join("workflows");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("chain.toml"), workflow())?;
    let switch = mesh.path().join("c4-fails");
    let caps: Vec<String> = (0..STEPS).map(|k| format!("chain.c{k}")).collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let runner = mesh
        .start_node(NodeOpts {
            extra_toml: format!("[workflows]\npaths = [\"{}\"]\n", dir.display()),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await?;
    for _ in 0..2 {
        mesh.start_node(NodeOpts {
            latency_ms_p50: 5.0,
            ..NodeOpts::caps(&caps)
        })
        .await?;
    }
    let victim = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 5.0,
            agent_args: vec!["--fail-while-file".into(), switch.display().to_string()],
            ..NodeOpts::caps(&[FAILING_CAP])
        })
        .await?;
    mesh.wait_offers(&runner, FAILING_CAP, 3).await?;
    mesh.wait_offers(&runner, "chain.c9", 2).await?;

    let runs = Arc::new(Mutex::new(Vec::<Run>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let http = reqwest::Client::new();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (runs, stop, http, api) =
                (runs.clone(), stop.clone(), http.clone(), runner.api.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = t0.elapsed();
                    let (ok, c4_by, c4_attempts) = one_run(&http, &api).await;
                    runs.lock().unwrap().push(Run {
                        started,
                        ok,
                        c4_by,
                        c4_attempts,
                    });
                }
            })
        })
        .collect();
    let breaker = || async {
        route_row(&mesh, &runner, FAILING_CAP, &victim)
            .await
            .map(|r| r["breaker"].as_str().unwrap_or("").to_string())
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let t_fail = t0.elapsed();
    std::fs::write(&switch, "")?;
    let mut t_open = None;
    while t0.elapsed() - t_fail < OPEN_WAIT {
        if breaker().await.as_deref() == Some("open") {
            t_open = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(ISOLATED_FOR).await;
    let t_heal = t0.elapsed();
    std::fs::remove_file(&switch)?;
    let (mut t_closed, mut t_back) = (None, None);
    let vid = victim.id.clone();
    while t0.elapsed() - t_heal < RECOVER_WAIT && (t_closed.is_none() || t_back.is_none()) {
        if t_closed.is_none() && breaker().await.as_deref() == Some("closed") {
            t_closed = Some(t0.elapsed());
        }
        if t_back.is_none() {
            let r = runs.lock().unwrap();
            t_back = r
                .iter()
                .filter(|x| x.started >= t_heal && x.ok && x.c4_by.starts_with(&vid))
                .map(|x| x.started)
                .min();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few seconds more to see the share of traffic it gets back.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t_end = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let runs = runs.lock().unwrap().clone();
    let phase = |from: Duration, to: Duration| -> Vec<&Run> {
        runs.iter()
            .filter(|r| r.started >= from && r.started < to)
            .collect()
    };
    let summary = |rs: &[&Run]| {
        let failed = rs.iter().filter(|r| !r.ok).count();
        let to_victim = rs.iter().filter(|r| r.c4_by.starts_with(&vid)).count();
        let retried = rs.iter().filter(|r| r.c4_attempts > 1).count();
        serde_json::json!({
            "runs": rs.len(),
            "failed": failed,
            "failed_pct": (failed as f64 * 10_000.0 / rs.len().max(1) as f64).round() / 100.0,
            "c4_served_by_failing_agent": to_victim,
            "c4_steps_retried": retried,
        })
    };
    let healthy = summary(&phase(Duration::ZERO, t_fail));
    let failing = summary(&phase(t_fail, t_heal));
    let after = summary(&phase(t_back.unwrap_or(t_end), t_end));
    let since = |t: Option<Duration>, from: Duration| t.map(|t| (t - from).as_millis() as u64);
    let err_pct = failing["failed_pct"].as_f64().unwrap_or(100.0);
    let met = err_pct < 1.0 && t_open.is_some() && t_closed.is_some() && t_back.is_some();
    Ok(serde_json::json!({
        "scenario": 3,
        "name": "failing agent in a chain of 10 capabilities (workflow, default policy, retries on)",
        "setup": {"steps": STEPS, "providers_per_capability": "2 (+1 failing on chain.c4)", "runs_in_flight": IN_FLIGHT, "agent_latency_p50_ms": 5.0},
        "healthy": healthy,
        "while_failing": failing,
        "after_recovery": after,
        "breaker_open_after_ms": since(t_open, t_fail),
        "failing_for_ms": (t_heal - t_fail).as_millis() as u64,
        "time_to_recover": {
            "breaker_closed_after_ms": since(t_closed, t_heal),
            "first_call_served_after_ms": since(t_back, t_heal),
        },
        "target_failed_runs_pct": "< 1",
        "target_recovery": "breaker closes and traffic returns (time reported)",
        "met": met,
    }))
}
