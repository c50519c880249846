//! The demo agent: a small, fast HTTP agent for local clusters, tests and benchmarks.
//!
//! It answers `POST /{capability}` with a JSON echo (its name, the capability, the mesh
//! headers it received and the input), after a latency drawn from a log-normal distribution
//! fitted to the given p50 and p99, and fails a given fraction of calls with a 500 (and every
//! call while the `--fail-while-file` file exists, so a test can break and heal a live agent
//! from outside without restarting it, keeping its node and address); an input
//! `{"sleep_ms": N}` adds N ms, so a test can hold it busy. Every draw
//! comes from a counter-based generator seeded by `--seed`, so a run is reproducible and needs
//! no lock. `GET /healthz` answers `{"status":"ok"}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest request body the demo agent reads, in bytes.
pub const DEMO_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest latency the demo agent will sleep, in ms.
pub const DEMO_LATENCY_MS_MAX: f64 = 60_000.0;
/// The standard normal quantile at 0.99: `p99 = p50 · exp(Z99 · σ)`.
const Z99: f64 = 2.326_347_874;

/// How the demo agent behaves.
#[derive(Debug, Clone)]
pub struct DemoAgentOptions {
    /// Agent name, echoed in every answer.
    pub name: String,
    /// Median latency, in ms (0: answer at once).
    pub latency_ms_p50: f64,
    /// 99th percentile latency, in ms (≥ p50).
    pub latency_ms_p99: f64,
    /// Fraction of calls answered with 500, in `[0, 1]`.
    pub error_rate: f64,
    /// Seed of the latency and error draws.
    pub seed: u64,
    /// Capabilities answered; empty answers any, others get 404.
    pub capabilities: Vec<String>,
    /// Onward call made while answering: `(node API base URL, capability)`. The agent calls
    /// the capability through its node, copying `x-mesh-chain`, `x-mesh-deadline-ms` and
    /// `traceparent`, and nests the answer under `"forwarded"`.
    pub forward: Option<(String, String)>,
    /// Fixed answers by capability (`*`: any), instead of the echo.
    pub answers: std::collections::BTreeMap<String, serde_json::Value>,
    /// Status of injected failures (400 to 599).
    pub error_status: u16,
    /// Every call fails (with `error_status`) while this file exists.
    pub fail_while_file: Option<std::path::PathBuf>,
    /// Fraction of calls whose input has `"complexity": "high"` that fail (with
    /// `error_status`): a novice that cannot do hard tasks, in the routing benches.
    pub fail_complex_rate: f64,
}

/// Most `--answer` flags.
pub const DEMO_ANSWERS_MAX: usize = 64;

/// Parses `--answer CAP=JSON` flags.
pub fn parse_answers(
    flags: &[String],
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, String> {
    if flags.len() > DEMO_ANSWERS_MAX {
        return Err(format!("at most {DEMO_ANSWERS_MAX} --answer flags"));
    }
    flags
        .iter()
        .map(|f| {
            let (cap, json) = f
                .split_once('=')
                .ok_or_else(|| format!("--answer {f:?}: expected CAP=JSON"))?;
            let v =
                serde_json::from_str(json).map_err(|e| format!("--answer {cap}: not JSON: {e}"))?;
            Ok((cap.to_string(), v))
        })
        .collect()
}

impl DemoAgentOptions {
    /// Checks the options, naming the flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        let (p50, p99) = (self.latency_ms_p50, self.latency_ms_p99);
        if !(0.0..=DEMO_LATENCY_MS_MAX).contains(&p50)
            || !(0.0..=DEMO_LATENCY_MS_MAX).contains(&p99)
        {
            return Err(format!(
                "--latency-ms-p50/--latency-ms-p99 must be 0 to {DEMO_LATENCY_MS_MAX}"
            ));
        }
        if p99 < p50 || (p50 == 0.0 && p99 > 0.0) {
            return Err(
                "--latency-ms-p99 must be ≥ --latency-ms-p50, and p50 > 0 if p99 > 0".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err("--error-rate must be between 0 and 1".into());
        }
        if !(0.0..=1.0).contains(&self.fail_complex_rate) {
            return Err("--fail-complex-rate must be between 0 and 1".into());
        }
        if !(400..=599).contains(&self.error_status) {
            return Err("--error-status must be 400 to 599".into());
        }
        if self.name.is_empty() {
            return Err("--name must not be empty".into());
        }
        Ok(())
    }
}

struct Agent {
    opts: DemoAgentOptions,
    draws: AtomicU64,
    http: reqwest::Client,
}

/// Headers an agent copies from the request it serves into its onward call.
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-mesh-chain",
    "x-mesh-deadline-ms",
    "traceparent",
    "tracestate",
];

