//! End-to-end tests on real processes: `agentmesh node` and `agentmesh demo-agent` on loopback,
//! talking QUIC to each other and HTTP to the test. No mocks; every wait is bounded.

use agentmesh_tests::{served_by, wait_until, CertKind, Mesh, Node, NodeOpts};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Bound on joining and discovering a small mesh.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on noticing a killed node (SWIM suspicion and death on the LAN profile).
const FAILURE_DETECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a graceful leave being seen everywhere: well under the failure-detection bound.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on seeing an admission rejection.
const REJECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until every node lists every node in `expect` as alive.
async fn wait_all_alive(mesh: &Mesh, observers: &[Node], expect: &[Node]) {
    let want: BTreeSet<String> = expect.iter().map(|n| n.id.clone()).collect();
    for o in observers {
        let what = format!("{} to see {} members alive", o.agent, want.len());
        wait_until(&what, CONVERGE_TIMEOUT, || async {
            let alive: BTreeSet<String> = mesh
                .members(o)
                .await?
                .into_iter()
                .filter(|(_, s)| s == "alive")
                .map(|(id, _)| id)
                .collect();
            Ok(want.is_subset(&alive).then_some(()))
        })
        .await
        .unwrap();
    }
}

/// Starts `n` nodes; node i (1-based) offers `only.n{i}` and `shared.echo`.
async fn start_mesh(n: usize) -> Mesh {
    let mut mesh = Mesh::new().unwrap();
    for i in 1..=n {
        let only = format!("only.n{i}");
        mesh.start_node(NodeOpts::caps(&[&only, "shared.echo"]))
            .await
            .unwrap();
    }
    mesh
}

