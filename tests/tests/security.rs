//! Security on real processes: privilege escalation denied, audited and counted; an unadmitted
//! node learns nothing and calls nothing; a revoked node is cut off.

use agentmesh_tests::{run_cli, wait_until, CertKind, Mesh, Node, NodeOpts};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
version = 1
[[deny]]
caller_roles = ["processing"]
callee_roles = ["admin"]
[[allow]]
caller_roles = ["processing"]
callee_roles = ["analysis"]
"#;

fn secured(mesh: &Mesh, caps: &[&str], roles: &str, policy: bool) -> NodeOpts {
    let policy_file = mesh.path().join("policy.toml");
    std::fs::write(&policy_file, POLICY).unwrap();
    let mut extra = "[audit]\ndir = \"audit\"\nfsync = \"always\"\n".to_string();
    if policy {
        extra.push_str(&format!(
            "[rbac]\npolicy_file = {:?}\n",
            policy_file.display().to_string()
        ));
    }
    NodeOpts {
        roles: Some(roles.into()),
        extra_toml: extra,
        ..NodeOpts::caps(caps)
    }
}

async fn offers(mesh: &Mesh, at: &Node, caps: &[&str]) {
    wait_until("capabilities visible", CONVERGE, || async {
        let (_, v) = mesh.get(at, "/v1/capabilities").await?;
        Ok(caps
            .iter()
            .all(|c| v["capabilities"].get(*c).is_some())
            .then_some(()))
    })
    .await
    .unwrap();
}

async fn metric(mesh: &Mesh, n: &Node, name: &str) -> u64 {
    let (_, v) = mesh.get(n, "/v1/security").await.unwrap();
    v["metrics"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn privilege_escalation_is_denied_audited_and_counted() {
    let mut mesh = Mesh::new().unwrap();
    let o = secured(&mesh, &["proc.run"], "processing", true);
    let proc_node = mesh.start_node(o).await.unwrap();
    let o = secured(&mesh, &["admin.reset"], "admin", true);
    let admin = mesh.start_node(o).await.unwrap();
    let o = secured(&mesh, &["report.run"], "analysis", true);
    let _analysis = mesh.start_node(o).await.unwrap();
    // A processing node without the policy: only the callee's check stands in its way.
    let o = secured(&mesh, &["rogue.run"], "processing", false);
    let rogue = mesh.start_node(o).await.unwrap();
    offers(&mesh, &proc_node, &["admin.reset", "report.run"]).await;
    offers(&mesh, &rogue, &["admin.reset"]).await;

    // processing → analysis is allowed.
    let r = mesh
        .call(&proc_node, "report.run", "{}", &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // processing → admin: the caller's node fails fast with `forbidden`.
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = mesh
        .call(&proc_node, "admin.reset", "{}", &[("traceparent", tp)])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "forbidden", "{v}");
    // Routing explains it: the admin candidate is ineligible because of the policy.
    let (_, routes) = mesh
        .get(&proc_node, "/v1/routes/admin.reset")
        .await
        .unwrap();
    assert!(
        routes.to_string().contains("forbidden by policy"),
        "{routes}"
    );
    // The callee enforces even when the caller does not check.
    let r = mesh.call(&rogue, "admin.reset", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "forbidden", "{v}");
    // Counted on both sides.
    assert!(metric(&mesh, &proc_node, "agentmesh_rbac_denied_total").await >= 1);
    assert!(metric(&mesh, &admin, "agentmesh_rbac_denied_inbound_total").await >= 1);
    // Audited: the caller's outbound deny (with the trace id) and the callee's inbound deny.
    let out = run_cli(&[
        "audit",
        "query",
        "--dir",
        proc_node.dir.join("audit").to_str().unwrap(),
        "--capability",
        "admin.*",
        "--decision",
        "deny",
        "--json",
    ])
    .unwrap();
    assert!(out.contains("0af7651916cd43dd8448eb211c80319c"), "{out}");
    // The callee writes its entry right after answering: wait for it.
    let rogue_id = rogue.id.clone();
    wait_until("the callee's inbound deny entry", CONVERGE, || async {
        let (_, v) = mesh
            .get(&admin, "/v1/audit?decision=deny&capability=admin.%2A")
            .await?;
        let found = v["entries"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["side"] == "inbound" && e["caller_node"] == rogue_id.as_str())
        });
        Ok(found.then_some(()))
    })
    .await
    .unwrap();
    // Every node's log verifies.
    for n in [&proc_node, &admin, &rogue] {
        let _ = mesh.get(n, "/v1/audit?limit=1").await.unwrap(); // flushes a checkpoint
        let ok = run_cli(&[
            "audit",
            "verify",
            "--dir",
            n.dir.join("audit").to_str().unwrap(),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unadmitted_node_learns_no_member_and_calls_nothing() {
    let mut mesh = Mesh::new().unwrap();
    let seed = mesh
        .start_node(NodeOpts::caps(&["seed.cap"]))
        .await
        .unwrap();
    let mut opts = NodeOpts::caps(&["intruder.cap"]);
    opts.cert = CertKind::OtherRoot;
    let intruder = mesh.start_node(opts).await.unwrap();
    wait_until("the seed refuses the intruder", CONVERGE, || async {
        let (_, v) = mesh.get(&seed, "/readyz").await?;
        Ok((v["admission"]["rejected_total"].as_u64().unwrap_or(0) > 0).then_some(()))
    })
    .await
    .unwrap();
    let members = mesh.members(&intruder).await.unwrap();
    assert_eq!(
        members.len(),
        1,
        "the intruder sees only itself: {members:?}"
    );
    let r = mesh.call(&intruder, "seed.cap", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 404, "the intruder cannot route to the seed");
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_node_is_cut_off() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh.start_node(NodeOpts::caps(&["a.cap"])).await.unwrap();
    let b = mesh.start_node(NodeOpts::caps(&["b.cap"])).await.unwrap();
    let bad = mesh.start_node(NodeOpts::caps(&["bad.cap"])).await.unwrap();
    offers(&mesh, &b, &["a.cap", "bad.cap"]).await;
    offers(&mesh, &bad, &["a.cap", "b.cap"]).await;
    let r = mesh.call(&bad, "b.cap", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 200, "before the revocation it may call");
    let out = run_cli(&[
        "revoke",
        "--root",
        mesh.root_key().to_str().unwrap(),
        "--node",
        &bad.id,
        "--reason",
        "test",
        "--api",
        &a.api,
    ]);
    assert!(out.is_ok(), "{out:?}");
    for n in [&a, &b] {
        wait_until("the revoked node is dropped", CONVERGE, || async {
            let gone = !mesh.members(n).await?.iter().any(|(id, _)| id == &bad.id);
            let (_, s) = mesh.get(n, "/v1/security").await?;
            let listed = s["revoked"].to_string().contains(&bad.id);
            Ok((gone && listed).then_some(()))
        })
        .await
        .unwrap();
    }
    let (_, caps) = mesh.get(&b, "/v1/capabilities").await.unwrap();
    assert!(caps["capabilities"].get("bad.cap").is_none(), "{caps}");
    // Its calls are refused.
    for cap in ["a.cap", "b.cap"] {
        let r = mesh.call(&bad, cap, "{}", &[]).await.unwrap();
        assert_ne!(r.status(), 200, "the revoked node still reached {cap}");
    }
}
