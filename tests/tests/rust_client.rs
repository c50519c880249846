//! The Rust client (`clients/rust`, `agentmesh-client`) on real node processes: its example
//! relay agent (`examples/relay_agent.rs`, served in-process here with the library's
//! `MeshLayer`) registers with node B and relays calls through the mesh; a call from node A
//! through it gets the answer of a demo agent on A with the chain, deadline and trace context
//! carried; errors arrive typed; and a loop through the relay is refused with
//! `loop_detected`. The same relay served without the layer is the control: its loop is not
//! recognised and recurses until the agent's concurrency limit stops it. Last, the example's
//! compiled binary runs as its own process beside a third node (SKIPPED when not built).

#[allow(dead_code)]
#[path = "../../clients/rust/examples/relay_agent.rs"]
mod relay_agent;

use agentmesh_client::{
    CallOptions, Client, ErrorCode, Inbound, MeshLayer, QuorumOptions, StreamEvent,
};
use agentmesh_tests::{wait_until, Mesh, NodeOpts, CONVERGE_TIMEOUT};
use relay_agent::{router, Relay};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The relay agent's concurrency limit: the most the control loop (no layer) can recurse.
const RELAY_MAX_CONCURRENCY: u32 = 6;
/// No retries for the control loop, on both nodes: each failure is one attempt, so the
/// recursion's size is bounded by the concurrency limit alone.
const NO_RETRY_FOR_BARE_LOOP: &str = "[capability.\"bare.loop\".retry]\nmax_retries = 0\n";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread")]
async fn rust_client_relays_through_the_mesh_and_its_layer_refuses_loops() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh
        .start_node(NodeOpts {
            extra_toml: NO_RETRY_FOR_BARE_LOOP.into(),
            ..NodeOpts::caps(&["echo"])
        })
        .await
        .unwrap();
    // B's demo agent is replaced by the relay's registration below.
    let b = mesh
        .start_node(NodeOpts {
            extra_toml: NO_RETRY_FOR_BARE_LOOP.into(),
            ..NodeOpts::caps(&["placeholder.b"])
        })
        .await
        .unwrap();

    // The example's relay, served in-process: relay.echo → echo (on A), relay.loop → itself,
    // both inside MeshLayer; bare.loop → itself, without the layer.
    let to_b = Client::new(&b.api).unwrap();
    let relay = Relay::new(
        to_b.clone(),
        "relay-b",
        &[("relay.echo", "echo"), ("relay.loop", "relay.loop")],
    );
    let bare = Relay::new(to_b.clone(), "relay-b", &[("bare.loop", "bare.loop")]);
    let app = router(relay.clone())
        .layer(MeshLayer::new())
        .merge(router(bare.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut reg = relay.registration(&handler);
    reg.capabilities
        .extend(bare.registration(&handler).capabilities);
    reg.max_concurrency = Some(RELAY_MAX_CONCURRENCY);
    let registered = to_b.register(&reg).await.unwrap();
    assert_eq!(registered.node_id, b.id);
    assert_eq!(
        registered.capabilities,
        ["relay.echo", "relay.loop", "bare.loop"]
    );

    let from_a = Client::new(&a.api).unwrap();
    for cap in ["relay.echo", "relay.loop", "bare.loop"] {
        mesh.wait_offers(&a, cap, 1).await.unwrap();
    }
    mesh.wait_offers(&b, "echo", 1).await.unwrap();
    wait_until("A to list B as a member", CONVERGE_TIMEOUT, || async {
        let members = from_a.members().await?;
        Ok((members.len() >= 2).then_some(()))
    })
    .await
    .unwrap();
    assert!(from_a.ready().await);
    let caps = from_a.capabilities().await.unwrap();
    assert!(caps["capabilities"]["relay.echo"].is_array(), "{caps}");

    // 1. A → relay on B → echo on A: the answer, and the headers the relay carried on.
    let mut inbound_headers = reqwest::header::HeaderMap::new();
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    inbound_headers.insert("traceparent", traceparent.parse().unwrap());
    let opts = CallOptions::new().deadline(Duration::from_secs(5));
    let r = Inbound::from_headers(&inbound_headers)
        .scope(from_a.call_with("relay.echo", &json!({"sku": "A-1"}), &opts))
        .await
        .unwrap();
    let v: serde_json::Value = r.json().unwrap();
    eprintln!("relay.echo answered {v}");
    assert!(r.served_by.starts_with(&b.id), "{}", r.served_by);
    assert_eq!(v["relayed_by"], "relay-b", "{v}");
    let echo = &v["answer"];
    assert_eq!(echo["agent"], a.agent.as_str(), "{v}");
    assert_eq!(echo["capability"], "echo", "{v}");
    assert_eq!(echo["input"], json!({"sku": "A-1"}), "{v}");
    let seen = &echo["received_headers"];
    assert!(seen["x-mesh-chain"].is_string(), "chain carried: {v}");
    let deadline: u64 = seen["x-mesh-deadline-ms"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(deadline < 5000, "deadline shrank on the way: {v}");
    let tp = seen["traceparent"].as_str().unwrap_or_default();
    assert_eq!(tp.get(3..35), Some(TRACE_ID), "same trace: {v}");
    // The same echo, streamed: a demo agent does not stream, so one `done` with the answer.
    let mut stream = from_a
        .stream("echo", &json!({"n": 1}), &CallOptions::default())
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(StreamEvent::Done(Some(answer)))) => assert_eq!(answer["input"]["n"], 1),
        other => panic!("expected one done event, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
    // A quorum of one voter decides.
    let q = from_a
        .quorum(
            "echo",
            &json!({"q": 1}),
            &QuorumOptions {
                n: 1,
                key: Some("input".into()),
                ..QuorumOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(q["status"], "decided", "{q}");

    // 2. Typed errors, client side and node side.
    let e = from_a
        .call("no.such.capability", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        (&e.code, e.status),
        (&ErrorCode::NoCapability, Some(404)),
        "{e}"
    );
    let bad = CallOptions::new().min_proficiency("guru");
    let e = from_a
        .call_with("echo", &json!({}), &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
    assert_eq!(e.field.as_deref(), Some("min_proficiency"), "{e}");
    let e = from_a
        .run_workflow("no-such-workflow", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    let e = Client::new("http://127.0.0.1:1")
        .unwrap()
        .call("echo", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unreachable, "{e}");

    // 3. A loop through the relay: A → relay (B) → relay (B) is refused, typed, at once.
    let opts = CallOptions::new().deadline(Duration::from_secs(10));
    let served_before = relay.served.load(Ordering::Relaxed);
    let started = Instant::now();
    let e = from_a
        .call_with("relay.loop", &json!({}), &opts)
        .await
        .unwrap_err();
    let took = started.elapsed();
    eprintln!("A→relay→relay refused in {took:?}: {e} (path {:?})", e.path);
    assert_eq!(e.code, ErrorCode::LoopDetected, "{e}");
    assert_eq!(e.status, Some(508), "{e}");
    assert!(e.message.starts_with("call loop: node"), "{e}");
    assert!(e.message.contains("relay.loop"), "{e}");
    assert!(!e.path.is_empty(), "{e}");
    // Two relay invocations: from A, then from B itself, whose onward call B refused because
    // the chain already held (B, relay.loop).
    let loop_depth = relay.served.load(Ordering::Relaxed) - served_before;
    assert_eq!(loop_depth, 2, "relay handler invocations in the loop");
    assert!(took < Duration::from_secs(3), "{took:?}");

    // 4. The control: the same relay without the layer sends no chain, so the mesh cannot see
    // the loop; it recurses until the node refuses a call for the relay's concurrency limit,
    // and the caller gets that failure (agent_error), not loop_detected.
    let started = Instant::now();
    let e = from_a
        .call_with("bare.loop", &json!({}), &opts)
        .await
        .unwrap_err();
    let depth = bare.served.load(Ordering::Relaxed);
    eprintln!(
        "without the layer: {e} after {depth} relay invocations in {:?}",
        started.elapsed()
    );
    assert_ne!(e.code, ErrorCode::LoopDetected, "{e}");
    assert!(
        depth > loop_depth && depth <= u64::from(RELAY_MAX_CONCURRENCY),
        "recursed {depth} deep: expected past the {loop_depth} invocations the layer allows, \
         up to the relay's limit of {RELAY_MAX_CONCURRENCY} calls in flight"
    );

    // 5. The example as its own process, on a third node: A → relay_agent (C) → relay (B) →
    // echo (A), and a loop through the process refused. Its binary comes from `cargo build
    // -p agentmesh-client --examples` (or any `cargo test` that builds the client's examples).
    let Some(bin) = example_bin() else {
        agentmesh_tests::report_skip(
            "rust_client: the relay_agent example as a process",
            "examples/relay_agent not built; run cargo build -p agentmesh-client --examples",
        );
        server.abort();
        return;
    };
    let c = mesh
        .start_node(NodeOpts::caps(&["placeholder.c"]))
        .await
        .unwrap();
    let log = std::fs::File::create(mesh.path().join("relay-c.log")).unwrap();
    let child = std::process::Command::new(&bin)
        .args([
            "--api",
            &c.api,
            "--name",
            "relay-c",
            "--max-concurrency",
            "8",
        ])
        .args([
            "--route",
            "relay.c=relay.echo",
            "--route",
            "relay.c.loop=relay.c.loop",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    mesh.procs.push("relay-c", child);
    mesh.wait_offers(&a, "relay.c", 1).await.unwrap();
    mesh.wait_offers(&a, "relay.c.loop", 1).await.unwrap();
    mesh.wait_offers(&c, "relay.echo", 1).await.unwrap();
    let v = from_a.call("relay.c", &json!({"x": 1})).await.unwrap();
    assert_eq!(v["relayed_by"], "relay-c", "{v}");
    assert_eq!(v["answer"]["relayed_by"], "relay-b", "{v}");
    assert_eq!(v["answer"]["answer"]["input"], json!({"x": 1}), "{v}");
    let e = from_a
        .call_with("relay.c.loop", &json!({}), &opts)
        .await
        .unwrap_err();
    eprintln!("through the relay_agent process: {e}");
    assert_eq!(e.code, ErrorCode::LoopDetected, "{e}");
    server.abort();
}

/// The `relay_agent` example's binary beside this test's (`target/<profile>/examples/`), or
/// `$AGENTMESH_RELAY_EXAMPLE`; None if it was not built.
fn example_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("AGENTMESH_RELAY_EXAMPLE") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join("relay_agent");
    bin.is_file().then_some(bin)
}