/// Largest onward answer read, in bytes.
pub const FORWARD_BODY_BYTES_MAX: usize = 1024 * 1024;

/// SplitMix64: a counter-based generator, so concurrent requests need no shared lock.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform draw in the open interval (0, 1).
fn unit(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

impl Agent {
    /// Three independent uniforms for one request.
    fn draw(&self) -> [f64; 3] {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let base = splitmix(self.opts.seed ^ splitmix(n));
        [
            unit(splitmix(base)),
            unit(splitmix(base ^ 1)),
            unit(splitmix(base ^ 2)),
        ]
    }

    /// Log-normal latency with the configured median and p99 (Box–Muller for the normal).
    fn latency_ms(&self, u1: f64, u2: f64) -> f64 {
        let (p50, p99) = (self.opts.latency_ms_p50, self.opts.latency_ms_p99);
        if p50 <= 0.0 {
            return 0.0;
        }
        let sigma = (p99 / p50).ln() / Z99;
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        (p50 * (sigma * z).exp()).min(DEMO_LATENCY_MS_MAX)
    }
}

/// The demo agent's router.
pub fn router(opts: DemoAgentOptions) -> Router {
    let agent = Arc::new(Agent {
        opts,
        draws: AtomicU64::new(0),
        http: reqwest::Client::new(),
    });
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/{capability}", post(answer))
        .layer(axum::extract::DefaultBodyLimit::max(DEMO_BODY_BYTES_MAX))
        .with_state(agent)
}

async fn answer(
    State(agent): State<Arc<Agent>>,
    Path(capability): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = &agent.opts.name;
    if !agent.opts.capabilities.is_empty() && !agent.opts.capabilities.contains(&capability) {
        let body = serde_json::json!({"error": "unknown capability", "agent": name});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let [u1, u2, u3] = agent.draw();
    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
    // An input may ask for extra time (`"sleep_ms": N`), so a test can hold the agent busy.
    let extra_ms = parsed
        .as_ref()
        .and_then(|v| v["sleep_ms"].as_f64())
        .unwrap_or(0.0)
        .clamp(0.0, DEMO_LATENCY_MS_MAX);
    let latency_ms = agent.latency_ms(u1, u2) + extra_ms;
    if latency_ms > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(latency_ms / 1000.0)).await;
    }
    let switched_off = agent
        .opts
        .fail_while_file
        .as_ref()
        .is_some_and(|p| p.exists());
    let too_hard = agent.opts.fail_complex_rate > 0.0
        && u3 < agent.opts.fail_complex_rate
        && parsed.as_ref().is_some_and(|v| v["complexity"] == "high");
    if u3 < agent.opts.error_rate || switched_off || too_hard {
        let body = serde_json::json!({"error": "injected failure", "agent": name});
        let status = StatusCode::from_u16(agent.opts.error_status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, Json(body)).into_response();
    }
    let fixed = agent.opts.answers.get(&capability);
    if let Some(v) = fixed.or_else(|| agent.opts.answers.get("*")) {
        return Json(v.clone()).into_response();
    }
    let received: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("x-mesh-") || k == "traceparent" || k == "tracestate"
        })
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), serde_json::Value::String(v))
        })
        .collect();
    let input =
        parsed.unwrap_or_else(|| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
    let mut out = serde_json::json!({
        "agent": name,
        "capability": capability,
        "received_headers": received,
        "latency_ms": (latency_ms * 1000.0).round() / 1000.0,
        "input": input,
    });
    if let Some((api, cap)) = &agent.opts.forward {
        match forward(&agent.http, api, cap, &headers, body).await {
            Ok(v) => out["forwarded"] = v,
            Err(resp) => return resp,
        }
    }
    Json(out).into_response()
}

