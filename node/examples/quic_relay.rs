//! A second floor for `scripts/bench-dataplane`: two relays built from the node's own call-plane
//! pieces and nothing else.
//!
//! `wrk -> front (HTTP/1, hyper) -> QUIC (quinn, mutual TLS with libp2p certificates, the
//! node's transport settings) -> back -> agent (the node's pooled hyper client)`
//!
//! It does what the mesh's two hops must do to carry a call over QUIC with mutual TLS, and none
//! of what the mesh adds (routing, admission, breakers, retries, deadlines, metrics, audit,
//! traces). Its throughput and latency against the two HAProxy relays show what the transport
//! the mesh is specified on costs by itself on this machine; the mesh against it shows what the
//! mesh's own work costs. Both relays run like a node: one tokio current-thread runtime,
//! mimalloc.
//!
//! `quic_relay back --quic 127.0.0.1:Q --agent http://127.0.0.1:A`
//! `quic_relay front --http 127.0.0.1:P --to 127.0.0.1:Q`
//!
//! The stream carries `u16 path length, path, body` one way and `u16 status, body` back.
#![forbid(unsafe_code)]

use agentmesh_crypto::Keypair;
use agentmesh_node::net::call_endpoint::{CallEndpoint, CallStream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest request or answer body a relay carries.
const BODY_BYTES_MAX: usize = 1 << 20;
/// HTTP connections the front serves at once (wrk opens 64); more wait in the accept queue.
const FRONT_CONNECTIONS_MAX: usize = 1024;
/// The relays' fixed identities (a bench floor, not a mesh: no admission).
const FRONT_KEY: [u8; 32] = [1; 32];
const BACK_KEY: [u8; 32] = [2; 32];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> anyhow::Result<String> {
        let i = args.iter().position(|a| a == name);
        i.and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("missing {name}"))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("front") => rt.block_on(front(flag("--http")?.parse()?, flag("--to")?.parse()?)),
        Some("back") => rt.block_on(back(flag("--quic")?.parse()?, flag("--agent")?)),
        _ => anyhow::bail!(
            "usage: quic_relay front --http ADDR --to ADDR | back --quic ADDR --agent URL"
        ),
    }
}

/// The HTTP side: each request becomes one QUIC stream to `back`.
async fn front(listen: SocketAddr, back: SocketAddr) -> anyhow::Result<()> {
    let key = Keypair::from_secret(FRONT_KEY);
    let endpoint = Arc::new(CallEndpoint::bind(&key, listen.ip(), 0)?);
    let back_id = Keypair::from_secret(BACK_KEY).node_id();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(FRONT_CONNECTIONS_MAX));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let endpoint = endpoint.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let endpoint = endpoint.clone();
            async move {
                let resp = relay(&endpoint, back_id, back, req).await;
                Ok::<_, std::convert::Infallible>(resp.unwrap_or_else(|e| {
                    let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    r
                }))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = conn.await;
        });
    }
}

async fn relay(
    endpoint: &CallEndpoint,
    back_id: agentmesh_crypto::NodeId,
    back: SocketAddr,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("request body: {e}"))?
        .to_bytes();
    let path = parts.uri.path().as_bytes();
    let mut out = Vec::with_capacity(2 + path.len() + body.len());
    out.extend_from_slice(&u16::try_from(path.len())?.to_be_bytes());
    out.extend_from_slice(path);
    out.extend_from_slice(&body);
    let (mut w, mut r) = endpoint.open(back_id, back.ip(), back.port()).await?;
    w.write_all(&out).await?;
    w.finish()?;
    let answer = r.read_to_end(BODY_BYTES_MAX + 2).await?;
    anyhow::ensure!(answer.len() >= 2, "short answer");
    let status = StatusCode::from_u16(u16::from_be_bytes([answer[0], answer[1]]))?;
    let mut resp = Response::new(Full::new(Bytes::from(answer).slice(2..)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// The QUIC side: each stream becomes one POST to the agent.
async fn back(listen: SocketAddr, agent: String) -> anyhow::Result<()> {
    let key = Keypair::from_secret(BACK_KEY);
    let endpoint = Arc::new(CallEndpoint::bind(&key, listen.ip(), listen.port())?);
    let pool = agentmesh_node::agent::client::pool();
    let agent: Arc<str> = agent.into();
    endpoint
        .accept_loop(move |_from, _text, stream: CallStream| {
            let (pool, agent) = (pool.clone(), agent.clone());
            async move {
                let (mut w, mut r) = stream;
                let (status, body) = match forward(&pool, &agent, &mut r).await {
                    Ok(answer) => answer,
                    Err(e) => (502, Bytes::from(e.to_string())),
                };
                let mut out = Vec::with_capacity(2 + body.len());
                out.extend_from_slice(&status.to_be_bytes());
                out.extend_from_slice(&body);
                let _ = w.write_all(&out).await;
                let _ = w.finish();
            }
        })
        .await;
    Ok(())
}

async fn forward(
    pool: &agentmesh_node::agent::client::AgentPool,
    agent: &str,
    r: &mut quinn::RecvStream,
) -> anyhow::Result<(u16, Bytes)> {
    let frame = Bytes::from(
        r.read_to_end(BODY_BYTES_MAX + 2 + u16::MAX as usize)
            .await?,
    );
    anyhow::ensure!(frame.len() >= 2, "short request");
    let n = usize::from(u16::from_be_bytes([frame[0], frame[1]]));
    anyhow::ensure!(frame.len() >= 2 + n, "short path");
    let path = std::str::from_utf8(&frame[2..2 + n])?;
    let req = Request::post(format!("{agent}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(frame.slice(2 + n..)))?;
    let resp = pool.request(req).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("answer body: {e}"))?
        .to_bytes();
    Ok((status, body))
}
