//! Failure and recovery on real processes: a breaker opens on a failing agent, half-opens and
//! closes again when the agent recovers, with traffic returning to it; and kill -9 of one of
//! three providers under steady load from two callers, then its restart: calls in flight at the
//! kill are retried elsewhere well within their deadline, and the restarted node is back in
//! rotation within seconds. Times are printed; the asserted bounds are generous multiples, not
//! timing thresholds.

use agentmesh_tests::load::{self, LoadSpec, Outcome, Report, Stop};
use agentmesh_tests::{wait_until, Mesh, Node, NodeOpts};
use std::time::{Duration, Instant};

const CAP: &str = "svc";

/// The caller's `/v1/routes/{CAP}` row for `target`, if listed.
async fn route_row(mesh: &Mesh, caller: &Node, target: &Node) -> Option<serde_json::Value> {
    let (_, v) = mesh.get(caller, &format!("/v1/routes/{CAP}")).await.ok()?;
    v["candidates"]
        .as_array()?
        .iter()
        .find(|r| r["node_id"] == target.id.as_str())
        .cloned()
}

/// `agentmesh_breaker_state` for (`target`, [`CAP`]) in the caller's `/metrics`.
async fn breaker_metric(caller: &Node, target: &Node) -> Option<f64> {
    let text = reqwest::get(format!("{}/metrics", caller.api))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let want = format!("target_node=\"{}\"", target.id);
    text.lines()
        .filter(|l| l.starts_with("agentmesh_breaker_state{"))
        .filter(|l| l.contains(&want) && l.contains(&format!("capability=\"{CAP}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// One call of [`CAP`]: who served it; panics on an error (retries must hide the failing agent).
async fn call_ok(mesh: &Mesh, caller: &Node) -> String {
    let (status, by, _, v) = mesh
        .call_json(caller, CAP, &[("x-mesh-policy", "round_robin")])
        .await
        .unwrap();
    assert_eq!(status, 200, "a user saw an error: {v}");
    by
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_opens_half_opens_and_closes_when_the_agent_recovers() {
    let mut mesh = Mesh::new().unwrap();
    let switch = mesh.path().join("victim-fails");
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    let victim = mesh
        .start_node(NodeOpts {
            agent_args: vec![
                "--fail-while-file".into(),
                switch.display().to_string(),
                "--error-status".into(),
                "503".into(),
            ],
            ..NodeOpts::caps(&[CAP])
        })
        .await
        .unwrap();
    mesh.start_node(NodeOpts::caps(&[CAP])).await.unwrap();
    mesh.start_node(NodeOpts::caps(&[CAP])).await.unwrap();
    mesh.wait_offers(&caller, CAP, 3).await.unwrap();
    for _ in 0..9 {
        call_ok(&mesh, &caller).await;
    }
    assert_eq!(
        route_row(&mesh, &caller, &victim).await.unwrap()["breaker"],
        "closed"
    );

    // The agent breaks: its breaker opens, and no user sees an error meanwhile (retries).
    std::fs::write(&switch, "").unwrap();
    let mut calls_to_open = 0;
    loop {
        call_ok(&mesh, &caller).await;
        calls_to_open += 1;
        let row = route_row(&mesh, &caller, &victim).await.unwrap();
        if row["breaker"] == "open" {
            break;
        }
        // Once its success rate falls below the preferred tier, the victim only gets the 2 %
        // probe calls, and its breaker may still need one more failure to open: 100 calls
        // missed that ~16 % of the time (flaky); 400 leave ~0.04 %.
        assert!(calls_to_open < 400, "breaker never opened: {row}");
    }
    assert_eq!(breaker_metric(&caller, &victim).await, Some(2.0));
    // While open, nothing reaches it.
    for _ in 0..6 {
        let by = call_ok(&mesh, &caller).await;
        assert!(
            !by.starts_with(&victim.id),
            "served by an open breaker's agent"
        );
    }

    // Left alone, the breaker half-opens after its open duration.
    let t = Instant::now();
    wait_until("breaker half-open", Duration::from_secs(30), || async {
        let row = route_row(&mesh, &caller, &victim).await;
        Ok(row.filter(|r| r["breaker"] == "half_open").map(|_| ()))
    })
    .await
    .unwrap();
    eprintln!("open -> half_open after {:?} without traffic", t.elapsed());
    assert_eq!(breaker_metric(&caller, &victim).await, Some(1.0));

    // The agent recovers: probes succeed, the breaker closes and traffic returns.
    std::fs::remove_file(&switch).unwrap();
    let t = Instant::now();
    let mut calls_to_close = 0;
    loop {
        call_ok(&mesh, &caller).await;
        calls_to_close += 1;
        let row = route_row(&mesh, &caller, &victim).await.unwrap();
        if row["breaker"] == "closed" {
            break;
        }
        assert!(calls_to_close < 200, "breaker never closed: {row}");
    }
    eprintln!(
        "breaker opened after {calls_to_open} calls; closed {:?} and {calls_to_close} calls after the agent recovered",
        t.elapsed()
    );
    assert_eq!(breaker_metric(&caller, &victim).await, Some(0.0));
    let mut back = 0;
    for _ in 0..60 {
        if call_ok(&mesh, &caller).await.starts_with(&victim.id) {
            back += 1;
        }
    }
    // Round robin over three: about 20 of 60 once it is back in rotation.
    assert!(back >= 10, "recovered agent served only {back} of 60 calls");
}

/// Calls in `r` sent at or after `from` and served by `node`.
fn served_by_since<'a>(r: &'a Report, node: &str, from: Duration) -> Vec<&'a load::Record> {
    r.records
        .iter()
        .filter(|x| x.sent_at >= from)
        .filter(|x| matches!(&x.outcome, Outcome::Ok(s) if s.starts_with(node)))
        .collect()
}

/// Calls `caller` routed that `agent` answered with success (`agentmesh_calls_total`).
async fn served_ok(caller: &Node, agent: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{}/metrics", caller.api))
        .await?
        .text()
        .await?;
    let want = format!("target_agent=\"{agent}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("agentmesh_calls_total{"))
        .filter(|l| l.contains(&want) && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Deadline of every call under load (the 10 s).
const DEADLINE_MS: u64 = 10_000;
/// Calls per second from each caller.
const RATE: u32 = 40;

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_a_provider_under_load_fails_over_and_the_restart_rejoins() {
    let mut mesh = Mesh::new().unwrap();
    let callers = [
        mesh.start_node(NodeOpts::caps(&["caller.only"]))
            .await
            .unwrap(),
        mesh.start_node(NodeOpts::caps(&["caller.two"]))
            .await
            .unwrap(),
    ];
    let provider = || NodeOpts {
        latency_ms_p50: 30.0,
        ..NodeOpts::caps(&[CAP])
    };
    let victim = mesh.start_node(provider()).await.unwrap();
    mesh.start_node(provider()).await.unwrap();
    mesh.start_node(provider()).await.unwrap();
    for c in &callers {
        mesh.wait_offers(c, CAP, 3).await.unwrap();
    }

    let t0 = Instant::now();
    let stop = Stop::default();
    let loads: Vec<_> = callers
        .iter()
        .map(|c| {
            let spec = LoadSpec {
                api: c.api.clone(),
                capability: CAP.into(),
                rate_per_s: RATE,
                deadline_ms: DEADLINE_MS,
            };
            tokio::spawn(load::run(spec, stop.clone(), Duration::from_secs(120)))
        })
        .collect();
    // Steady state, with the victim in rotation on both callers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    mesh.procs.kill9(victim.proc_index).unwrap();
    let killed_at = t0.elapsed();
    // Until both callers stop ranking the victim (dead member or open breaker).
    let unranked = wait_until(
        "callers stop routing to the victim",
        Duration::from_secs(30),
        || async {
            for c in &callers {
                if let Some(r) = route_row(&mesh, c, &victim).await {
                    if !r["rank"].is_null() {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(t0.elapsed() - killed_at))
        },
    )
    .await
    .unwrap();
    // Down for a while (as an operator would restart it), then the same key and directory.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut before_restart = Vec::new();
    for c in &callers {
        before_restart.push(served_ok(c, &victim.agent).await.unwrap());
    }
    let restarted_at = t0.elapsed();
    let victim = mesh.restart_node(&victim).await.unwrap();
    // Until each caller has a call served by the new incarnation (bounded below).
    let back_in = wait_until(
        "the restarted node serves calls again",
        Duration::from_secs(40),
        || async {
            for (c, n) in callers.iter().zip(&before_restart) {
                if served_ok(c, &victim.agent).await? <= *n {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    );
    let back_in = back_in.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.stop();
    let mut reports = Vec::new();
    for l in loads {
        reports.push(l.await.unwrap().unwrap());
    }
    back_in.unwrap();

    let vid = victim.id.as_str();
    let mut all = Report::default();
    for r in &reports {
        eprintln!("caller load: {}", r.summary());
        all.records.extend(r.records.iter().cloned());
    }
    // Every call accounted: none hung, none failed without a typed error.
    assert_eq!(all.hung(), 0, "{}", all.summary());
    assert_eq!(all.untyped(), 0, "{}", all.summary());
    // Before the kill: median latency, the reference for "delayed by the dead node".
    let mut before: Vec<Duration> = all
        .records
        .iter()
        .filter(|x| x.sent_at + x.took < killed_at && matches!(x.outcome, Outcome::Ok(_)))
        .map(|x| x.took)
        .collect();
    before.sort();
    let p50_before = before[before.len() / 2];
    assert!(
        !served_by_since(&all, vid, Duration::ZERO).is_empty(),
        "the victim served nothing before the kill"
    );
    // Calls the kill touched: sent before the kill and finished after it, or sent after it.
    let after: Vec<&load::Record> = all
        .records
        .iter()
        .filter(|x| x.sent_at + x.took >= killed_at && x.sent_at < restarted_at)
        .collect();
    let slow = Duration::from_millis(1000).max(p50_before * 10);
    let delayed: Vec<&&load::Record> = after.iter().filter(|x| x.took > slow).collect();
    let failed: Vec<&&load::Record> = after
        .iter()
        .filter(|x| !matches!(x.outcome, Outcome::Ok(_)))
        .collect();
    let served_while_dead = served_by_since(&all, vid, killed_at).len()
        - served_by_since(&all, vid, restarted_at).len();
    // First call that ended after the kill, served by another node.
    let first_avoiding = after
        .iter()
        .filter(|x| x.sent_at >= killed_at)
        .filter(|x| matches!(&x.outcome, Outcome::Ok(s) if !s.starts_with(vid)))
        .map(|x| x.sent_at + x.took - killed_at)
        .min()
        .unwrap();
    // Last call that ended held up (slow) or failed because of the dead node.
    let last_hit = delayed
        .iter()
        .map(|x| **x)
        .chain(failed.iter().map(|x| **x))
        .map(|x| (x.sent_at + x.took).saturating_sub(killed_at))
        .max()
        .unwrap_or_default();
    let slowest = after.iter().map(|x| x.took).max().unwrap_or_default();
    let first_back = served_by_since(&all, vid, restarted_at)
        .iter()
        .map(|x| x.sent_at + x.took - restarted_at)
        .min();
    eprintln!(
        "kill -9 failover ({} calls/s from each of 2 callers, deadline {DEADLINE_MS} ms, p50 before {} ms):\n  \
         first call served elsewhere {} ms after the kill; both callers stopped ranking the victim after {} ms;\n  \
         last call held up (> {} ms) or failed ended {} ms after the kill; {} calls held up, {} failed of {} touched; slowest {} ms\n  \
         restarted {} ms after the kill; first call served by the new incarnation {:?} ms after the restart",
        RATE,
        ms(p50_before),
        ms(first_avoiding),
        ms(unranked),
        ms(slow),
        ms(last_hit),
        delayed.len(),
        failed.len(),
        after.len(),
        ms(slowest),
        ms(restarted_at - killed_at),
        first_back.map(ms),
    );
    assert_eq!(served_while_dead, 0, "calls answered by a killed node");
    // Calls in flight at the kill were retried elsewhere, not held for most of their deadline.
    assert!(
        slowest < Duration::from_millis(DEADLINE_MS / 2),
        "a call took {slowest:?} of its {DEADLINE_MS} ms deadline"
    );
    // With retries on, users see (almost) no errors: at most 1 % of the calls the kill touched.
    assert!(
        failed.len() * 100 <= after.len(),
        "{} of {} calls failed: {:?}",
        failed.len(),
        after.len(),
        failed.iter().map(|x| &x.outcome).collect::<Vec<_>>()
    );
    // Back in rotation within seconds, not a minute (generous bound for a loaded machine).
    let first_back = first_back.expect("the restarted node served no call");
    assert!(
        first_back < Duration::from_secs(20),
        "restarted node first served {first_back:?} after its restart"
    );
}
