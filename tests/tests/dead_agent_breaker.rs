//! An agent whose process dies while its node stays up: every call to it fails, so its
//! breaker must open and traffic must move to the others.

use agentmesh_tests::{Mesh, NodeOpts};

#[tokio::test(flavor = "multi_thread")]
async fn dead_agent_behind_a_live_node_gets_its_breaker_opened() {
    let mut mesh = Mesh::new().unwrap();
    let no_retry = "[defaults]\npolicy = \"round_robin\"\n[defaults.retry]\nmax_attempts = 1\n";
    let caller = mesh
        .start_node(NodeOpts {
            extra_toml: no_retry.into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await
        .unwrap();
    let victim = mesh.start_node(NodeOpts::caps(&["svc"])).await.unwrap();
    mesh.start_node(NodeOpts::caps(&["svc"])).await.unwrap();
    mesh.start_node(NodeOpts::caps(&["svc"])).await.unwrap();
    mesh.wait_offers(&caller, "svc", 3).await.unwrap();
    mesh.procs.kill9(victim.agent_proc).unwrap();
    let mut failed = Vec::new();
    for _ in 0..40 {
        let (status, _, _, v) = mesh.call_json(&caller, "svc", &[]).await.unwrap();
        if status != 200 {
            failed.push(v["code"].as_str().unwrap_or_default().to_string());
        }
    }
    let (_, routes) = mesh.get(&caller, "/v1/routes/svc").await.unwrap();
    let row = routes["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"] == victim.id.as_str())
        .cloned()
        .unwrap();
    assert!(
        failed.iter().all(|c| c == "agent_unreachable"),
        "failures: {failed:?}"
    );
    // The default breaker needs 5 calls to judge; after it opens nothing more is sent.
    assert!(
        (5..=7).contains(&failed.len()),
        "failures: {failed:?}; {row}"
    );
    assert_eq!(row["breaker"], "open", "{row}");
}
