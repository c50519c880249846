//! Attacks on the audit trail and the secure defaults, on real `agentmesh` processes. Each test
//! is something an attacker would try, and asserts the defence and its message:
//! - rewrite an audit entry and re-sign every later checkpoint with another key;
//! - delete the oldest audit file;
//! - cut the newest entries after other nodes witnessed a checkpoint, holding the node's key;
//! - flood calls until the audit queue is full (`record_gap`, and `refuse_call`);
//! - read audit logs over `--mesh` with no role and no policy;
//! - claim `critical` priority in node.toml without a certificate for it.

use agentmesh_crypto::{line_hash, Checkpoint, Keypair};
use agentmesh_tests::{run_cli, wait_until, Mesh, Node, NodeOpts};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);

fn audited(caps: &[&str], audit: &str) -> NodeOpts {
    NodeOpts {
        extra_toml: format!("[audit]\ndir = \"audit\"\n{audit}\n"),
        ..NodeOpts::caps(caps)
    }
}

/// SIGTERM and wait for a clean exit (the node writes its closing checkpoint).
async fn stop(mesh: &mut Mesh, n: &Node) {
    mesh.procs.term(n.proc_index).unwrap();
    let i = n.proc_index;
    wait_until("the node exits", CONVERGE, || {
        let st = mesh.procs.try_exit(i).map(|s| s.map(|_| ()));
        async move { st }
    })
    .await
    .unwrap();
}

fn audit_dir(n: &Node) -> PathBuf {
    n.dir.join("audit")
}

/// `agentmesh audit verify --dir <n's audit> <args…>`: Ok(stdout) or Err(message).
fn verify(n: &Node, args: &[&str]) -> Result<String, String> {
    let dir = audit_dir(n);
    let mut a = vec!["audit", "verify", "--dir", dir.to_str().unwrap()];
    a.extend_from_slice(args);
    run_cli(&a).map_err(|e| e.to_string())
}

fn verify_json(n: &Node, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&verify(n, &a).unwrap()).unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(p: &Path, ls: &[String]) {
    std::fs::write(p, ls.join("\n") + "\n").unwrap();
}

/// Re-chains `ls` from index `from` on and re-signs every checkpoint from there with `key`.
fn rechain(ls: &mut [String], from: usize, key: &Keypair) {
    let mut prev = line_hash(ls[from - 1].as_bytes());
    for l in ls.iter_mut().skip(from) {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["prev"] = hex::encode(prev).into();
        if v["kind"] == "checkpoint" {
            let cp = Checkpoint {
                size: v["seq"].as_u64().unwrap(),
                head: prev,
            };
            v["head"] = hex::encode(prev).into();
            v["signer"] = key.node_id().to_string().into();
            v["sig"] = hex::encode(cp.sign(key).0).into();
        }
        *l = serde_json::to_string(&v).unwrap();
        prev = line_hash(l.as_bytes());
    }
}

