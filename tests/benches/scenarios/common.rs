//! Helpers shared by the scenarios: a call pool, latency statistics, metrics scraping and
//! re-registering an agent with a given proficiency and cost.

use agentmesh_tests::{served_by, Mesh, Node};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// An environment variable as a number, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One finished call of a pool.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the call (0..n).
    pub i: usize,
    /// 2xx with a served-by header.
    pub ok: bool,
    /// `x-mesh-served-by` (empty on failure).
    pub by: String,
    /// Client-visible latency, in ms.
    pub ms: f64,
}

/// `n` calls of `cap` through `caller` with `conc` in flight all the time (a pool, not waves);
/// `make(i)` gives call i's body and headers.
pub async fn pool<F>(
    mesh: &Mesh,
    caller: &Node,
    cap: &str,
    n: usize,
    conc: usize,
    make: F,
) -> Vec<Seen>
where
    F: Fn(usize) -> (String, Vec<(&'static str, String)>) + Sync,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = &make;
    let workers = (0..conc).map(|_| {
        let next = next.clone();
        async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (body, headers) = make(i);
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let t = Instant::now();
                let r = mesh.call(caller, cap, &body, &h).await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let (ok, by) = match r {
                    Ok(r) => {
                        let by = served_by(&r);
                        let ok = r.status().is_success() && !by.is_empty();
                        let _ = r.bytes().await;
                        (ok, by)
                    }
                    Err(_) => (false, String::new()),
                };
                out.push(Seen { i, ok, by, ms });
            }
            out
        }
    });
    futures::future::join_all(workers)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Rounds to one decimal.
pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Mean, p50 and p99 of the successful calls' latencies, and the failures.
pub fn stats(seen: &[Seen]) -> serde_json::Value {
    let mut ms: Vec<f64> = seen.iter().filter(|s| s.ok).map(|s| s.ms).collect();
    let failed = seen.len() - ms.len();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return serde_json::json!({"failed": failed});
    }
    let q = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
    serde_json::json!({
        "calls_ok": ms.len(),
        "failed": failed,
        "mean_ms": r1(ms.iter().sum::<f64>() / ms.len() as f64),
        "p50_ms": r1(q(0.5)),
        "p99_ms": r1(q(0.99)),
    })
}

/// The node's `/metrics` text.
pub async fn metrics(node: &Node) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{}/metrics", node.api))
        .await?
        .text()
        .await?)
}

/// Sum of the series of `family` (full name, e.g. `agentmesh_overloaded_total`) whose labels
/// contain every one of `having` (e.g. `capability="x"`).
pub fn metric_sum(text: &str, family: &str, having: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| having.iter().all(|h| l.contains(h)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Re-registers `node`'s agent offering `caps`, each with `proficiency` and `cost`.
pub async fn declare(
    node: &Node,
    caps: &[&str],
    proficiency: &str,
    cost: f64,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let v: serde_json::Value = http
        .get(format!("{}/v1/agent", node.api))
        .send()
        .await?
        .json()
        .await?;
    let mut reg = v["registration"].clone();
    anyhow::ensure!(reg.is_object(), "no registration in {v}");
    reg["capabilities"] = caps
        .iter()
        .map(|c| serde_json::json!({"name": c, "proficiency": proficiency, "cost": cost}))
        .collect();
    let r = http
        .put(format!("{}/v1/agent", node.api))
        .json(&reg)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "PUT /v1/agent: {}",
        r.text().await?
    );
    Ok(())
}

/// The `/v1/routes/{cap}` row of `target` as `caller` sees it.
pub async fn route_row(
    mesh: &Mesh,
    caller: &Node,
    cap: &str,
    target: &Node,
) -> Option<serde_json::Value> {
    let (_, v) = mesh.get(caller, &format!("/v1/routes/{cap}")).await.ok()?;
    v["candidates"]
        .as_array()?
        .iter()
        .find(|r| r["node_id"] == target.id.as_str())
        .cloned()
}
