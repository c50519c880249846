//! Attacks on quorum decisions and votes, on real processes (issue 14).
//!
//! 1. Decision files forged five ways (fresh keys, a vote moved from another question, a
//!    duplicated voter, a relabelled capability, a `needs_review` rewritten into a majority
//!    decision) are each refused by `agentmesh quorum verify --root`, naming the fault.
//! 2. A test-only voter (`equivocating-voter`: a node with its own admitted key that signs two
//!    different votes per call) is caught: both votes refused, the proof reaches every node by
//!    gossip, and every node's routing score for it falls (seen on `/v1/routes`); the next
//!    quorum that would need it says why it is excluded before asking anyone. Answers without
//!    the decision key never decide; voters not waited for are `late`, not `failed`.

use agentmesh_tests::{run_cli, wait_until, Mesh, Node, NodeOpts};
use std::time::{Duration, Instant};

const TRUTH: &str = r#"{"decision":"approve","reason":"policy 4.2"}"#;
const LIE: &str = r#"{"decision":"deny","reason":"because"}"#;

fn voter(caps: &[&str], answers: &[(&str, &str)], latency_ms: f64) -> NodeOpts {
    NodeOpts {
        latency_ms_p50: latency_ms,
        agent_args: answers
            .iter()
            .flat_map(|(c, a)| ["--answer".to_string(), format!("{c}={a}")])
            .collect(),
        ..NodeOpts::caps(caps)
    }
}