async fn calls(mesh: &Mesh, n: &Node, cap: &str, count: usize) {
    for _ in 0..count {
        let r = mesh.call(n, cap, "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

fn root_pub(mesh: &Mesh) -> String {
    let text =
        std::fs::read_to_string(mesh.root_key().parent().unwrap().join("mesh.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("root_pub = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_entry_resigned_with_another_key_is_named_with_the_signer() {
    let mut mesh = Mesh::new().unwrap();
    let n = mesh
        .start_node(audited(&["x.cap"], "checkpoint_every = 4"))
        .await
        .unwrap();
    mesh.wait_offers(&n, "x.cap", 1).await.unwrap();
    calls(&mesh, &n, "x.cap", 10).await;
    stop(&mut mesh, &n).await;
    // A cleanly stopped node's log verifies as its own (the closing checkpoint covers the end).
    let ok = verify(&n, &["--node", &n.id]).unwrap();
    assert!(ok.contains(&format!("log of {}", n.id)), "{ok}");
    // …and by certificate and mesh root.
    let cert = n.dir.join("node.cert");
    let rp = root_pub(&mesh);
    verify(&n, &["--cert", cert.to_str().unwrap(), "--root", &rp]).unwrap();
    // Without saying whose log it is, verify refuses to vouch for anything.
    let e = verify(&n, &[]).unwrap_err();
    assert!(e.contains("--node"), "{e}");

    // The attacker flips call 6 (line 7) to a denied admin.wipe, re-chains, and re-signs every
    // later checkpoint with a fresh key.
    let f = audit_dir(&n).join("audit.jsonl");
    let mut ls = lines(&f);
    let mut v: serde_json::Value = serde_json::from_str(&ls[6]).unwrap();
    assert_eq!(v["kind"], "call");
    let seq = v["seq"].as_u64().unwrap();
    v["capability"] = "admin.wipe".into();
    v["decision"] = "deny".into();
    ls[6] = serde_json::to_string(&v).unwrap();
    let thief = Keypair::from_secret(rand::random());
    rechain(&mut ls, 7, &thief);
    write_lines(&f, &ls);
    let e = verify(&n, &["--node", &n.id]).unwrap_err();
    assert!(
        e.contains(&thief.node_id().to_string()),
        "names the wrong signer: {e}"
    );
    assert!(e.contains(&n.id), "names the expected node: {e}");
    // The rewritten entry lies in the range the message names as not vouched for.
    let range = e.split("entries seq ").nth(1).unwrap();
    let (from, rest) = range.split_once("..=").unwrap();
    let to: u64 = rest.split(' ').next().unwrap().parse().unwrap();
    let from: u64 = from.parse().unwrap();
    assert!(from <= seq && seq <= to, "seq {seq} in {from}..={to}: {e}");
    // Unbound verification still sees two signers in one log.
    let e = verify(&n, &["--unbound"]).unwrap_err();
    assert!(e.contains("signed by"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_oldest_audit_file_is_detected() {
    let mut mesh = Mesh::new().unwrap();
    let n = mesh
        .start_node(audited(
            &["x.cap"],
            "rotate_bytes = 4096\nfsync = \"never\"\ncheckpoint_every = 8",
        ))
        .await
        .unwrap();
    mesh.wait_offers(&n, "x.cap", 1).await.unwrap();
    calls(&mesh, &n, "x.cap", 40).await;
    stop(&mut mesh, &n).await;
    verify(&n, &["--node", &n.id]).unwrap();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(audit_dir(&n))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit-")
        })
        .collect();
    rotated.sort();
    assert!(rotated.len() >= 2, "expected rotation: {rotated:?}");
    std::fs::remove_file(&rotated[0]).unwrap();
    let e = verify(&n, &["--node", &n.id]).unwrap_err();
    assert!(e.contains("genesis") && e.contains("missing"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cutting_witnessed_entries_is_detected_even_with_the_nodes_own_key() {
    let mut mesh = Mesh::new().unwrap();
    let witness = mesh.start_node(NodeOpts::caps(&["w.cap"])).await.unwrap();
    let n = mesh
        .start_node(audited(&["x.cap"], "checkpoint_every = 5"))
        .await
        .unwrap();
    mesh.wait_offers(&n, "x.cap", 1).await.unwrap();
    calls(&mesh, &n, "x.cap", 20).await;
    // The other node witnesses a checkpoint covering (at least) those calls.
    let path = format!("/v1/audit/witnessed?node={}", n.id);
    let size = wait_until("the checkpoint witnessed", CONVERGE, || async {
        let (_, v) = mesh.get(&witness, &path).await?;
        Ok(v["size"].as_u64().filter(|s| *s >= 20))
    })
    .await
    .unwrap();
    stop(&mut mesh, &n).await;
    let wit = ["--node", &n.id, "--witness", &witness.api];
    let v = verify_json(&n, &wit);
    assert_eq!(v["witnessed_ok"], 1, "{v}");

    // The attacker holds the node's key: cut the log to 10 entries and sign a fresh
    // checkpoint over them. Without witnesses this verifies.
    let key = agentmesh_crypto::keyfile::load(&n.dir.join("node.key")).unwrap();
    let f = audit_dir(&n).join("audit.jsonl");
    let mut ls = lines(&f);
    ls.truncate(10);
    let head = line_hash(ls[9].as_bytes());
    let cp = Checkpoint { size: 10, head };
    ls.push(
        serde_json::json!({
            "seq": 10, "prev": hex::encode(head), "kind": "checkpoint", "size": 10,
            "head": hex::encode(head), "signer": n.id, "sig": hex::encode(cp.sign(&key).0),
        })
        .to_string(),
    );
    write_lines(&f, &ls);
    verify(&n, &["--node", &n.id]).unwrap();
    let e = verify(&n, &wit).unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    assert!(e.contains(&witness.id), "names the witness: {e}");
    assert!(e.contains(&format!("covering {size} entries")), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_calls_is_accounted_for_by_entries_and_gaps() {
    let mut mesh = Mesh::new().unwrap();
    let server = mesh
        .start_node(NodeOpts {
            max_concurrency: Some(512),
            ..NodeOpts::caps(&["flood.cap"])
        })
        .await
        .unwrap();
    // A tiny queue and an fsync per entry: the writer cannot keep up with 64 callers.
    let c = mesh
        .start_node(audited(
            &["c.cap"],
            "queue_max = 2\nfsync = \"always\"\ncheckpoint_every = 50",
        ))
        .await
        .unwrap();
    mesh.wait_offers(&c, "flood.cap", 1).await.unwrap();
    let total = 600;
    let (tx, mut rx) = tokio::sync::mpsc::channel(total);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..total {
        let (http, url, tx, sem) = (
            mesh.http.clone(),
            format!("{}/v1/call/flood.cap", c.api),
            tx.clone(),
            sem.clone(),
        );
        tokio::spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let r = http.post(url).body("{}").send().await;
            let _ = tx.send(r.map(|r| r.status().as_u16()).unwrap_or(0)).await;
        });
    }
    drop(tx);
    let mut answered = 0;
    while let Some(s) = rx.recv().await {
        assert_ne!(s, 0, "every call gets an answer");
        answered += 1;
    }
    assert_eq!(answered, total);
    stop(&mut mesh, &c).await;
    let v = verify_json(&c, &["--node", &c.id]);
    let calls = v["calls"].as_u64().unwrap();
    let lost = v["lost_total"].as_u64().unwrap();
    eprintln!(
        "flood: {total} calls: {calls} entries + {lost} lost in {} gap entries",
        v["gap_entries"]
    );
    assert!(lost > 0, "the queue never filled: {v}");
    assert_eq!(calls + lost, total as u64, "{v}");
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_call_serves_only_what_it_can_record() {
    let mut mesh = Mesh::new().unwrap();
    let _server = mesh
        .start_node(NodeOpts {
            max_concurrency: Some(512),
            ..NodeOpts::caps(&["flood.cap"])
        })
        .await
        .unwrap();
    let c = mesh
        .start_node(audited(
            &["c.cap"],
            "queue_max = 1\nfsync = \"always\"\non_full = \"refuse_call\"",
        ))
        .await
        .unwrap();
    mesh.wait_offers(&c, "flood.cap", 1).await.unwrap();
    let results =
        futures::future::join_all((0..200).map(|_| mesh.call_json(&c, "flood.cap", &[]))).await;
    let ok = results
        .iter()
        .filter(|r| r.as_ref().unwrap().0 == 200)
        .count();
    let refused: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.0 != 200)
        .collect();
    for r in &refused {
        assert_eq!(
            (r.0, r.3["code"].as_str()),
            (503, Some("audit_unavailable")),
            "{:?}",
            r.3
        );
    }
    assert!(!refused.is_empty(), "the queue never filled");
    stop(&mut mesh, &c).await;
    let v = verify_json(&c, &["--node", &c.id]);
    assert_eq!(v["lost_total"], 0, "{v}");
    assert_eq!(
        v["calls"].as_u64().unwrap(),
        ok as u64,
        "every served call is recorded: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_audit_logs_without_role_or_policy_is_refused_and_audited() {
    let mut mesh = Mesh::new().unwrap();
    // The target runs with no policy file at all.
    let target = mesh
        .start_node(NodeOpts {
            roles: Some("agent".into()),
            ..audited(&["t.cap"], "")
        })
        .await
        .unwrap();
    assert!(
        target.log().contains("no [rbac] policy_file"),
        "warns at start"
    );
    // A node without any role and without a policy asks every member: its own node refuses
    // to ask (no policy opens mesh.audit) and audits the refusal.
    let snoop = mesh
        .start_node(NodeOpts {
            roles: Some(String::new()),
            ..audited(&["s.cap"], "")
        })
        .await
        .unwrap();
    let (_, s) = mesh.get(&snoop, "/v1/security").await.unwrap();
    assert_eq!(s["roles"], serde_json::json!([]), "{s}");
    mesh.wait_offers(&snoop, "t.cap", 1).await.unwrap();
    let (_, v) = mesh.get(&snoop, "/v1/audit?mesh=true").await.unwrap();
    let answer = answer_of(&v, &target.id);
    assert_eq!(answer["code"], "forbidden", "{v}");
    assert!(answer["entries"].is_null(), "{v}");
    let (_, v) = mesh
        .get(&snoop, "/v1/audit?capability=mesh.audit&decision=deny")
        .await
        .unwrap();
    assert!(
        v["entries"].as_array().is_some_and(|es| es
            .iter()
            .any(|e| e["side"] == "outbound" && e["callee_node"] == target.id.as_str())),
        "audited by the asking node: {v}"
    );
    // A node that grants itself mesh.audit in its own policy is refused by the target, which
    // has no policy, and the target audits the question.
    let own = mesh.path().join("snoop-policy.toml");
    std::fs::write(&own, "version = 1\n[[allow]]\ncaller_roles = [\"snoop\"]\n").unwrap();
    let snoop2 = mesh
        .start_node(NodeOpts {
            roles: Some("snoop".into()),
            ..audited(
                &["s2.cap"],
                &format!("[rbac]\npolicy_file = {:?}\n", own.display().to_string()),
            )
        })
        .await
        .unwrap();
    mesh.wait_offers(&snoop2, "t.cap", 1).await.unwrap();
    let (_, v) = mesh.get(&snoop2, "/v1/audit?mesh=true").await.unwrap();
    let answer = answer_of(&v, &target.id);
    assert_eq!(answer["code"], "forbidden", "{v}");
    assert!(answer["entries"].is_null(), "{v}");
    let snoop_id = snoop2.id.clone();
    wait_until("the refusal is audited by the target", CONVERGE, || async {
        let (_, v) = mesh
            .get(&target, "/v1/audit?capability=mesh.audit&decision=deny")
            .await?;
        Ok(v["entries"]
            .as_array()
            .is_some_and(|es| {
                es.iter()
                    .any(|e| e["side"] == "inbound" && e["caller_node"] == snoop_id.as_str())
            })
            .then_some(()))
    })
    .await
    .unwrap();
}

fn answer_of(v: &serde_json::Value, id: &str) -> serde_json::Value {
    v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|a| a["node_id"] == id).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn critical_claimed_only_in_node_toml_is_shed_as_standard() {
    let mut mesh = Mesh::new().unwrap();
    let no_retry = "[defaults.retry]\nmax_attempts = 1\n[defaults.shedding]\nstandard_pct = 50\n";
    let server = mesh
        .start_node(NodeOpts {
            latency_ms_p50: 800.0,
            max_concurrency: Some(4),
            extra_toml: no_retry.into(),
            ..NodeOpts::caps(&["slow"])
        })
        .await
        .unwrap();
    let claimer = mesh
        .start_node(NodeOpts {
            priority: Some("critical".into()),
            extra_toml: no_retry.into(),
            ..NodeOpts::caps(&["x.claim"])
        })
        .await
        .unwrap();
    let certified = mesh
        .start_node(NodeOpts {
            priority: Some("critical".into()),
            roles: Some("agent,priority:critical".into()),
            extra_toml: no_retry.into(),
            ..NodeOpts::caps(&["x.cert"])
        })
        .await
        .unwrap();
    assert!(
        claimer
            .log()
            .contains("higher than the admission certificate grants"),
        "the claimer is warned"
    );
    assert!(!certified
        .log()
        .contains("higher than the admission certificate grants"));
    for n in [&claimer, &certified] {
        mesh.wait_offers(n, "slow", 1).await.unwrap();
    }
    mesh.wait_offers(&server, "x.claim", 1).await.unwrap();
    mesh.wait_offers(&server, "x.cert", 1).await.unwrap();
    let burst = |node: Node| {
        let m = &mesh;
        futures::future::join_all((0..4).map(move |_| {
            let n = node.clone();
            async move { m.call_json(&n, "slow", &[]).await.unwrap() }
        }))
    };
    let r = burst(claimer.clone()).await;
    let ok = r.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = r.iter().filter(|r| r.0 == 503).collect();
    assert!(
        ok <= 2,
        "standard callers get at most 50 % of 4 slots: {ok}"
    );
    assert!(!shed.is_empty());
    for s in shed {
        assert!(
            s.3["message"]
                .as_str()
                .unwrap()
                .contains("standard callers are refused"),
            "{}",
            s.3
        );
    }
    let r = burst(certified.clone()).await;
    assert_eq!(
        r.iter().filter(|r| r.0 == 200).count(),
        4,
        "certified critical uses every slot"
    );
}

/// Calls/s through a caller whose audit log is on (defaults), for a bounded time. Run with
/// `AGENTMESH_BIN` set to compare binaries: `cargo test -p agentmesh-tests --test
/// attacks_audit audit_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, prints figures"]
async fn audit_cost() {
    let mut mesh = Mesh::new().unwrap();
    let _server = mesh
        .start_node(NodeOpts {
            max_concurrency: Some(512),
            ..NodeOpts::caps(&["load.cap"])
        })
        .await
        .unwrap();
    let c = mesh.start_node(audited(&["c.cap"], "")).await.unwrap();
    mesh.wait_offers(&c, "load.cap", 1).await.unwrap();
    let secs: u64 = std::env::var("AUDIT_COST_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers = (0..16).map(|_| {
        let (http, url, done) = (
            mesh.http.clone(),
            format!("{}/v1/call/load.cap", c.api),
            done.clone(),
        );
        tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                let r = http.post(&url).body("{}").send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    futures::future::join_all(workers).await;
    let n = done.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "AUDIT_COST bin={} calls={n} secs={secs} calls_per_s={:.0}",
        std::env::var("AGENTMESH_BIN").unwrap_or_default(),
        n as f64 / secs as f64
    );
}

/// The unprotected window at the default checkpoint settings: how long, and how many entries,
/// the newest entries wait before another node witnesses a checkpoint covering them.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement, prints figures"]
async fn witness_window() {
    let mut mesh = Mesh::new().unwrap();
    let witness = mesh.start_node(NodeOpts::caps(&["w.cap"])).await.unwrap();
    let n = mesh.start_node(audited(&["x.cap"], "")).await.unwrap();
    mesh.wait_offers(&n, "x.cap", 1).await.unwrap();
    let secs: u64 = std::env::var("WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(35);
    let path = format!("/v1/audit/witnessed?node={}", n.id);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs(secs);
    // Each time the witnessed checkpoint grows: when, and after how many calls. An entry
    // written just after one witnessed checkpoint stays unwitnessed until the next one.
    let (mut calls, mut size) = (0u64, 0u64);
    let (mut last_t, mut last_calls) = (start, 0u64);
    let (mut max_s, mut max_entries, mut changes) = (0f64, 0u64, 0u32);
    while tokio::time::Instant::now() < end {
        let r = mesh.call(&n, "x.cap", "{}", &[]).await.unwrap();
        assert_eq!(r.status(), 200);
        calls += 1;
        let (_, v) = mesh.get(&witness, &path).await.unwrap();
        let s = v["size"].as_u64().unwrap_or(0);
        if s > size {
            let now = tokio::time::Instant::now();
            if changes > 0 {
                max_s = max_s.max((now - last_t).as_secs_f64());
                max_entries = max_entries.max(calls - last_calls);
            }
            (size, last_t, last_calls, changes) = (s, now, calls, changes + 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "WITNESS_WINDOW run_s={secs} calls={calls} witnessed_updates={changes} \
         max_s_between_witnessed_checkpoints={max_s:.1} max_calls_between={max_entries}"
    );
}
