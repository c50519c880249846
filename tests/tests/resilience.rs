//! Routing and resilience end to end, on real processes: breakers, the capability fallback,
//! deadline propagation across three hops, loop refusal, retries on another agent, and
//! shedding by caller priority. Every wait is on a condition and bounded.

use agentmesh_tests::{Mesh, Node, NodeOpts};
use std::time::{Duration, Instant};

/// Breakers that open quickly, no retries: each call says exactly what one attempt did.
const FAST_BREAKER: &str = "[defaults]\npolicy = \"round_robin\"\n\
    [defaults.retry]\nmax_attempts = 1\n\
    [defaults.breaker]\nmin_calls = 3\nwindow_calls = 10\nopen_ms = 30000\nopen_ms_max = 60000\n";

fn opts(caps: &[&str]) -> NodeOpts {
    NodeOpts::caps(caps)
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_agent_gets_its_circuit_opened_and_traffic_moves() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh
        .start_node(NodeOpts {
            extra_toml: FAST_BREAKER.into(),
            ..opts(&["svc"])
        })
        .await
        .unwrap();
    let bad = mesh
        .start_node(NodeOpts {
            error_rate: 1.0,
            ..opts(&["svc"])
        })
        .await
        .unwrap();
    mesh.start_node(opts(&["svc"])).await.unwrap();
    mesh.wait_offers(&a, "svc", 3).await.unwrap();
    let started = Instant::now();
    let mut opened_after = None;
    for i in 0..60 {
        let (status, by, _, v) = mesh.call_json(&a, "svc", &[]).await.unwrap();
        if by.contains(&bad.id) || status != 200 {
            assert_eq!(v["code"], "agent_error", "{v}");
        }
        let (_, routes) = mesh.get(&a, "/v1/routes/svc").await.unwrap();
        let state = routes["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node_id"] == bad.id.as_str())
            .map(|c| c["breaker"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        if state == "open" {
            opened_after = Some((i + 1, started.elapsed()));
            break;
        }
    }
    let (calls, took) = opened_after.expect("the failing agent's breaker opened");
    eprintln!("breaker opened after {calls} calls, {took:?}");
    for _ in 0..20 {
        let (status, by, _, v) = mesh.call_json(&a, "svc", &[]).await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert!(
            !by.contains(&bad.id),
            "traffic still reaches the open circuit"
        );
    }
    let (_, routes) = mesh.get(&a, "/v1/routes/svc").await.unwrap();
    let row = routes["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["node_id"] == bad.id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["rank"], serde_json::Value::Null, "{row}");
    assert!(
        row["reason"].as_str().unwrap().contains("breaker open"),
        "{row}"
    );
    assert!(row["success_rate"].as_f64().unwrap() < 0.5, "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_breakers_open_calls_the_fallback_capability() {
    let mut mesh = Mesh::new().unwrap();
    let extra = format!("{FAST_BREAKER}[capability.\"primary\"]\nfallback = \"backup\"\n");
    let a = mesh
        .start_node(NodeOpts {
            extra_toml: extra,
            ..opts(&["other"])
        })
        .await
        .unwrap();
    mesh.start_node(NodeOpts {
        error_rate: 1.0,
        ..opts(&["primary"])
    })
    .await
    .unwrap();
    let backup = mesh.start_node(opts(&["backup"])).await.unwrap();
    mesh.wait_offers(&a, "primary", 1).await.unwrap();
    mesh.wait_offers(&a, "backup", 1).await.unwrap();
    let mut fell_back = false;
    for _ in 0..10 {
        let (status, by, h, v) = mesh.call_json(&a, "primary", &[]).await.unwrap();
        if status == 200 {
            assert!(by.contains(&backup.id), "{by}");
            let policy = h["x-mesh-policy"].to_str().unwrap();
            assert!(policy.ends_with("; fallback from primary"), "{policy}");
            fell_back = true;
            break;
        }
        assert_eq!(v["code"], "agent_error", "{v}");
    }
    assert!(fell_back, "calls never moved to the fallback");
    let (_, routes) = mesh.get(&a, "/v1/routes/primary").await.unwrap();
    assert!(
        routes["policy"]
            .as_str()
            .unwrap()
            .contains("fallback backup"),
        "{routes}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_shrinks_across_three_hops() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh
        .start_node(NodeOpts {
            forward: Some("hop.b".into()),
            ..opts(&["hop.a"])
        })
        .await
        .unwrap();
    mesh.start_node(NodeOpts {
        forward: Some("hop.c".into()),
        ..opts(&["hop.b"])
    })
    .await
    .unwrap();
    mesh.start_node(opts(&["hop.c"])).await.unwrap();
    let b = mesh.nodes[1].clone();
    mesh.wait_offers(&a, "hop.b", 1).await.unwrap();
    mesh.wait_offers(&b, "hop.c", 1).await.unwrap();
    let (status, _, _, v) = mesh
        .call_json(&a, "hop.a", &[("x-mesh-deadline-ms", "2000")])
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    let d = |v: &serde_json::Value| -> u64 {
        v["received_headers"]["x-mesh-deadline-ms"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (d1, d2, d3) = (d(&v), d(&v["forwarded"]), d(&v["forwarded"]["forwarded"]));
    eprintln!("deadlines seen by the agents: {d1} → {d2} → {d3} ms");
    assert!(d1 < 2000 && d2 < d1 && d3 < d2, "{d1} {d2} {d3}");
    assert!(d3 > 1000, "reserves are 10 %, not more: {d3}");
    // The chain token travels too.
    assert!(v["forwarded"]["forwarded"]["received_headers"]["x-mesh-chain"].is_string());
    // Too little time: refused at once, not sent.
    let (status, _, _, v) = mesh
        .call_json(&a, "hop.c", &[("x-mesh-deadline-ms", "5")])
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn call_loop_is_refused_at_once() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh
        .start_node(NodeOpts {
            forward: Some("loop.b".into()),
            ..opts(&["loop.a"])
        })
        .await
        .unwrap();
    mesh.start_node(NodeOpts {
        forward: Some("loop.c".into()),
        ..opts(&["loop.b"])
    })
    .await
    .unwrap();
    mesh.start_node(NodeOpts {
        forward: Some("loop.a".into()),
        ..opts(&["loop.c"])
    })
    .await
    .unwrap();
    let (b, c) = (mesh.nodes[1].clone(), mesh.nodes[2].clone());
    mesh.wait_offers(&a, "loop.b", 1).await.unwrap();
    mesh.wait_offers(&b, "loop.c", 1).await.unwrap();
    mesh.wait_offers(&c, "loop.a", 1).await.unwrap();
    let started = Instant::now();
    let (status, _, h, v) = mesh.call_json(&a, "loop.a", &[]).await.unwrap();
    let took = started.elapsed();
    eprintln!("A→B→C→A refused in {took:?}: {v}");
    assert_eq!(status, 508, "{v}");
    assert_eq!(h["x-mesh-error"], "loop_detected");
    assert_eq!(v["code"], "loop_detected", "{v}");
    // The root cause at the top level: where the cycle closed, not escaped JSON per hop.
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("call loop: node"), "{v}");
    assert!(msg.contains("loop.a"), "{v}");
    assert!(v.get("body").is_none(), "no nested body: {v}");
    let path = v["path"].as_array().cloned().unwrap_or_default();
    assert!(!path.is_empty() && path.len() <= 16, "{v}");
    assert!(
        v.to_string().len() < 2048,
        "{} bytes: {v}",
        v.to_string().len()
    );
    assert_eq!(h["x-mesh-attempts"], "1", "a loop is never retried");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_lands_on_a_different_agent() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh.start_node(opts(&["other"])).await.unwrap();
    let dead = mesh.start_node(opts(&["svc"])).await.unwrap();
    let live = mesh.start_node(opts(&["svc"])).await.unwrap();
    mesh.wait_offers(&a, "svc", 2).await.unwrap();
    // Kill the pinned agent's process (not its node): its node answers agent_unreachable,
    // which is transient.
    mesh.procs.kill9(dead.proc_index - 1).unwrap();
    let (status, by, h, v) = mesh
        .call_json(&a, "svc", &[("x-mesh-prefer", &dead.agent)])
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert!(by.contains(&live.id), "{by}");
    assert_eq!(h["x-mesh-attempts"], "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn shedding_refuses_experimental_callers_first() {
    let mut mesh = Mesh::new().unwrap();
    let no_retry = "[defaults.retry]\nmax_attempts = 1\n".to_string();
    let exp = mesh
        .start_node(NodeOpts {
            priority: Some("experimental".into()),
            extra_toml: no_retry.clone(),
            ..opts(&["x.exp"])
        })
        .await
        .unwrap();
    let server = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 800.0,
            max_concurrency: Some(4),
            ..opts(&["slow"])
        })
        .await
        .unwrap();
    let crit = mesh
        .start_node(NodeOpts {
            priority: Some("critical".into()),
            extra_toml: no_retry,
            ..opts(&["x.crit"])
        })
        .await
        .unwrap();
    for n in [&exp, &crit] {
        mesh.wait_offers(n, "slow", 1).await.unwrap();
    }
    mesh.wait_offers(&server, "x.exp", 1).await.unwrap();
    mesh.wait_offers(&server, "x.crit", 1).await.unwrap();
    let burst = |node: Node| {
        let calls = (0..4).map(|_| {
            let n = node.clone();
            let m = &mesh;
            async move { m.call_json(&n, "slow", &[]).await.unwrap() }
        });
        futures::future::join_all(calls)
    };
    let exp_results = burst(exp.clone()).await;
    let ok = exp_results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = exp_results.iter().filter(|r| r.0 == 503).collect();
    // Experimental callers never get more than 50 % of the 4 slots, and what is refused is
    // refused as shedding. (A burst on a loaded machine may not overlap perfectly, and a
    // transport error is not shedding, so the exact split is not asserted.)
    let codes: Vec<u16> = exp_results.iter().map(|r| r.0).collect();
    assert!(ok <= 2, "experimental ok {ok}, statuses {codes:?}");
    assert!(!shed.is_empty(), "nothing was shed: {codes:?}");
    for r in shed {
        assert_eq!(r.3["code"], "overloaded");
        assert!(r.3["message"].as_str().unwrap().contains("shed"), "{}", r.3);
    }
    let crit_results = burst(crit.clone()).await;
    let ok = crit_results.iter().filter(|r| r.0 == 200).count();
    assert_eq!(ok, 4, "critical callers may use every slot");
}
