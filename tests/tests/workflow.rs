//! Workflows end to end on real processes: the example support pipeline completes while one
//! specialist is slow and another fails half its calls; fork-join, loop, `on_error` and
//! the failure record; and the per-step overhead against a plain call (printed).

use agentmesh_tests::{Mesh, Node, NodeOpts};
use std::time::Instant;

fn agent(caps: &[&str], answers: &[(&str, &str)]) -> NodeOpts {
    NodeOpts {
        agent_args: answers
            .iter()
            .flat_map(|(c, j)| ["--answer".to_string(), format!("{c}={j}")])
            .collect(),
        ..NodeOpts::caps(caps)
    }
}

async fn post(
    mesh: &Mesh,
    node: &Node,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    mesh.post_json(node, path, body).await.unwrap()
}

fn example() -> String {
    let p = agentmesh_tests::manifest_dir().join("../examples/workflows/support-pipeline.toml");
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn support_pipeline_completes_with_a_slow_and_a_flaky_specialist() {
    let mut mesh = Mesh::new().unwrap();
    let dir = mesh.path().join("workflows");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("support.toml"), example()).unwrap();
    let caller = mesh
        .start_node(NodeOpts {
            extra_toml: format!("[workflows]\npaths = [\"{}\"]\n", dir.display()),
            ..agent(
                &["ticket.classify"],
                &[("ticket.classify", r#"{"category":"billing"}"#)],
            )
        })
        .await
        .unwrap();
    let slow = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 400.0,
            ..agent(
                &["support.specialist"],
                &[("*", r#"{"resolution":"refund","by":"slow"}"#)],
            )
        })
        .await
        .unwrap();
    let flaky = mesh
        .start_node(NodeOpts {
            error_rate: 0.5,
            agent_args: vec![
                "--error-status".into(),
                "503".into(),
                "--answer".into(),
                r#"*={"resolution":"refund","by":"flaky"}"#.into(),
            ],
            ..NodeOpts::caps(&["support.specialist"])
        })
        .await
        .unwrap();
    mesh.start_node(agent(
        &[
            "ticket.approve",
            "ticket.execute",
            "audit.record",
            "support.generalist",
        ],
        &[
            ("ticket.approve", r#"{"approved":true}"#),
            ("ticket.execute", r#"{"executed":true}"#),
            ("audit.record", r#"{"recorded":true}"#),
            (
                "support.generalist",
                r#"{"resolution":"escalate","by":"generalist"}"#,
            ),
        ],
    ))
    .await
    .unwrap();
    mesh.wait_offers(&caller, "support.specialist", 2)
        .await
        .unwrap();
    mesh.wait_offers(&caller, "audit.record", 1).await.unwrap();

    let (_, list) = mesh.get(&caller, "/v1/workflows").await.unwrap();
    assert_eq!(list["workflows"][0]["name"], "support-pipeline", "{list}");

    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..8 {
        let (status, r) = post(
            &mesh,
            &caller,
            "/v1/workflows/support-pipeline/run",
            serde_json::json!({"input": {"text": format!("refund order {i}")}}),
        )
        .await;
        assert_eq!(status, 200, "{r:#}");
        assert_eq!(r["status"], "completed", "{r:#}");
        assert_eq!(r["output"]["category"], "billing");
        assert_eq!(r["output"]["resolution"]["resolution"], "refund", "{r:#}");
        assert_eq!(r["output"]["approved"], true);
        assert_eq!(r["output"]["executed"]["executed"], true);
        let steps = r["steps"].as_array().unwrap();
        let spec = steps.iter().find(|s| s["step"] == "specialist").unwrap();
        assert_eq!(spec["outcome"], "ok", "{spec}");
        let by = spec["served_by"].as_str().unwrap();
        assert!(
            by.starts_with(&slow.id) || by.starts_with(&flaky.id),
            "{by}"
        );
        *served
            .entry(by.split('/').next_back().unwrap().to_string())
            .or_default() += 1;
        for s in steps {
            assert!(s["latency_ms"].as_f64().is_some(), "{s}");
            if s["kind"] == "call" {
                assert!(s["served_by"].is_string() || s["outcome"] != "ok", "{s}");
            }
        }
    }
    eprintln!("specialist served by: {served:?}");

    // Ad hoc: fork-join over both specialists, a loop whose condition never holds but may
    // continue, and then a failing step that names itself.
    let adhoc = r#"
name = "adhoc"
deadline_ms = 15000
[[steps]]
id = "both"
fork_join = { call = "support.specialist", agents = 2, join = "any" }
[[steps]]
id = "fanout"
fork_join = { call = "ticket.approve", inputs = "input.items", join = "all" }
[[steps]]
id = "never"
loop = { call = "ticket.approve", until = "output.approved == `false`", max_iterations = 2 }
on_error = "continue"
[[steps]]
id = "broken"
call = "no.such.capability"
"#;
    let (status, r) = post(
        &mesh,
        &caller,
        "/v1/workflows/run",
        serde_json::json!({"workflow": adhoc, "input": {"items": [1, 2, 3]}}),
    )
    .await;
    assert_eq!(status, 404, "{r:#}");
    assert_eq!(r["status"], "failed");
    assert_eq!(r["failed_step"], "broken", "{r:#}");
    assert_eq!(r["code"], "no_capability");
    let steps = r["steps"].as_array().unwrap();
    let outcome = |id: &str| {
        steps
            .iter()
            .find(|s| s["step"] == id)
            .map(|s| s["outcome"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(outcome("both"), "ok");
    assert_eq!(outcome("fanout"), "ok");
    assert_eq!(
        steps
            .iter()
            .filter(|s| s["step"].as_str().unwrap().starts_with("fanout["))
            .count(),
        3
    );
    assert_eq!(outcome("never"), "continued");
    assert_eq!(outcome("never[1]"), "ok", "the loop re-invoked");

    // An invalid ad-hoc workflow is refused, naming the step and field.
    let (status, r) = post(
        &mesh,
        &caller,
        "/v1/workflows/run",
        serde_json::json!({"workflow": "name = \"x\"\n[[steps]]\nid = \"s1\"\ncall = \"a\"\ninput = \"a[\"\n"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(r["field"], "input", "{r}");
    assert!(r["message"].as_str().unwrap().contains("step s1"), "{r}");

    // Overhead of a one-step workflow against a plain call of the same capability.
    let one = "name = \"one\"\n[[steps]]\nid = \"c\"\ncall = \"audit.record\"\n";
    let rounds = 40;
    let mut plain = Vec::new();
    let mut wf = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let r = mesh.call(&caller, "audit.record", "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        plain.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let (s, _) = post(
            &mesh,
            &caller,
            "/v1/workflows/run",
            serde_json::json!({"workflow": one}),
        )
        .await;
        assert_eq!(s, 200);
        wf.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    plain.sort_by(|a, b| a.partial_cmp(b).unwrap());
    wf.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "per-step overhead: plain call p50 {:.2} ms, one-step workflow p50 {:.2} ms ({rounds} rounds each, interleaved)",
        plain[rounds / 2],
        wf[rounds / 2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workflow_cli_runs_a_file_and_checks_one() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh
        .start_node(agent(&["echo.fixed"], &[("echo.fixed", r#"{"ok":true}"#)]))
        .await
        .unwrap();
    mesh.wait_offers(&a, "echo.fixed", 1).await.unwrap();
    let file = mesh.path().join("w.toml");
    std::fs::write(
        &file,
        "name = \"w\"\noutput = \"steps.c.ok\"\n[[steps]]\nid = \"c\"\ncall = \"echo.fixed\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = agentmesh_tests::run_cli(&["workflow", "run", f, "--input", "{}", "--api", &a.api])
        .unwrap();
    assert_eq!(out.trim(), "true");
    let bad = mesh.path().join("bad.toml");
    std::fs::write(&bad, "name = \"w\"\n[[steps]]\nid = \"z\"\nloop = { call = \"x\", until = \"ok\", max_iterations = 0 }\n").unwrap();
    let e = agentmesh_tests::run_cli(&["workflow", "check", bad.to_str().unwrap()]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("step z") && msg.contains("loop.max_iterations"),
        "{msg}"
    );
}

/// Latency of each branch (from the step records) and the run's wall time, in ms.
async fn parallel_run(mesh: &Mesh, node: &Node, wf: &str) -> (Vec<f64>, f64, f64) {
    let t = Instant::now();
    let (status, r) = post(
        mesh,
        node,
        "/v1/workflows/run",
        serde_json::json!({"workflow": wf}),
    )
    .await;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(status, 200, "{r:#}");
    assert_eq!(r["status"], "completed", "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    let ms = |id: &str| {
        steps
            .iter()
            .find(|s| s["step"] == id)
            .and_then(|s| s["latency_ms"].as_f64())
            .unwrap_or_else(|| panic!("no record of step {id}: {r:#}"))
    };
    let branches = ["b1", "b2", "b3"].map(ms).to_vec();
    (branches, ms("all"), wall)
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_steps_run_concurrently() {
    // Three branches on three agents, each sleeping about 500 ms (log-normal, p99 750 ms).
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts::caps(&["caller.only"]))
        .await
        .unwrap();
    for cap in ["par.a", "par.b", "par.c"] {
        mesh.start_node(NodeOpts {
            latency_ms_p50: 500.0,
            ..agent(&[cap], &[(cap, r#"{"ok":true}"#)])
        })
        .await
        .unwrap();
        mesh.wait_offers(&caller, cap, 1).await.unwrap();
    }
    let wf = r#"
name = "par"
deadline_ms = 15000
output = "[steps.b1.ok, steps.b2.ok, steps.b3.ok]"
[[steps]]
id = "all"
parallel = [ { id = "b1", call = "par.a" }, { id = "b2", call = "par.b" }, { id = "b3", call = "par.c" } ]
"#;
    for round in 0..3 {
        let (branches, step, wall) = parallel_run(&mesh, &caller, wf).await;
        let sum: f64 = branches.iter().sum();
        let slowest = branches.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "parallel round {round}: branches {branches:?} ms (sum {sum:.0}, slowest {slowest:.0}), \
             parallel step {step:.0} ms, run wall {wall:.0} ms"
        );
        // Sequential branches would take the sum; concurrent ones the slowest plus overhead.
        // The reference is measured in the same run, so a slow machine slows both sides.
        assert!(
            step < 0.75 * sum,
            "parallel step took {step:.0} ms, sum of branches {sum:.0} ms"
        );
        assert!(
            step >= slowest,
            "step {step:.0} < slowest branch {slowest:.0}"
        );
        assert!(wall < 0.75 * sum, "run wall {wall:.0} ms, sum {sum:.0} ms");
    }
}
