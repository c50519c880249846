//! Security on real processes: privilege escalation denied, audited and counted (in
//! `/v1/security` and `/metrics`); an unadmitted node learns nothing and calls nothing; a
//! revoked node is cut off, also by a node restarted without anyone to tell it again;
//! `audit query --mesh` reads other nodes' logs only where the policy allows `mesh.audit`.

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

/// The value of one series in the node's `/metrics` (0 if absent).
async fn prom(mesh: &Mesh, n: &Node, series: &str) -> f64 {
    let text = mesh
        .http
        .get(format!("{}/metrics", n.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
    // Counted on both sides, in `/v1/security` and in `/metrics` by caller role.
    assert!(metric(&mesh, &proc_node, "agentmesh_rbac_denied_total").await >= 1);
    assert!(metric(&mesh, &admin, "agentmesh_rbac_denied_inbound_total").await >= 1);
    let series =
        r#"agentmesh_rbac_denied_total{caller_role="processing",capability="admin.reset"}"#;
    assert!(prom(&mesh, &proc_node, series).await >= 1.0, "caller side");
    assert!(prom(&mesh, &admin, series).await >= 1.0, "callee side");
    assert!(prom(&mesh, &admin, "agentmesh_rbac_denied_inbound_total").await >= 1.0);
    // Another attempt makes the caller's counter rise.
    let before = prom(&mesh, &proc_node, series).await;
    let r = mesh
        .call(&proc_node, "admin.reset", "{}", &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(prom(&mesh, &proc_node, series).await, before + 1.0);
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
            "--node",
            &n.id,
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
    assert!(prom(&mesh, &seed, "agentmesh_admission_refused_total").await >= 1.0);
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

#[tokio::test(flavor = "multi_thread")]
async fn revocation_survives_a_restart() {
    let mut mesh = Mesh::new().unwrap();
    let a = mesh.start_node(NodeOpts::caps(&["a.cap"])).await.unwrap();
    let b = mesh.start_node(NodeOpts::caps(&["b.cap"])).await.unwrap();
    let bad = mesh.start_node(NodeOpts::caps(&["bad.cap"])).await.unwrap();
    offers(&mesh, &bad, &["a.cap", "b.cap"]).await;
    run_cli(&[
        "revoke",
        "--root",
        mesh.root_key().to_str().unwrap(),
        "--node",
        &bad.id,
        "--api",
        &a.api,
    ])
    .unwrap();
    wait_until("b hears the revocation", CONVERGE, || async {
        let (_, s) = mesh.get(&b, "/v1/security").await?;
        Ok(s["revoked"].to_string().contains(&bad.id).then_some(()))
    })
    .await
    .unwrap();
    // Nobody is left to tell b again: a is gone and bad is the revoked one.
    mesh.procs.kill9(a.proc_index).unwrap();
    let b = mesh.restart_node(&b).await.unwrap();
    let (_, s) = mesh.get(&b, "/v1/security").await.unwrap();
    assert!(
        s["revoked"].to_string().contains(&bad.id),
        "the restarted node forgot the revocation: {s}"
    );
    // The revoked node still knows b's address, but b refuses it.
    wait_until("b refuses the revoked node", CONVERGE, || async {
        let r = mesh.call(&bad, "b.cap", "{}", &[]).await?;
        Ok((r.status() != 200).then_some(()))
    })
    .await
    .unwrap();
    assert!(!mesh
        .members(&b)
        .await
        .unwrap()
        .iter()
        .any(|(id, _)| id == &bad.id));
}

const AUDIT_POLICY: &str = r#"
version = 1
[[allow]]
caller_roles = ["*"]
capabilities = ["work.*"]
[[allow]]
caller_roles = ["auditor"]
capabilities = ["mesh.audit"]
"#;

fn audited(mesh: &Mesh, caps: &[&str], roles: &str, policy: bool) -> NodeOpts {
    let policy_file = mesh.path().join("audit-policy.toml");
    std::fs::write(&policy_file, AUDIT_POLICY).unwrap();
    let mut o = secured(mesh, caps, roles, false);
    if policy {
        o.extra_toml.push_str(&format!(
            "[rbac]\npolicy_file = {:?}\n",
            policy_file.display().to_string()
        ));
    }
    o
}

/// The answer of `node_id` in a mesh-wide `GET /v1/audit?mesh=true`.
fn answer_of<'a>(v: &'a serde_json::Value, node_id: &str) -> &'a serde_json::Value {
    v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node_id"] == node_id))
        .unwrap_or(&serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_query_mesh_reads_other_logs_where_policy_allows() {
    let mut mesh = Mesh::new().unwrap();
    let auditor = mesh
        .start_node(audited(&mesh, &["aud.noop"], "auditor", true))
        .await
        .unwrap();
    let worker = mesh
        .start_node(audited(&mesh, &["work.run"], "worker", true))
        .await
        .unwrap();
    let client = mesh
        .start_node(audited(&mesh, &["work.other"], "worker", true))
        .await
        .unwrap();
    // A worker whose operator wrote its own policy granting itself everything: its own node
    // asks, and only the answering node's check stands in its way.
    let mut rogue_opts = audited(&mesh, &["work.rogue"], "worker", false);
    let rogue_policy = mesh.path().join("rogue-policy.toml");
    std::fs::write(
        &rogue_policy,
        "version = 1\n[[allow]]\ncaller_roles = [\"*\"]\ncapabilities = [\"*\"]\n",
    )
    .unwrap();
    rogue_opts.extra_toml.push_str(&format!(
        "[rbac]\npolicy_file = {:?}\n",
        rogue_policy.display().to_string()
    ));
    let rogue = mesh.start_node(rogue_opts).await.unwrap();
    offers(&mesh, &client, &["work.run"]).await;
    for n in [&auditor, &rogue] {
        wait_until("every member visible", CONVERGE, || async {
            Ok((mesh.members(n).await?.len() == 4).then_some(()))
        })
        .await
        .unwrap();
    }
    let r = mesh.call(&client, "work.run", "{}", &[]).await.unwrap();
    assert_eq!(r.status(), 200);

    // The auditor's node asks the worker's node, which answers with its inbound entry.
    let worker_id = worker.id.clone();
    let client_id = client.id.clone();
    let v = wait_until("the worker's entry through the mesh", CONVERGE, || async {
        let (_, v) = mesh
            .get(&auditor, "/v1/audit?mesh=true&capability=work.%2A")
            .await?;
        let found = answer_of(&v, &worker_id)["entries"]
            .as_array()
            .is_some_and(|es| {
                es.iter().any(|e| {
                    e["side"] == "inbound"
                        && e["caller_node"] == client_id.as_str()
                        && e["capability"] == "work.run"
                })
            });
        Ok(found.then_some(v))
    })
    .await
    .unwrap();
    assert!(answer_of(&v, &auditor.id)["entries"].is_array(), "{v}");
    // The CLI asks the same way.
    let out = run_cli(&[
        "audit",
        "query",
        "--mesh",
        "--api",
        &auditor.api,
        "--capability",
        "work.*",
        "--json",
    ])
    .unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains(&client.id) && l.contains("\"inbound\"")),
        "{out}"
    );

    // A worker may not read logs: its own node refuses to ask (policy pre-check)…
    let (_, v) = mesh
        .get(&client, "/v1/audit?mesh=true&capability=work.%2A")
        .await
        .unwrap();
    assert_eq!(answer_of(&v, &worker.id)["code"], "forbidden", "{v}");
    assert!(answer_of(&v, &worker.id)["entries"].is_null(), "{v}");
    // …and a node whose own policy lets it ask is refused by the answering node itself, which
    // audits it.
    let (_, v) = mesh
        .get(&rogue, "/v1/audit?mesh=true&capability=work.%2A")
        .await
        .unwrap();
    assert_eq!(answer_of(&v, &worker.id)["code"], "forbidden", "{v}");
    let rogue_id = rogue.id.clone();
    wait_until("the refused question is audited", CONVERGE, || async {
        let (_, v) = mesh
            .get(&worker, "/v1/audit?capability=mesh.audit&decision=deny")
            .await?;
        let found = v["entries"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["side"] == "inbound" && e["caller_node"] == rogue_id.as_str())
        });
        Ok(found.then_some(()))
    })
    .await
    .unwrap();
    let series = r#"agentmesh_rbac_denied_total{caller_role="worker",capability="mesh.audit"}"#;
    assert!(prom(&mesh, &worker, series).await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn expiring_certificate_warns_and_a_renewal_is_picked_up_without_restart() {
    let mut mesh = Mesh::new().unwrap();
    // The harness signs certificates for one day: inside the warning window.
    let n = mesh.start_node(NodeOpts::caps(&["x.cap"])).await.unwrap();
    let (_, s) = mesh.get(&n, "/v1/security").await.unwrap();
    assert!(s["cert_expires_in_s"].as_u64().unwrap() <= 86_400, "{s}");
    assert_eq!(s["roles"], serde_json::json!(["agent"]));
    wait_until("the expiry warning", CONVERGE, || async {
        Ok(n.log().contains("certificate expires soon").then_some(()))
    })
    .await
    .unwrap();
    let pid = n.proc_index;
    // `admit` never overwrites; an operator writes the renewal beside it and renames it in.
    let renewed = n.dir.join("node.cert.new");
    run_cli(&[
        "admit",
        "--root",
        mesh.root_key().to_str().unwrap(),
        "--node-pub",
        &n.id,
        "--roles",
        "renewed",
        "--ttl",
        "30d",
        "--out",
        renewed.to_str().unwrap(),
    ])
    .unwrap();
    std::fs::rename(&renewed, n.dir.join("node.cert")).unwrap();
    let s = wait_until("the renewed certificate in force", CONVERGE, || async {
        let (_, s) = mesh.get(&n, "/v1/security").await?;
        Ok((s["roles"] == serde_json::json!(["renewed"])).then_some(s))
    })
    .await
    .unwrap();
    assert!(
        s["cert_expires_in_s"].as_u64().unwrap() > 29 * 86_400,
        "{s}"
    );
    assert!(n.log().contains("renewed admission certificate picked up"));
    assert!(
        mesh.procs.try_exit(pid).unwrap().is_none(),
        "the node was not restarted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_audit_entries_survive_kill9() {
    let mut mesh = Mesh::new().unwrap();
    let callee = mesh.start_node(NodeOpts::caps(&["y.cap"])).await.unwrap();
    // fsync = "always": a call is answered only once its outbound entry is on disk.
    let o = secured(&mesh, &["x.cap"], "agent", false);
    let caller = mesh.start_node(o).await.unwrap();
    offers(&mesh, &caller, &["y.cap"]).await;
    let calls = 20;
    for _ in 0..calls {
        let r = mesh.call(&caller, "y.cap", "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
    }
    mesh.procs.kill9(caller.proc_index).unwrap();
    let dir = caller.dir.join("audit");
    let dir = dir.to_str().unwrap();
    // Killed: entries after the last checkpoint are accepted only as an open tail.
    run_cli(&[
        "audit",
        "verify",
        "--dir",
        dir,
        "--node",
        &caller.id,
        "--allow-open-tail",
    ])
    .unwrap();
    let out = run_cli(&[
        "audit",
        "query",
        "--dir",
        dir,
        "--capability",
        "y.cap",
        "--json",
    ])
    .unwrap();
    let outbound = out.lines().filter(|l| l.contains("\"outbound\"")).count();
    assert_eq!(outbound, calls, "{out}");
    drop(callee);
}

#[tokio::test(flavor = "multi_thread")]
async fn root_signed_policy_spreads_by_gossip_and_is_enforced() {
    let mut mesh = Mesh::new().unwrap();
    let proc_node = mesh
        .start_node(secured(&mesh, &["proc.run"], "processing", false))
        .await
        .unwrap();
    let admin = mesh
        .start_node(secured(&mesh, &["admin.reset"], "admin", false))
        .await
        .unwrap();
    let analysis = mesh
        .start_node(secured(&mesh, &["report.run"], "analysis", false))
        .await
        .unwrap();
    offers(&mesh, &proc_node, &["admin.reset", "report.run"]).await;
    // No policy anywhere yet: everything is allowed.
    let r = mesh
        .call(&proc_node, "admin.reset", "{}", &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let signed = mesh.path().join("policy.hex");
    let file = mesh.path().join("policy.toml");
    run_cli(&[
        "policy",
        "sign",
        "--root",
        mesh.root_key().to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--out",
        signed.to_str().unwrap(),
    ])
    .unwrap();
    // Pushed to one node only; the others adopt it from its record.
    run_cli(&[
        "policy",
        "push",
        signed.to_str().unwrap(),
        "--api",
        &analysis.api,
    ])
    .unwrap();
    for n in [&proc_node, &admin, &analysis] {
        wait_until("every node runs policy version 1", CONVERGE, || async {
            let (_, s) = mesh.get(n, "/v1/security").await?;
            let v = &s["policy"];
            Ok((v["version"] == 1 && v["distributed"] == true).then_some(()))
        })
        .await
        .unwrap();
    }
    let r = mesh
        .call(&proc_node, "admin.reset", "{}", &[])
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "processing → admin is denied once the policy arrived"
    );
    let r = mesh
        .call(&proc_node, "report.run", "{}", &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "processing → analysis stays allowed");
    // A forged policy (signed by another key) is refused and changes nothing.
    let other = mesh.path().join("other-root");
    run_cli(&[
        "mesh",
        "init",
        "--dir",
        other.to_str().unwrap(),
        "--mesh-id",
        "it-mesh",
    ])
    .unwrap();
    let forged = mesh.path().join("forged.hex");
    std::fs::write(&file, POLICY.replace("version = 1", "version = 2")).unwrap();
    run_cli(&[
        "policy",
        "sign",
        "--root",
        other.join("root.key").to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--out",
        forged.to_str().unwrap(),
    ])
    .unwrap();
    assert!(run_cli(&[
        "policy",
        "push",
        forged.to_str().unwrap(),
        "--api",
        &admin.api
    ])
    .is_err());
    let (_, s) = mesh.get(&admin, "/v1/security").await.unwrap();
    assert_eq!(s["policy"]["version"], 1, "{s}");
}
