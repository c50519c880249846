//! Hedged calls and adaptive concurrency limits, on real processes: a hedge to a fast agent
//! wins over a slow one and the slow attempt is cancelled at its node; an adaptive limit keeps
//! a slow agent from being buried under a burst.

use agentmesh_tests::{wait_until, Mesh, NodeOpts};
use std::time::Duration;

/// Latency of the slow agent: far above anything the assertions wait for.
const SLOW_MS: f64 = 8000.0;
/// Deadline of every call here: long enough for the slow agent, so nothing times out.
const DEADLINE: (&str, &str) = ("x-mesh-deadline-ms", "30000");

#[tokio::test(flavor = "multi_thread")]
async fn hedge_goes_to_another_agent_and_the_loser_is_cancelled() {
    let mut mesh = Mesh::new().unwrap();
    let hedged = "[defaults]\npolicy = \"round_robin\"\n\
        [defaults.hedging]\nenabled = true\nmax_hedges = 1\ndelay_ms = 50\n";
    let caller = mesh
        .start_node(NodeOpts {
            extra_toml: hedged.into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await
        .unwrap();
    let slow = mesh
        .start_node(NodeOpts {
            latency_ms_p50: SLOW_MS,
            ..NodeOpts::caps(&["svc"])
        })
        .await
        .unwrap();
    let fast = mesh.start_node(NodeOpts::caps(&["svc"])).await.unwrap();
    mesh.wait_offers(&caller, "svc", 2).await.unwrap();

    let mut hedged_calls = 0;
    for _ in 0..4 {
        let (status, by, h, v) = mesh.call_json(&caller, "svc", &[DEADLINE]).await.unwrap();
        assert_eq!(status, 200, "{v}");
        // Round robin starts every other call on the slow agent; the hedge must win those.
        assert!(by.contains(&fast.id), "served by {by}, not the fast agent");
        if h.get("x-mesh-hedges").is_some() {
            assert_eq!(h["x-mesh-hedges"], "1");
            assert_eq!(h["x-mesh-attempts"], "2");
            hedged_calls += 1;
            // The slow attempt was dropped by the caller: its node must cancel the agent
            // request long before the agent would have answered.
            wait_until(
                "the slow node to cancel the losing attempt",
                Duration::from_millis(SLOW_MS as u64 / 2),
                || async { Ok((mesh.agent_in_flight(&slow).await? == 0).then_some(())) },
            )
            .await
            .unwrap();
        }
    }
    assert!(
        hedged_calls >= 1,
        "no call started on the slow agent was hedged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_limit_keeps_a_burst_off_a_slow_agent() {
    let mut mesh = Mesh::new().unwrap();
    let limited = "[defaults]\npolicy = \"round_robin\"\n[defaults.retry]\nmax_attempts = 1\n\
        [defaults.adaptive]\nenabled = true\ninitial_limit = 2\nmin_limit = 1\nmax_limit = 4\n";
    let caller = mesh
        .start_node(NodeOpts {
            extra_toml: limited.into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await
        .unwrap();
    let slow = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 1500.0,
            ..NodeOpts::caps(&["svc"])
        })
        .await
        .unwrap();
    let fast = mesh.start_node(NodeOpts::caps(&["svc"])).await.unwrap();
    mesh.wait_offers(&caller, "svc", 2).await.unwrap();

    let burst = (0..12).map(|_| {
        let (m, c) = (&mesh, caller.clone());
        async move { m.call_json(&c, "svc", &[DEADLINE]).await.unwrap() }
    });
    let results = futures::future::join_all(burst).await;
    let on_slow = results.iter().filter(|r| r.1.contains(&slow.id)).count();
    let on_fast = results.iter().filter(|r| r.1.contains(&fast.id)).count();
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    // Round robin alone would send 6 of 12 to the slow agent; its limit of 2 caps it. What no
    // agent has room for is refused at once as a typed overload (retryable), not queued.
    assert!(
        on_slow <= 2,
        "slow agent got {on_slow} of a 12-call burst: {statuses:?}"
    );
    assert!(on_fast >= 1, "{statuses:?}");
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_eq!(r.0, 503, "{statuses:?}");
        assert_eq!(r.3["code"], "overloaded", "{}", r.3);
        assert!(
            r.3["message"]
                .as_str()
                .unwrap()
                .contains("adaptive concurrency limit"),
            "{}",
            r.3
        );
    }

    let (_, routes) = mesh.get(&caller, "/v1/routes/svc").await.unwrap();
    let rows = routes["candidates"].as_array().unwrap();
    assert!(
        rows.iter().all(|r| r["adaptive_limit"].is_string()),
        "routes must show each agent's adaptive limit: {routes}"
    );
}
