//! In-process mesh tests: real QUIC on loopback, real HTTP agents, two or three nodes.
//! Every wait is on a condition with a timeout.

use agentmesh_crypto::{AdmissionCert, Keypair, NodeId, SignedCert};
use agentmesh_gossip::record::{AttrValue, Proficiency};
use agentmesh_node::contract::{AgentRegistration, CallRequest, CapabilitySpec, ErrorCode};
use agentmesh_node::runtime::{AdmissionMode, MeshHandle, RuntimeConfig};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tiny agent: `POST /{cap}` echoes the body and the mesh headers; `boom` answers 500.
async fn start_agent() -> String {
    async fn handle(
        Path(cap): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        if cap == "boom" {
            return (StatusCode::INTERNAL_SERVER_ERROR, "agent exploded".into());
        }
        if cap == "slow" {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let out = serde_json::json!({
            "cap": cap,
            "body": body,
            "caller": h("x-mesh-caller-node"),
            "roles": h("x-mesh-caller-roles"),
            "deadline": h("x-mesh-deadline-ms"),
            "traceparent": h("traceparent"),
        });
        (StatusCode::OK, out.to_string())
    }
    let app = axum::Router::new().route("/{cap}", post(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

fn registration(name: &str, handler: &str, caps: &[&str]) -> AgentRegistration {
    AgentRegistration {
        name: name.into(),
        handler: handler.into(),
        capabilities: caps
            .iter()
            .map(|c| CapabilitySpec {
                name: (*c).into(),
                proficiency: Proficiency::Expert,
                attributes: BTreeMap::from([(
                    "region".to_string(),
                    AttrValue::Many(vec!["eu".into(), "us".into()]),
                )]),
                cost: 1.0,
                ..Default::default()
            })
            .collect(),
        max_concurrency: 8,
    }
}

fn key(b: u8) -> Keypair {
    Keypair::from_secret([b; 32])
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn cert(root: &Keypair, node: &Keypair, mesh: &str) -> SignedCert {
    AdmissionCert {
        mesh_id: mesh.into(),
        node_id: node.node_id(),
        roles: vec!["worker".into()],
        not_before: now_s() - 60,
        not_after: now_s() + 3600,
    }
    .sign(root)
    .unwrap()
}

fn req(cap: &str, body: &str) -> CallRequest {
    CallRequest {
        capability: cap.into(),
        body: bytes::Bytes::from(body.to_string()),
        content_type: Some("application/json".into()),
        deadline_ms: Some(5_000),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        ..Default::default()
    }
}

async fn body_of(resp: agentmesh_node::contract::CallResponse) -> String {
    let mut body = resp.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

fn sees(h: &MeshHandle, other: NodeId, state: &str) -> bool {
    let id = other.to_string();
    h.members()
        .iter()
        .any(|m| m.node_id == id && m.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mesh_routes_calls_end_to_end() {
    init_tracing();
    let handler = start_agent().await;
    let mut ca = RuntimeConfig::new(key(1));
    ca.agent = Some(registration("alpha", &handler, &["echo", "boom"]));
    let a = MeshHandle::start(ca).await.unwrap();
    assert!(a.is_ready(), "a seed-less node is ready at once");

    let mut cb = RuntimeConfig::new(key(2));
    cb.seeds = a.listen_addrs();
    let b = MeshHandle::start(cb).await.unwrap();

    wait_for("b to join", || b.is_ready()).await;
    wait_for("b to see echo", || b.capabilities().contains_key("echo")).await;
    wait_for("a to see b", || sees(&a, b.node_id(), "alive")).await;

    // Routed call b -> a over QUIC.
    let resp = b.call(req("echo", r#"{"x":1}"#)).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.served_by, format!("{}/alpha", a.node_id()));
    assert_eq!(resp.attempts, 1);
    let body = body_of(resp).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["body"], r#"{"x":1}"#);
    assert_eq!(v["caller"], b.node_id().to_string());
    assert_eq!(
        v["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let deadline: u64 = v["deadline"].as_str().unwrap().parse().unwrap();
    assert!(
        deadline > 0 && deadline < 5_000,
        "deadline passed on minus a reserve: {deadline}"
    );

    // The local agent is called directly.
    let resp = a.call(req("echo", "local")).await.unwrap();
    assert_eq!(resp.served_by, format!("{}/alpha", a.node_id()));
    assert!(body_of(resp).await.contains("local"));

    // Routes explain the ranking.
    let r = b.routes(&req("echo", "")).unwrap();
    assert_eq!(r.candidates.len(), 1);
    assert_eq!(r.candidates[0].rank, Some(1));
    assert_eq!(r.candidates[0].agent, "alpha");

    // Typed errors.
    let e = b.call(req("missing", "")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NoCapability);
    let mut q = req("echo", "");
    q.attrs.insert("region".into(), "mars".into());
    assert_eq!(
        b.call(q.clone()).await.unwrap_err().code,
        ErrorCode::NoEligibleAgent
    );
    let r = b.routes(&q).unwrap();
    assert_eq!(r.candidates[0].rank, None);
    assert!(
        r.candidates[0].reason.contains("region"),
        "{}",
        r.candidates[0].reason
    );
    let mut q = req("echo", "");
    q.deadline_ms = Some(1);
    assert_eq!(
        b.call(q).await.unwrap_err().code,
        ErrorCode::DeadlineExceeded
    );
    let e = b.call(req("boom", "")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AgentError);
    assert_eq!(e.status, Some(500));
    assert_eq!(e.body.as_deref(), Some("agent exploded"));

    // Registering an agent on b makes it routable from a.
    b.register_agent(registration("beta", &handler, &["echo2"]))
        .await
        .unwrap();
    wait_for("a to see echo2", || a.capabilities().contains_key("echo2")).await;
    let resp = a.call(req("echo2", "hi")).await.unwrap();
    assert_eq!(resp.served_by, format!("{}/beta", b.node_id()));
    let bad = AgentRegistration {
        handler: "not a url".into(),
        ..registration("x", &handler, &["y"])
    };
    let e = b.register_agent(bad).await.unwrap_err();
    assert_eq!(e.field.as_deref(), Some("handler"));

    // Graceful leave is seen without waiting for failure detection.
    b.shutdown(Duration::from_secs(2)).await;
    wait_for("a to see b leave", || sees(&a, b.node_id(), "left")).await;
    assert!(!a.capabilities().contains_key("echo2"));
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforced_admission_admits_members_and_rejects_strangers() {
    init_tracing();
    let handler = start_agent().await;
    let root = key(10);
    let mesh = AdmissionMode::Enforced {
        root: root.node_id(),
        mesh_id: "test-mesh".into(),
    };
    let (ka, kb, kc) = (key(11), key(12), key(13));

    let mut ca = RuntimeConfig::new(ka.clone());
    ca.admission = mesh.clone();
    ca.cert = Some(cert(&root, &ka, "test-mesh"));
    ca.agent = Some(registration("alpha", &handler, &["echo"]));
    let a = MeshHandle::start(ca).await.unwrap();

    let mut cb = RuntimeConfig::new(kb.clone());
    cb.admission = mesh.clone();
    cb.cert = Some(cert(&root, &kb, "test-mesh"));
    cb.seeds = a.listen_addrs();
    let b = MeshHandle::start(cb).await.unwrap();
    wait_for("b to see echo", || b.capabilities().contains_key("echo")).await;
    let resp = b.call(req("echo", "x")).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body_of(resp).await).unwrap();
    assert_eq!(
        v["roles"], "worker",
        "roles come from the verified certificate"
    );

    // C holds a certificate from another root: A refuses it and tells it why.
    let other_root = key(20);
    let mut cc = RuntimeConfig::new(kc.clone());
    cc.admission = mesh.clone();
    cc.cert = Some(cert(&other_root, &kc, "test-mesh"));
    cc.seeds = a.listen_addrs();
    let c = MeshHandle::start(cc).await.unwrap();
    wait_for("c to learn it was rejected", || {
        c.admission_status().starts_with("admission rejected by")
    })
    .await;
    let report = c.admission_report();
    let rej = report.last_rejected_by.unwrap();
    assert_eq!(rej.peer, a.node_id().to_string());
    assert!(rej.reason.contains("expected root"), "{}", rej.reason);
    wait_for("a to count the refusal", || a.admission_rejections() >= 1).await;
    assert!(!c.is_ready());
    assert!(!sees(&a, c.node_id(), "alive"));
    assert!(!c.capabilities().contains_key("echo"));

    c.shutdown(Duration::from_millis(100)).await;
    b.shutdown(Duration::from_secs(1)).await;
    a.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_enforces_its_limit_and_the_deadline() {
    init_tracing();
    let handler = start_agent().await;
    let mut ca = RuntimeConfig::new(key(31));
    let mut reg = registration("slowpoke", &handler, &["slow"]);
    reg.max_concurrency = 1;
    ca.agent = Some(reg);
    let a = MeshHandle::start(ca).await.unwrap();
    let mut cb = RuntimeConfig::new(key(32));
    cb.seeds = a.listen_addrs();
    let b = MeshHandle::start(cb).await.unwrap();
    wait_for("b to see slow", || b.capabilities().contains_key("slow")).await;

    // The deadline is honoured: the callee gives up and the caller sees deadline_exceeded.
    let mut q = req("slow", "");
    q.deadline_ms = Some(200);
    let started = std::time::Instant::now();
    let e = b.call(q).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(700));

    // Wait until the callee released the slot of the cancelled call, then fill it.
    wait_for("the cancelled call to release its slot", || {
        a.local_in_flight() == 0
    })
    .await;
    let first = tokio::spawn({
        let b = b.clone();
        async move { b.call(req("slow", "1")).await.map(|r| r.status) }
    });
    wait_for("a to have one call in flight", || a.local_in_flight() > 0).await;
    let e = b.call(req("slow", "2")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}");
    assert_eq!(first.await.unwrap().unwrap(), 200);

    b.shutdown(Duration::from_secs(1)).await;
    a.shutdown(Duration::from_secs(1)).await;
}
