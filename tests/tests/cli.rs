//! Cross-process tests that need no mesh: the CLI's key and certificate commands, config
//! validation at `agentmesh node` start, and the demo agent.

use agentmesh_tests::{agentmesh_bin, run_cli, wait_until, Mesh, NodeOpts};
use std::process::Command;
use std::time::Duration;

#[test]
fn keygen_mesh_init_admit_produce_loadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let id = run_cli(&["keygen", "--out", &p("n.key")]).unwrap();
    assert!(id.starts_with("12D3KooW"), "{id}");
    let meta = std::fs::metadata(p("n.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Refuses to overwrite a key.
    assert!(run_cli(&["keygen", "--out", &p("n.key")]).is_err());

    let root = run_cli(&["mesh", "init", "--dir", &p("root"), "--mesh-id", "m1"]).unwrap();
    let out = run_cli(&[
        "admit",
        "--root",
        &p("root/root.key"),
        "--node-pub",
        &id,
        "--roles",
        "a,b",
        "--ttl",
        "2h",
        "--out",
        &p("n.cert"),
        "--json",
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mesh_id"], "m1");
    assert_eq!(v["root_pub"], root.as_str());
    assert_eq!(v["roles"], serde_json::json!(["a", "b"]));
    let cert = agentmesh_node::security::certs::load_cert_file(&dir.path().join("n.cert")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = cert
        .verify(&root.parse().unwrap(), "m1", &id.parse().unwrap(), now)
        .unwrap();
    assert_eq!(c.roles, vec!["a", "b"]);
}

#[test]
fn bad_usage_has_meaningful_exit_codes() {
    let st = |args: &[&str]| Command::new(agentmesh_bin()).args(args).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "[node]\nkey_file = \"k\"\nstate_dir = \"s\"\ngossip_profile = \"moon\"\n[mesh]\nadmission = \"open\"\n").unwrap();
    let out = st(&["node", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "config errors exit 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node.toml"), "{err}");
    assert!(err.contains("node.gossip_profile"), "{err}");
    assert!(err.contains("lan") && err.contains("wan"), "{err}");

    assert_eq!(
        st(&["admit", "--bogus"]).status.code(),
        Some(2),
        "usage errors exit 2"
    );
    let out = st(&["members", "--api", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(4), "unreachable node exits 4");
    for sub in [
        "keygen",
        "mesh",
        "admit",
        "node",
        "members",
        "routes",
        "call",
        "demo-agent",
    ] {
        let out = st(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            assert!(
                line.chars().count() <= 100,
                "{sub} --help line too wide: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_agent_echoes_and_injects_errors() {
    let mut mesh = Mesh::new().unwrap();
    let ok = mesh
        .start_agent("echo", &NodeOpts::caps(&[]))
        .await
        .unwrap();
    let http = mesh.http.clone();
    let r = http
        .post(format!("{ok}/text.summarize"))
        .header("x-mesh-deadline-ms", "1234")
        .header("x-mesh-caller-node", "12D3KooWcaller")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(r#"{"text":"hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["agent"], "echo");
    assert_eq!(v["capability"], "text.summarize");
    assert_eq!(v["input"]["text"], "hi");
    assert_eq!(v["received_headers"]["x-mesh-deadline-ms"], "1234");
    assert_eq!(
        v["received_headers"]["x-mesh-caller-node"],
        "12D3KooWcaller"
    );
    assert!(v["received_headers"]["traceparent"].is_string());
    let h = http.get(format!("{ok}/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);

    let mut failing = NodeOpts::caps(&[]);
    failing.error_rate = 1.0;
    let bad = mesh.start_agent("broken", &failing).await.unwrap();
    let r = http
        .post(format!("{bad}/x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    // The guard kills the agents; their ports close.
    drop(mesh);
    wait_until("agent port closed", Duration::from_secs(5), || {
        let http = http.clone();
        let ok = ok.clone();
        async move {
            Ok(http
                .get(format!("{ok}/healthz"))
                .send()
                .await
                .is_err()
                .then_some(()))
        }
    })
    .await
    .unwrap();
}
