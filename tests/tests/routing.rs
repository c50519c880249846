//! Routing choices among several real agents: attribute and proficiency matching pick the one
//! agent that fits, and `x-mesh-complexity: high` sends work to the expert.

use agentmesh_tests::{served_by, wait_until, Mesh, Node, NodeOpts};
use std::time::Duration;

const CAP: &str = "pick";

/// Re-registers `node`'s agent with `proficiency` and a `region` attribute on [`CAP`].
async fn declare(node: &Node, proficiency: &str, region: &str) {
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .get(format!("{}/v1/agent", node.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut reg = v["registration"].clone();
    assert!(reg.is_object(), "{v}");
    reg["capabilities"] = serde_json::json!([{
        "name": CAP,
        "proficiency": proficiency,
        "attributes": {"region": region},
    }]);
    let r = http
        .put(format!("{}/v1/agent", node.api))
        .json(&reg)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Who served each of `n` calls of `CAP?query` with `headers`.
async fn served(
    mesh: &Mesh,
    caller: &Node,
    query: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = mesh
            .call(caller, &format!("{CAP}{query}"), "{}", headers)
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        out.push(served_by(&r));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn attributes_proficiency_and_complexity_pick_the_right_agent() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    let novice_eu = mesh.start_node(NodeOpts::caps(&[CAP])).await.unwrap();
    let expert_us = mesh.start_node(NodeOpts::caps(&[CAP])).await.unwrap();
    let experienced_eu = mesh.start_node(NodeOpts::caps(&[CAP])).await.unwrap();
    declare(&novice_eu, "novice", "eu").await;
    declare(&expert_us, "expert", "us").await;
    declare(&experienced_eu, "experienced", "eu").await;
    // Wait until the caller sees all three declarations.
    wait_until("declarations gossiped", Duration::from_secs(30), || async {
        let (_, v) = mesh.get(&caller, &format!("/v1/routes/{CAP}")).await?;
        let rows = v["candidates"].as_array().cloned().unwrap_or_default();
        let profs: Vec<String> = rows
            .iter()
            .map(|r| r["proficiency"].as_str().unwrap_or("").to_string())
            .collect();
        let ok = rows.len() == 3
            && ["novice", "experienced", "expert"]
                .iter()
                .all(|p| profs.iter().any(|x| x == p));
        Ok(ok.then_some(()))
    })
    .await
    .unwrap();
    let only = |by: &[String], node: &Node| by.iter().all(|b| b.starts_with(node.id.as_str()));

    // Attribute: only one agent is in the us region.
    let by = served(&mesh, &caller, "?attr.region=us", &[], 8).await;
    assert!(only(&by, &expert_us), "{by:?}");
    // Attribute plus minimum proficiency: eu and at least experienced.
    let by = served(
        &mesh,
        &caller,
        "?attr.region=eu&min_proficiency=experienced",
        &[],
        8,
    )
    .await;
    assert!(only(&by, &experienced_eu), "{by:?}");
    // Complexity high: the expert, whatever the policy.
    for policy in ["round_robin", "latency"] {
        let by = served(
            &mesh,
            &caller,
            "",
            &[("x-mesh-complexity", "high"), ("x-mesh-policy", policy)],
            8,
        )
        .await;
        assert!(only(&by, &expert_us), "{policy}: {by:?}");
    }
    // Without constraints, calls are spread: the check above could fail.
    let by = served(&mesh, &caller, "", &[("x-mesh-policy", "round_robin")], 9).await;
    assert!(!only(&by, &expert_us), "{by:?}");
}
