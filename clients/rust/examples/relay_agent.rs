//! A relay agent: an axum server that offers capabilities and serves each by calling another
//! capability through the mesh. Its handlers sit inside [`MeshLayer`], so every onward call
//! carries the inbound chain, deadline and trace headers: a loop through it (A → relay →
//! relay …) is refused by the mesh with `loop_detected`, and a failed onward call is passed
//! back typed ([`MeshError::to_response`]).
//!
//! ```sh
//! # beside a node whose API is on 127.0.0.1:7600 (scripts/cluster.sh up 3 starts some):
//! cargo run -p agentmesh-client --example relay_agent -- \
//!     --route relay.summarize=text.summarize --route relay.loop=relay.loop
//! agentmesh call relay.summarize --data '{"text":"hi"}'   # answered via text.summarize
//! agentmesh call relay.loop --data '{}'                   # 508 loop_detected
//! ```
//!
//! Flags: `--api URL` (default `$AGENTMESH_API` or `http://127.0.0.1:7600`), `--listen ADDR`
//! (default `127.0.0.1:0`), `--name NAME` (default `relay`), `--route CAP=TARGET` (repeatable;
//! default `relay.echo=echo`), `--max-concurrency N`.

use agentmesh_client::{AgentRegistration, Capability, Client, MeshError, MeshLayer};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the relay serves: each capability it offers and the capability it calls for it.
pub struct Relay {
    /// The node's API.
    pub mesh: Client,
    /// The agent's name.
    pub name: String,
    /// `(capability offered, capability called onward)`.
    pub routes: Vec<(String, String)>,
    /// Calls served so far.
    pub served: AtomicU64,
}

impl Relay {
    /// A relay through `mesh` for `routes`.
    pub fn new(mesh: Client, name: &str, routes: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(Relay {
            mesh,
            name: name.to_string(),
            routes: routes
                .iter()
                .map(|(c, t)| (c.to_string(), t.to_string()))
                .collect(),
            served: AtomicU64::new(0),
        })
    }

    /// The registration that offers every route's capability at `handler`.
    pub fn registration(&self, handler: &str) -> AgentRegistration {
        let caps = self.routes.iter().map(|(c, t)| {
            Capability::new(c.clone()).description(format!("relays to {t} through the mesh"))
        });
        AgentRegistration::new(self.name.clone(), handler, caps)
    }
}

/// The relay's routes, `POST /{capability}` each, without the layer (the caller adds
/// [`MeshLayer`]; the test also serves them without it, to show what the layer prevents).
pub fn router(relay: Arc<Relay>) -> Router {
    let mut app = Router::new();
    for (cap, target) in &relay.routes {
        let state = (relay.clone(), cap.clone(), target.clone());
        app = app.route(&format!("/{cap}"), post(relay_call).with_state(state));
    }
    app
}

/// Serves one call by calling `target` with the same body through the mesh.
async fn relay_call(
    State((relay, cap, target)): State<(Arc<Relay>, String, String)>,
    body: Bytes,
) -> Response {
    relay.served.fetch_add(1, Ordering::Relaxed);
    let input: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return MeshError::bad_argument("body", format!("not JSON: {e}"))
                    .to_response()
                    .into_response()
            }
        }
    };
    // Inside MeshLayer, this call carries the inbound chain, deadline left and trace context.
    match relay.mesh.call(&target, &input).await {
        Ok(answer) => Json(serde_json::json!({
            "relayed_by": relay.name,
            "capability": cap,
            "target": target,
            "answer": answer,
        }))
        .into_response(),
        // Passes the mesh error back with its status and code, so `loop_detected` and
        // `deadline_exceeded` reach the original caller as they are.
        Err(e) => e.to_response().into_response(),
    }
}

struct Args {
    api: Option<String>,
    listen: String,
    name: String,
    routes: Vec<(String, String)>,
    max_concurrency: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        api: None,
        listen: "127.0.0.1:0".into(),
        name: "relay".into(),
        routes: Vec::new(),
        max_concurrency: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--api" => a.api = Some(value()?),
            "--listen" => a.listen = value()?,
            "--name" => a.name = value()?,
            "--route" => {
                let v = value()?;
                let (c, t) = v
                    .split_once('=')
                    .ok_or(format!("--route {v:?}: expected CAP=TARGET"))?;
                a.routes.push((c.to_string(), t.to_string()));
            }
            "--max-concurrency" => {
                let v = value()?;
                a.max_concurrency = Some(v.parse().map_err(|e| format!("{v:?}: {e}"))?);
            }
            "-h" | "--help" => return Err(HELP.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{HELP}")),
        }
    }
    if a.routes.is_empty() {
        a.routes.push(("relay.echo".into(), "echo".into()));
    }
    Ok(a)
}

const HELP: &str = "usage: relay_agent [--api URL] [--listen ADDR] [--name NAME] \
                    [--route CAP=TARGET]... [--max-concurrency N]";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let mesh = match &args.api {
        Some(api) => Client::new(api)?,
        None => Client::from_env()?,
    };
    let routes: Vec<(&str, &str)> = args
        .routes
        .iter()
        .map(|(c, t)| (c.as_str(), t.as_str()))
        .collect();
    let relay = Relay::new(mesh.clone(), &args.name, &routes);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let handler = format!("http://{}", listener.local_addr()?);
    let mut reg = relay.registration(&handler);
    reg.max_concurrency = args.max_concurrency;
    let app = router(relay).layer(MeshLayer::new());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let registered = mesh.register(&reg).await?;
    println!(
        "relay agent {} on {handler}, registered with node {} for {}",
        registered.agent,
        registered.node_id,
        registered.capabilities.join(", ")
    );
    server.await??;
    Ok(())
}