/// Calls `cap` through the node at `api`, copying the chain, deadline and trace headers. A
/// failed onward call is passed back with its status, body and `x-mesh-error` code, so the
/// mesh error (`loop_detected`, `deadline_exceeded`) reaches the original caller typed.
async fn forward(
    http: &reqwest::Client,
    api: &str,
    cap: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<serde_json::Value, Response> {
    let mut rb = http
        .post(format!("{}/v1/call/{cap}", api.trim_end_matches('/')))
        .header("content-type", "application/json")
        .body(body);
    for h in FORWARDED_HEADERS {
        if let Some(v) = headers.get(*h) {
            rb = rb.header(*h, v.clone());
        }
    }
    let resp = rb.send().await.map_err(|e| {
        let body = serde_json::json!({"error": format!("onward call failed: {e}")});
        (StatusCode::BAD_GATEWAY, Json(body)).into_response()
    })?;
    let status = resp.status();
    let code = resp.headers().get(crate::agent::client::H_ERROR).cloned();
    let bytes = resp.bytes().await.unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(FORWARD_BODY_BYTES_MAX)];
    let v = serde_json::from_slice::<serde_json::Value>(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into()));
    if status.is_success() {
        return Ok(v);
    }
    let mut r = (status, Json(v)).into_response();
    if let Some(c) = code {
        r.headers_mut().insert(crate::agent::client::H_ERROR, c);
    }
    Err(r)
}

/// Serves the demo agent on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: DemoAgentOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(opts))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and its address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(p50: f64, p99: f64) -> Agent {
        Agent {
            opts: DemoAgentOptions {
                name: "t".into(),
                latency_ms_p50: p50,
                latency_ms_p99: p99,
                error_rate: 0.1,
                seed: 7,
                capabilities: vec![],
                forward: None,
                answers: Default::default(),
                error_status: 500,
                fail_while_file: None,
                fail_complex_rate: 0.0,
            },
            draws: AtomicU64::new(0),
            http: reqwest::Client::new(),
        }
    }

    #[test]
    fn latency_quantiles_match_flags() {
        let a = agent(10.0, 50.0);
        let mut xs: Vec<f64> = (0..20_000)
            .map(|_| {
                let [u1, u2, _] = a.draw();
                a.latency_ms(u1, u2)
            })
            .collect();
        xs.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let p50 = xs[xs.len() / 2];
        let p99 = xs[xs.len() * 99 / 100];
        assert!((9.0..11.0).contains(&p50), "p50 {p50}");
        assert!((43.0..58.0).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn error_rate_and_determinism() {
        let a = agent(0.0, 0.0);
        let errors = (0..10_000).filter(|_| a.draw()[2] < 0.1).count();
        assert!((850..1150).contains(&errors), "{errors}");
        let (b, c) = (agent(1.0, 2.0), agent(1.0, 2.0));
        assert_eq!(b.draw(), c.draw(), "same seed, same draws");
    }

    #[test]
    fn options_are_checked() {
        let mut o = agent(10.0, 5.0).opts;
        assert!(o.validate().is_err());
        o.latency_ms_p99 = 20.0;
        o.validate().unwrap();
        o.error_rate = 1.5;
        assert!(o.validate().is_err());
    }
}
