//! Config reload without dropping calls in flight (API and SIGHUP; a bad file is refused and
//! the old settings stay), and cancellation when the caller goes away.

use agentmesh_tests::{wait_until, Mesh, NodeOpts};
use std::time::Duration;

async fn default_policy(mesh: &Mesh, node: &agentmesh_tests::Node) -> String {
    let (_, v) = mesh.get(node, "/v1/config").await.unwrap();
    v["defaults"]["policy"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `POST /v1/config/reload`: the status and the JSON answer.
async fn reload_config(mesh: &Mesh, node: &agentmesh_tests::Node) -> (u16, serde_json::Value) {
    mesh.post_json(node, "/v1/config/reload", serde_json::json!({}))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_a_new_file_keeps_calls_and_refuses_a_bad_one() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    mesh.start_node(NodeOpts {
        latency_ms_p50: 1500.0,
        ..NodeOpts::caps(&["slow"])
    })
    .await
    .unwrap();
    mesh.wait_offers(&caller, "slow", 1).await.unwrap();
    assert_eq!(default_policy(&mesh, &caller).await, "latency");
    let file = caller.dir.join("node.toml");
    let original = std::fs::read_to_string(&file).unwrap();

    // A call is in flight while the file changes and is reloaded through the API.
    let in_flight = {
        let (m, c) = (&mesh, caller.clone());
        async move {
            m.call_json(&c, "slow", &[("x-mesh-deadline-ms", "20000")])
                .await
                .unwrap()
        }
    };
    let reload = async {
        std::fs::write(
            &file,
            format!("{original}\n[defaults]\npolicy = \"cost\"\n"),
        )
        .unwrap();
        let (status, v) = reload_config(&mesh, &caller).await;
        assert_eq!(status, 200, "{v}");
    };
    let ((status, _, _, v), ()) = tokio::join!(in_flight, reload);
    assert_eq!(status, 200, "the call in flight survived the reload: {v}");
    assert_eq!(default_policy(&mesh, &caller).await, "cost");

    // A bad file is refused, naming the key, and the settings in force stay.
    std::fs::write(
        &file,
        format!("{original}\n[defaults]\npolicy = \"fastest\"\n"),
    )
    .unwrap();
    let (status, v) = reload_config(&mesh, &caller).await;
    assert_eq!(status, 400);
    assert!(v.to_string().contains("defaults.policy"), "{v}");
    assert_eq!(default_policy(&mesh, &caller).await, "cost");

    // SIGHUP applies a valid file the same way.
    std::fs::write(
        &file,
        format!("{original}\n[defaults]\npolicy = \"latency\"\n"),
    )
    .unwrap();
    let pid = mesh.procs.pid(caller.proc_index);
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    wait_until(
        "SIGHUP to apply the new policy",
        Duration::from_secs(10),
        || async { Ok((default_policy(&mesh, &caller).await == "latency").then_some(())) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn caller_going_away_cancels_the_call_down_the_chain() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    let slow = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 10_000.0,
            ..NodeOpts::caps(&["slow"])
        })
        .await
        .unwrap();
    mesh.wait_offers(&caller, "slow", 1).await.unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let call = client
        .post(format!("{}/v1/call/slow", caller.api))
        .header("x-mesh-deadline-ms", "30000")
        .body("{}")
        .send();
    let started = async {
        wait_until(
            "the slow agent to get the call",
            Duration::from_secs(5),
            || async { Ok((mesh.agent_in_flight(&slow).await? == 1).then_some(())) },
        )
        .await
    };
    let (gave_up, seen) = tokio::join!(call, started);
    seen.unwrap();
    assert!(gave_up.unwrap_err().is_timeout(), "the client gave up");
    // The agent would answer after ~10 s; the cancellation must reach it well before.
    wait_until(
        "the slow node to cancel the abandoned call",
        Duration::from_secs(4),
        || async { Ok((mesh.agent_in_flight(&slow).await? == 0).then_some(())) },
    )
    .await
    .unwrap();
}