#[tokio::test(flavor = "multi_thread")]
async fn five_nodes_join_through_one_seed_and_discover_capabilities() {
    let mesh = start_mesh(5).await;
    let nodes = mesh.nodes.clone();
    let started = Instant::now();
    for o in &nodes {
        wait_until(
            &format!("{} to list every capability", o.agent),
            CONVERGE_TIMEOUT,
            || async {
                let (status, v) = mesh.get(o, "/v1/capabilities").await?;
                anyhow::ensure!(status == 200, "status {status}");
                let caps = v["capabilities"].as_object().cloned().unwrap_or_default();
                let all = (1..=5).all(|i| caps.contains_key(&format!("only.n{i}")));
                let shared = caps
                    .get("shared.echo")
                    .and_then(|p| p.as_array())
                    .map_or(0, |p| p.len());
                Ok((all && shared == 5).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    wait_all_alive(&mesh, &nodes, &nodes).await;
    eprintln!("5 nodes converged in {:?}", started.elapsed());
    for n in &nodes {
        let (status, v) = mesh.get(n, "/readyz").await.unwrap();
        assert_eq!(status, 200, "{} not ready: {v}", n.agent);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn call_for_a_capability_only_node_4_offers_is_served_by_node_4() {
    let mesh = start_mesh(4).await;
    let (n1, n4) = (mesh.nodes[0].clone(), mesh.nodes[3].clone());
    wait_all_alive(&mesh, std::slice::from_ref(&n1), &mesh.nodes).await;
    let resp = wait_until("only.n4 routable from node 1", CONVERGE_TIMEOUT, || async {
        let r = mesh
            .call(
                &n1,
                "only.n4",
                r#"{"q":1}"#,
                &[
                    ("x-mesh-deadline-ms", "5000"),
                    (
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                ],
            )
            .await?;
        Ok((r.status() == 200).then_some(r))
    })
    .await
    .unwrap();
    let by = served_by(&resp);
    assert!(
        by.starts_with(&n4.id),
        "served by {by}, expected node 4 {}",
        n4.id
    );
    assert!(by.ends_with("agent-4"), "{by}");
    assert_eq!(resp.headers()["x-mesh-attempts"], "1");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["agent"], "agent-4");
    assert_eq!(v["capability"], "only.n4");
    assert_eq!(v["input"]["q"], 1);
    let h = &v["received_headers"];
    assert_eq!(
        h["x-mesh-caller-node"],
        n1.id.as_str(),
        "callee sees the caller: {h}"
    );
    let deadline: u64 = h["x-mesh-deadline-ms"].as_str().unwrap().parse().unwrap();
    assert!(
        deadline > 0 && deadline <= 5000,
        "remaining deadline passed on: {deadline}"
    );
    assert!(
        h["traceparent"]
            .as_str()
            .unwrap()
            .contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "trace id carried through: {h}"
    );
    // The shared capability is served by any of them, and each answer names who served it.
    for _ in 0..8 {
        let r = mesh.call(&n1, "shared.echo", "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        let by = served_by(&r);
        assert!(mesh.nodes.iter().any(|n| by.starts_with(&n.id)), "{by}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_node_is_marked_dead_and_no_longer_routed_to() {
    let mut mesh = start_mesh(3).await;
    let nodes = mesh.nodes.clone();
    let (n1, n2, n3) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    wait_all_alive(&mesh, &nodes, &nodes).await;
    mesh.procs.kill9(n3.proc_index).unwrap();
    let killed = Instant::now();
    for o in [&n1, &n2] {
        wait_until(
            &format!("{} to mark node 3 dead", o.agent),
            FAILURE_DETECT_TIMEOUT,
            || async {
                Ok((mesh.state_of(o, &n3).await?.as_deref() == Some("dead")).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    eprintln!(
        "kill -9 detected as dead everywhere in {:?}",
        killed.elapsed()
    );
    for _ in 0..10 {
        let r = mesh.call(&n1, "shared.echo", "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        let by = served_by(&r);
        assert!(!by.starts_with(&n3.id), "routed to the dead node: {by}");
    }
    let r = mesh.call(&n1, "only.n3", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "no_capability", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_leaves_gracefully_and_quickly() {
    let mut mesh = start_mesh(3).await;
    let nodes = mesh.nodes.clone();
    let (n1, n2, n3) = (nodes[0].clone(), nodes[1].clone(), nodes[2].clone());
    wait_all_alive(&mesh, &nodes, &nodes).await;
    mesh.procs.term(n3.proc_index).unwrap();
    let termed = Instant::now();
    for o in [&n1, &n2] {
        wait_until(
            &format!("{} to see node 3 left", o.agent),
            LEAVE_TIMEOUT,
            || async {
                Ok((mesh.state_of(o, &n3).await?.as_deref() == Some("left")).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    eprintln!("graceful leave seen everywhere in {:?}", termed.elapsed());
    let status = wait_until("node 3 to exit", LEAVE_TIMEOUT, || {
        let st = mesh.procs.try_exit(n3.proc_index);
        async move { st }
    })
    .await
    .unwrap();
    assert!(status.success(), "node 3 exit status {status}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n3.dir.join("state/node.json")).unwrap())
            .unwrap();
    assert_eq!(state["status"], "stopped");
    assert!(
        !n3.dir.join("state/agentmesh.pid").exists(),
        "pid file removed"
    );
    let r = mesh.call(&n1, "only.n3", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 404, "a left node's capability is gone");
}

/// Starts a good seed and one node with a bad certificate; returns the text that must name the
/// rejection (the bad node's readiness answer and both logs) once it contains `needle`.
async fn rejected(kind: CertKind, needle: &str) {
    let mut mesh = Mesh::new().unwrap();
    let seed = mesh
        .start_node(NodeOpts::caps(&["seed.cap"]))
        .await
        .unwrap();
    let mut opts = NodeOpts::caps(&["intruder.cap"]);
    opts.cert = kind;
    let bad = mesh.start_node(opts).await.unwrap();
    let text = wait_until(
        &format!("a {kind:?} rejection naming {needle:?}"),
        REJECT_TIMEOUT,
        || async {
            let (status, ready) = mesh.get(&bad, "/readyz").await?;
            let text = format!("{status} {ready}\n{}\n{}", seed.log(), bad.log());
            Ok((status == 503 && text.to_lowercase().contains(needle)).then_some(text))
        },
    )
    .await
    .unwrap();
    let (_, ready) = mesh.get(&bad, "/readyz").await.unwrap();
    assert_eq!(ready["code"], "not_ready");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains(needle),
        "the refused node says why: {ready}\n{text}"
    );
    let seen_by_seed = mesh.members(&seed).await.unwrap();
    assert!(
        !seen_by_seed.iter().any(|(id, _)| id == &bad.id),
        "the seed lists the refused node: {seen_by_seed:?}"
    );
    let (_, caps) = mesh.get(&seed, "/v1/capabilities").await.unwrap();
    assert!(caps["capabilities"].get("intruder.cap").is_none(), "{caps}");
    let r = mesh.call(&seed, "intruder.cap", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn node_with_expired_certificate_cannot_join() {
    rejected(CertKind::Expired, "expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_with_certificate_from_another_root_cannot_join() {
    rejected(CertKind::OtherRoot, "root").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_its_4xx_and_code() {
    let mut mesh = Mesh::new().unwrap();
    let n = mesh.start_node(NodeOpts::caps(&["echo.ok"])).await.unwrap();
    let mut failing = NodeOpts::caps(&["echo.fail"]);
    failing.error_rate = 1.0;
    mesh.start_node(failing).await.unwrap();
    let mut slow = NodeOpts::caps(&["echo.slow"]);
    slow.latency_ms_p50 = 2000.0;
    mesh.start_node(slow).await.unwrap();
    wait_all_alive(&mesh, std::slice::from_ref(&n), &mesh.nodes).await;
    wait_until(
        "echo.slow and echo.fail known",
        CONVERGE_TIMEOUT,
        || async {
            let (_, v) = mesh.get(&n, "/v1/capabilities").await?;
            let c = &v["capabilities"];
            Ok((c.get("echo.slow").is_some() && c.get("echo.fail").is_some()).then_some(()))
        },
    )
    .await
    .unwrap();
    let http = &mesh.http;
    let before = mesh.get(&n, "/v1/members").await.unwrap().1;

    let put = |body: String| {
        let url = format!("{}/v1/agent", n.api);
        async move { http.put(url).body(body).send().await.unwrap() }
    };
    let reg_cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "body"),
        (
            r#"{"name":"a","handler":"http://127.0.0.1:1","capabilities":[],"colour":1}"#.into(),
            400,
            "colour",
        ),
        (
            r#"{"name":"","handler":"http://127.0.0.1:1","capabilities":[]}"#.into(),
            400,
            "name",
        ),
        (
            r#"{"name":"a","handler":"ftp://x","capabilities":[]}"#.into(),
            400,
            "handler",
        ),
        (
            r#"{"name":"a","handler":"http://h","capabilities":[{"name":"No Spaces"}]}"#.into(),
            400,
            "capabilities[0].name",
        ),
        (
            format!(
                r#"{{"name":"a","handler":"http://h","capabilities":[],"x":"{}"}}"#,
                "y".repeat(agentmesh_node::api::API_BODY_BYTES_MAX)
            ),
            413,
            "body",
        ),
    ];
    for (body, status, field) in reg_cases {
        let r = put(body).await;
        assert_eq!(r.status().as_u16(), status, "PUT /v1/agent field {field}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "bad_request", "{v}");
        assert_eq!(v["field"], field, "{v}");
    }
    let after = mesh.get(&n, "/v1/members").await.unwrap().1;
    let local = |v: &serde_json::Value| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["local"] == true)
            .map(|m| (m["agent"].clone(), m["capabilities"].clone()))
    };
    assert_eq!(
        local(&before),
        local(&after),
        "bad registrations changed nothing"
    );

    let big = "x".repeat(agentmesh_node::contract::BODY_BYTES_MAX + 1);
    /// Path and query, body, headers, expected status, code and field.
    type CallCase<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let call_cases: Vec<CallCase> = vec![
        (
            "Bad%20Cap",
            "{}".into(),
            vec![],
            400,
            "bad_request",
            Some("capability"),
        ),
        (
            "echo.ok",
            "{}".into(),
            vec![("x-mesh-deadline-ms", "soon")],
            400,
            "bad_request",
            Some("x-mesh-deadline-ms"),
        ),
        (
            "echo.ok?min_proficiency=guru",
            "{}".into(),
            vec![],
            400,
            "bad_request",
            Some("min_proficiency"),
        ),
        (
            "echo.ok?colour=red",
            "{}".into(),
            vec![],
            400,
            "bad_request",
            Some("colour"),
        ),
        ("echo.ok", big, vec![], 413, "bad_request", Some("body")),
        (
            "nobody.offers.this",
            "{}".into(),
            vec![],
            404,
            "no_capability",
            None,
        ),
        (
            "echo.ok?attr.region=mars",
            "{}".into(),
            vec![],
            404,
            "no_eligible_agent",
            None,
        ),
        ("echo.fail", "{}".into(), vec![], 502, "agent_error", None),
        (
            "echo.slow",
            "{}".into(),
            vec![("x-mesh-deadline-ms", "300")],
            504,
            "deadline_exceeded",
            None,
        ),
    ];
    for (path, body, headers, status, code, field) in call_cases {
        let r = mesh.call(&n, path, &body, &headers).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "POST /v1/call/{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], code, "{path}: {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{path}: {v}");
        }
        if code == "agent_error" {
            assert_eq!(v["status"], 500, "the agent's status passes through: {v}");
        }
    }
    let (status, v) = mesh.get(&n, "/v1/routes/Not%20A%20Cap").await.unwrap();
    assert_eq!((status, v["code"].as_str()), (400, Some("bad_request")));
    let (status, v) = mesh.get(&n, "/v1/nope").await.unwrap();
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let (status, v) = mesh.get(&n, "/v1/openapi.json").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["openapi"], "3.1.0");

    // A good registration replaces the agent; the node's record is republished through the
    // gossip driver, so the local view follows within a moment.
    let ok =
        r#"{"name":"renamed","handler":"http://127.0.0.1:9","capabilities":[{"name":"echo.new"}]}"#;
    let r = put(ok.to_string()).await;
    assert_eq!(r.status(), 200);
    wait_until("echo.new listed", Duration::from_secs(5), || async {
        let (_, caps) = mesh.get(&n, "/v1/capabilities").await?;
        let c = &caps["capabilities"];
        Ok((c.get("echo.new").is_some() && c.get("echo.ok").is_none()).then_some(()))
    })
    .await
    .unwrap();
}