async fn quorum(mesh: &Mesh, node: &Node, cap: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, d) = mesh
        .post_json(node, &format!("/v1/quorum/{cap}"), body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{d:#}");
    d
}

/// Writes `d` and runs `quorum verify --root`; Ok(stdout) or Err(message with the problems).
fn verify(mesh: &Mesh, name: &str, d: &serde_json::Value) -> Result<String, String> {
    let file = mesh.path().join(name);
    std::fs::write(&file, serde_json::to_string_pretty(d).unwrap()).unwrap();
    run_cli(&[
        "quorum",
        "verify",
        "--root",
        mesh.root_pub(),
        file.to_str().unwrap(),
    ])
    .map_err(|e| format!("{e:#}"))
}

fn refused(mesh: &Mesh, name: &str, d: &serde_json::Value, fault: &str) {
    match verify(mesh, name, d) {
        Ok(out) => panic!("{name}: forged decision accepted: {out}"),
        Err(e) => {
            assert!(
                e.contains(fault),
                "{name}: refusal does not name {fault:?}: {e}"
            );
            eprintln!("{name}: refused: {}", e.lines().last().unwrap_or(&e));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_quorum_decisions_are_refused_by_verify_root() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh.start_node(NodeOpts::caps(&["other"])).await.unwrap();
    let honest = [("*", TRUTH)];
    let split = [("vote", TRUTH), ("split", LIE)];
    for answers in [&honest[..], &honest[..], &split[..], &split[..]] {
        mesh.start_node(voter(&["vote", "split"], answers, 0.0))
            .await
            .unwrap();
    }
    mesh.wait_offers(&caller, "vote", 4).await.unwrap();
    mesh.wait_offers(&caller, "split", 4).await.unwrap();
    let ask = |q: &str| serde_json::json!({"payload": {"q": q}, "n": 4, "f": 1, "key": "decision", "deadline_ms": 5000});

    let genuine = quorum(&mesh, &caller, "vote", ask("refund?")).await;
    assert_eq!(genuine["status"], "decided", "{genuine:#}");
    assert!(
        genuine["certs"].as_object().unwrap().len() >= 3,
        "{genuine:#}"
    );
    let out = verify(&mesh, "genuine.json", &genuine).expect("a genuine decision verifies");
    assert!(
        out.contains("every voter admitted by the given root"),
        "{out}"
    );
    let other_question = quorum(&mesh, &caller, "vote", ask("another question")).await;
    let review = quorum(&mesh, &caller, "split", ask("refund?")).await;
    assert_eq!(review["status"], "needs_review", "{review:#}");
    verify(&mesh, "review.json", &review).expect("a genuine needs_review verifies");

    // 1. Forged with fresh keys: the forger re-signs every vote with keys of its own and
    // issues them certificates from a root of its own.
    let forger_root = agentmesh_crypto::Keypair::from_secret([77; 32]);
    let mut forged = genuine.clone();
    let mut voters = Vec::new();
    let mut certs = serde_json::Map::new();
    for (i, v) in forged["votes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let key = agentmesh_crypto::Keypair::from_secret([i as u8 + 1; 32]);
        let sig: agentmesh_node::quorum::VoteSig =
            serde_json::from_value(v["signature"].clone()).unwrap();
        let mut sv = sig.to_signed().unwrap();
        sv.vote.node_id = key.node_id();
        let resigned = sv.vote.sign(&key);
        let subject = sig.subject.to_subject().unwrap();
        let id = key.node_id().to_string();
        v["node_id"] = id.clone().into();
        v["signature"] =
            serde_json::to_value(agentmesh_node::quorum::VoteSig::new(&resigned, &subject))
                .unwrap();
        let cert = agentmesh_crypto::AdmissionCert {
            mesh_id: genuine["mesh_id"].as_str().unwrap().into(),
            node_id: key.node_id(),
            roles: vec!["agent".into()],
            not_before: 0,
            not_after: u64::MAX / 2,
        }
        .sign(&forger_root)
        .unwrap();
        certs.insert(id.clone(), hex(&cert.to_bytes()).into());
        voters.push(serde_json::Value::from(id));
    }
    while voters.len() < 4 {
        let k = agentmesh_crypto::Keypair::from_secret([voters.len() as u8 + 10; 32]);
        voters.push(k.node_id().to_string().into());
    }
    forged["voters"] = voters.into();
    forged["certs"] = certs.into();
    forged["signatures"] = serde_json::Value::Array(
        forged["votes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["signature"].clone())
            .collect(),
    );
    forged["dissenters"] = serde_json::json!([]);
    let file = mesh.path().join("fresh-sigs-only.json");
    std::fs::write(&file, forged.to_string()).unwrap();
    let sigs_only = run_cli(&["quorum", "verify", file.to_str().unwrap()]).unwrap();
    assert!(sigs_only.contains("NOT checked"), "{sigs_only}");
    refused(
        &mesh,
        "fresh-keys.json",
        &forged,
        "not a voter admitted by this root",
    );

    // 2. A genuine vote moved from another question (same voter, same capability).
    let mut moved = review.clone();
    let liar_vote = moved["votes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|v| v["value"] == "deny")
        .unwrap();
    let liar = moved["votes"][liar_vote]["node_id"].clone();
    let donor = other_question["votes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["node_id"] == liar)
        .cloned();
    let donor = match donor {
        Some(d) => d,
        // The donor quorum decided before this voter answered: ask again until it votes.
        None => {
            let mut found = None;
            for i in 0..10 {
                let d = quorum(&mesh, &caller, "vote", ask(&format!("another {i}"))).await;
                found = d["votes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|v| v["node_id"] == liar)
                    .cloned();
                if found.is_some() {
                    break;
                }
            }
            found.expect("the liar voted on another question")
        }
    };
    moved["votes"][liar_vote] = donor;
    moved["status"] = "decided".into();
    moved["value"] = "approve".into();
    refused(
        &mesh,
        "moved-vote.json",
        &moved,
        "vote moved from another question",
    );

    // 3. A duplicated voter: an approve vote copied over a deny vote.
    let mut dup = review.clone();
    let yes = dup["votes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "approve")
        .cloned()
        .unwrap();
    dup["votes"][liar_vote] = yes;
    dup["status"] = "decided".into();
    dup["value"] = "approve".into();
    refused(&mesh, "duplicate-voter.json", &dup, "duplicated voter");

    // 4. Relabelled capability.
    let mut relabel = genuine.clone();
    relabel["capability"] = "split".into();
    refused(&mesh, "relabel.json", &relabel, "relabelled capability");

    // 5. needs_review (2 against 2, n = 4, f = 1) rewritten as a majority of n = 3 with the
    // real signatures: drop one deny vote and its voter, change n and the mode.
    let mut rewritten = review.clone();
    let dropped = rewritten["votes"][liar_vote]["node_id"].clone();
    rewritten["votes"]
        .as_array_mut()
        .unwrap()
        .retain(|v| v["node_id"] != dropped);
    rewritten["voters"]
        .as_array_mut()
        .unwrap()
        .retain(|v| *v != dropped);
    rewritten["n"] = 3.into();
    rewritten["f"] = serde_json::Value::Null;
    rewritten["required"] = 2.into();
    rewritten["status"] = "decided".into();
    rewritten["value"] = "approve".into();
    rewritten["dissenters"] = rewritten["votes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["value"] == "deny")
        .map(|v| v["node_id"].clone())
        .collect();
    refused(
        &mesh,
        "rewritten-terms.json",
        &rewritten,
        "quorum terms rewritten",
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The success rate `observer` holds for `subject` on `/v1/routes/{cap}` (1.0 if unjudged).
async fn rate_on(mesh: &Mesh, observer: &Node, cap: &str, subject: &str) -> f64 {
    let (_, routes) = mesh
        .get(observer, &format!("/v1/routes/{cap}?policy=quality"))
        .await
        .unwrap();
    routes["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["node_id"] == subject)
        .and_then(|c| c["success_rate"].as_f64())
        .unwrap_or(1.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn equivocating_voter_is_caught_and_penalized_by_every_node() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh.start_node(NodeOpts::caps(&["other"])).await.unwrap();
    let observer = mesh.start_node(NodeOpts::caps(&["other"])).await.unwrap();
    let errs = r#"{"error":"upstream down"}"#;
    let mut honest = Vec::new();
    for _ in 0..3 {
        // Slower than the equivocator, so its two votes arrive before the decision.
        honest.push(
            mesh.start_node(voter(
                &["vote", "errs"],
                &[("vote", TRUTH), ("errs", errs)],
                150.0,
            ))
            .await
            .unwrap(),
        );
    }
    let equivocator = mesh
        .start_node(NodeOpts {
            program: Some(env!("CARGO_BIN_EXE_equivocating-voter").into()),
            ..voter(&["vote"], &[("vote", TRUTH)], 0.0)
        })
        .await
        .unwrap();
    mesh.wait_offers(&caller, "vote", 4).await.unwrap();
    mesh.wait_offers(&observer, "vote", 4).await.unwrap();

    // Three answers without the decision key never decide `null`.
    let d = quorum(
        &mesh,
        &caller,
        "errs",
        serde_json::json!({"payload": {"q": 1}, "n": 3, "key": "decision", "deadline_ms": 5000}),
    )
    .await;
    assert_eq!(d["status"], "needs_review", "{d:#}");
    assert_eq!(d["value"], serde_json::Value::Null);
    // Two non-votes of three already settle it (no value can reach 2), so the third voter
    // may be `late` rather than `failed`; none of the three is a vote.
    let failed = d["failed"].as_array().unwrap().len();
    let late = d["late"].as_array().map_or(0, |l| l.len());
    assert!(failed >= 2 && failed + late == 3, "{d:#}");
    assert!(d["votes"].as_array().unwrap().is_empty(), "{d:#}");
    assert!(
        d["failed"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no decision key"),
        "{d:#}"
    );

    let d = quorum(
        &mesh,
        &caller,
        "vote",
        serde_json::json!({"payload": {"q": "refund?"}, "n": 4, "f": 1, "key": "decision", "deadline_ms": 5000}),
    )
    .await;
    let caught = Instant::now();
    // The truth is still decided by the three honest voters; the equivocator's two votes are
    // a proof, and neither counts.
    assert_eq!(d["status"], "decided", "{d:#}");
    assert_eq!(d["value"], "approve");
    let proofs = d["equivocations"].as_array().unwrap();
    assert_eq!(proofs.len(), 1, "{d:#}");
    assert_eq!(proofs[0][0]["node_id"], equivocator.id.as_str());
    assert_ne!(proofs[0][0]["answer_hash"], proofs[0][1]["answer_hash"]);
    assert!(
        d["failed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["node_id"] == equivocator.id.as_str()
                && s["reason"].as_str().unwrap().contains("equivocation")),
        "{d:#}"
    );
    assert!(verify(&mesh, "equivocation.json", &d).is_ok());

    // Every node, including the observer that never called it, penalizes the equivocator.
    let mut others: Vec<&Node> = vec![&caller, &observer];
    others.extend(honest.iter());
    for n in &others {
        let eq = equivocator.id.clone();
        wait_until(
            "the equivocator's score falls on every node",
            Duration::from_secs(20),
            || async {
                let r = rate_on(&mesh, n, "vote", &eq).await;
                if r < 0.5 {
                    Ok(Some(r))
                } else {
                    Err(anyhow::anyhow!("{} still rates it {r}", n.id))
                }
            },
        )
        .await
        .unwrap();
        for h in &honest {
            if h.id != n.id {
                assert_eq!(rate_on(&mesh, n, "vote", &h.id).await, 1.0);
            }
        }
    }
    eprintln!(
        "equivocation evidence reached all {} other nodes in {:.1} s",
        others.len(),
        caught.elapsed().as_secs_f64()
    );

    // The next quorum that would need it says so before asking anyone.
    let (status, e) = mesh
        .post_json(
            &caller,
            "/v1/quorum/vote",
            serde_json::json!({"payload": {"q": "again"}, "n": 4, "f": 1, "key": "decision"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "{e:#}");
    assert_eq!(e["code"], "no_eligible_agent", "{e:#}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("3 eligible")
            && msg.contains(&equivocator.id)
            && msg.contains("quality floor"),
        "{e:#}"
    );

    // With n = 3 the honest voters decide; a voter not waited for is `late`, not `failed`.
    let d = quorum(
        &mesh,
        &caller,
        "vote",
        serde_json::json!({"payload": {"q": "refund?"}, "n": 3, "key": "decision", "deadline_ms": 5000}),
    )
    .await;
    assert_eq!(d["status"], "decided", "{d:#}");
    assert!(d["failed"].as_array().unwrap().is_empty(), "{d:#}");
    let voters: usize = d["votes"].as_array().unwrap().len() + d["late"].as_array().unwrap().len();
    assert_eq!(voters, 3, "{d:#}");
}
