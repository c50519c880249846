//! Observability end to end on real processes: Prometheus scraping `/metrics` of a 3-node
//! cluster, the gossiped mesh view (`/v1/mesh/*`, `agentmesh top`), the dashboard in headless
//! Chromium driven over the Chrome DevTools protocol, and OTLP traces across an A→B→C chain
//! received by a real OTLP receiver built from the official protobuf definitions.
//!
//! Needs Debian's `prometheus` and `chromium` (`scripts/install-observability`, run by `.ci/run`).

use agentmesh_tests::{free_tcp_port, run_cli, wait_until, Mesh, Node, NodeOpts, Procs};
use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(30);
/// Calls agent-1 makes to `echo.b` (served by agent-2) and agent-2 makes to `echo.a`.
const CALLS_1_TO_2: u64 = 6;
const CALLS_2_TO_1: u64 = 4;

/// Three nodes: agent-1 offers `echo.a`, agent-2 `echo.b`, agent-3 `echo.c` (nobody calls it).
/// Waits until every node sees every capability, then makes the calls.
async fn traffic_mesh(extra_toml: &[&str]) -> Result<Mesh> {
    let mut mesh = Mesh::new()?;
    for (i, cap) in ["echo.a", "echo.b", "echo.c"].iter().enumerate() {
        let mut o = NodeOpts::caps(&[cap]);
        o.extra_toml = extra_toml.get(i).unwrap_or(&"").to_string();
        mesh.start_node(o).await?;
    }
    wait_converged(&mesh, &["echo.a", "echo.b", "echo.c"]).await?;
    let (n1, n2) = (mesh.nodes[0].clone(), mesh.nodes[1].clone());
    for (node, cap, n, agent) in [
        (&n1, "echo.b", CALLS_1_TO_2, "agent-2"),
        (&n2, "echo.a", CALLS_2_TO_1, "agent-1"),
    ] {
        for _ in 0..n {
            let r = mesh.call(node, cap, "{\"q\":1}", &[]).await?;
            let served = agentmesh_tests::served_by(&r);
            if r.status() != 200 || !served.ends_with(agent) {
                bail!("call {cap}: {} served by {served}", r.status());
            }
            r.bytes().await?;
        }
    }
    Ok(mesh)
}

async fn wait_converged(mesh: &Mesh, caps: &[&str]) -> Result<()> {
    for node in &mesh.nodes {
        wait_until("every capability visible", CONVERGE, || async {
            let (_, v) = mesh.get(node, "/v1/capabilities").await?;
            Ok(caps
                .iter()
                .all(|c| {
                    v["capabilities"][*c]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                })
                .then_some(()))
        })
        .await?;
    }
    Ok(())
}

fn api_hostport(node: &Node) -> String {
    node.api.trim_start_matches("http://").to_string()
}

/// `(source, target) -> calls` summed over capabilities, from `GET /v1/mesh/matrix`.
fn matrix_counts(v: &serde_json::Value) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for p in v["pairs"].as_array().into_iter().flatten() {
        let k = (
            p["source"].as_str().unwrap_or("").to_string(),
            p["target"].as_str().unwrap_or("").to_string(),
        );
        *out.entry(k).or_default() += p["count"].as_u64().unwrap_or(0);
    }
    out
}

fn expected_matrix() -> BTreeMap<(String, String), u64> {
    BTreeMap::from([
        (("agent-1".into(), "agent-2".into()), CALLS_1_TO_2),
        (("agent-2".into(), "agent-1".into()), CALLS_2_TO_1),
    ])
}

/// Where screenshots and other CI artifacts go.
fn artifact_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("AGENTMESH_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => agentmesh_tests::manifest_dir().join("../target/ci-artifacts"),
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Prometheus

async fn prom_query(http: &reqwest::Client, base: &str, q: &str) -> Result<Option<f64>> {
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/query"))?;
    url.query_pairs_mut().append_pair("query", q);
    let v: serde_json::Value = http.get(url).send().await?.json().await?;
    if v["status"] != "success" {
        bail!("query {q}: {v}");
    }
    let Some(first) = v["data"]["result"].as_array().and_then(|r| r.first()) else {
        return Ok(None);
    };
    Ok(first["value"][1].as_str().and_then(|s| s.parse().ok()))
}

/// A real Prometheus scrapes the three nodes; the call counters it stored equal the calls
/// made, per source agent and in total. The mesh view and `agentmesh top` on the node that
/// made no call show the same matrix.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_call_counters_and_mesh_view_matches() -> Result<()> {
    let prom_bin =
        which("prometheus").context("prometheus not installed (scripts/install-observability)")?;
    let mesh = traffic_mesh(&[]).await?;
    let dir = mesh.path().join("prometheus");
    std::fs::create_dir_all(&dir)?;
    let targets: Vec<String> = mesh
        .nodes
        .iter()
        .map(|n| format!("'{}'", api_hostport(n)))
        .collect();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
         - job_name: agentmesh\n    metrics_path: /metrics\n    static_configs:\n      \
         - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), cfg)?;
    let port = free_tcp_port()?;
    let mut procs = Procs::default();
    let log = std::fs::File::create(dir.join("prometheus.log"))?;
    let child = Command::new(prom_bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    procs.push("prometheus", child);
    let base = format!("http://127.0.0.1:{port}");
    let http = &mesh.http;
    let total = (CALLS_1_TO_2 + CALLS_2_TO_1) as f64;
    let seen = wait_until("Prometheus to scrape every call", CONVERGE, || async {
        let v = prom_query(http, &base, "sum(agentmesh_calls_total)").await?;
        let up = prom_query(http, &base, "sum(up{job=\"agentmesh\"})").await?;
        Ok((v == Some(total) && up == Some(3.0)).then_some(v))
    })
    .await
    .with_context(|| std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default())?;
    assert_eq!(seen, Some(total));
    let by = |q: &'static str| prom_query(http, &base, q);
    assert_eq!(
        by("sum(agentmesh_calls_total{source_agent=\"agent-1\",target_agent=\"agent-2\",capability=\"echo.b\",outcome=\"ok\"})").await?,
        Some(CALLS_1_TO_2 as f64)
    );
    assert_eq!(
        by("sum(agentmesh_calls_total{source_agent=\"agent-2\",target_agent=\"agent-1\",outcome=\"ok\"})").await?,
        Some(CALLS_2_TO_1 as f64)
    );
    assert_eq!(
        by("sum(agentmesh_call_duration_seconds_count)").await?,
        Some(total)
    );
    assert_eq!(
        by("sum(agentmesh_inbound_calls_total)").await?,
        Some(total),
        "every call was served by another node"
    );
    assert_eq!(by("count(agentmesh_build_info)").await?, Some(3.0));
    assert_eq!(
        by("min(agentmesh_gossip_members{state=\"alive\"})").await?,
        Some(3.0)
    );
    assert!(
        by("min(agentmesh_gossip_bytes_total{direction=\"in\"})")
            .await?
            .unwrap_or(0.0)
            > 0.0
    );

    // The mesh view, asked of node 3 (which made no call), from gossiped summaries.
    let n3 = mesh.nodes[2].clone();
    let matrix = wait_until("node 3's matrix to show every call", CONVERGE, || async {
        let (_, v) = mesh.get(&n3, "/v1/mesh/matrix").await?;
        Ok((matrix_counts(&v) == expected_matrix()).then_some(v))
    })
    .await?;
    assert_eq!(matrix["agents"].as_array().map(Vec::len), Some(3));
    let (status, s) = mesh.get(&n3, "/v1/mesh/summary").await?;
    assert_eq!(status, 200);
    assert_eq!(s["calls_total"].as_u64(), Some(CALLS_1_TO_2 + CALLS_2_TO_1));
    assert_eq!(s["most_called"][0]["agent"], "agent-2", "{s}");
    assert_eq!(s["most_called"][0]["calls_in"].as_u64(), Some(CALLS_1_TO_2));
    let idle: Vec<&str> = s["idle_agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["agent"].as_str())
        .collect();
    assert_eq!(idle, vec!["agent-3"], "{s}");
    assert!(s["slowest_pairs"].as_array().is_some_and(|p| p.len() == 2));

    let top = run_cli(&["top", "--once", "--api", &n3.api])?;
    assert!(top.contains("agent-1") && top.contains("agent-2"), "{top}");
    assert!(top.contains("no incoming traffic: agent-3"), "{top}");
    assert!(top.lines().all(|l| l.chars().count() <= 100), "{top}");
    println!("{top}");
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Dashboard in headless Chromium over the Chrome DevTools protocol

/// A minimal CDP client: one page target over a websocket.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    async fn launch(procs: &mut Procs, dir: &Path) -> Result<Cdp> {
        let bin = which("chromium")
            .or_else(|| which("chromium-browser"))
            .context("chromium not installed (scripts/install-observability)")?;
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile)?;
        let log = std::fs::File::create(dir.join("chromium.log"))?;
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        procs.push("chromium", child);
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = wait_until("chromium's DevTools port", CONVERGE, || async {
            let s = std::fs::read_to_string(&port_file).unwrap_or_default();
            Ok(s.lines().next().and_then(|l| l.trim().parse().ok()))
        })
        .await?;
        let http = reqwest::Client::new();
        let ws_url = wait_until("a page target", CONVERGE, || async {
            let list: serde_json::Value = http
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await?
                .json()
                .await?;
            Ok(list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            }))
        })
        .await?;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await?;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends a command and waits for its result (events in between are skipped).
    async fn send(&mut self, method: &str, params: serde_json::Value) -> Result<serde_json::Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                msg.to_string().into(),
            ))
            .await?;
        let wait = async {
            while let Some(m) = self.ws.next().await {
                let m = m?;
                let Ok(text) = m.to_text() else { continue };
                let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                if v["id"].as_u64() == Some(id) {
                    if v.get("error").is_some() {
                        bail!("{method}: {}", v["error"]);
                    }
                    return Ok(v["result"].clone());
                }
            }
            bail!("devtools connection closed")
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .with_context(|| format!("{method} timed out"))?
    }

    /// Evaluates `expr` in the page; it must return a JSON string.
    async fn eval_json(&mut self, expr: &str) -> Result<serde_json::Value> {
        let r = self
            .send(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expr, "returnByValue": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("page script failed: {e}");
        }
        let s = r["result"]["value"].as_str().unwrap_or("null");
        Ok(serde_json::from_str(s)?)
    }
}

const PAGE_STATE_JS: &str = r#"JSON.stringify({
  refreshed: Number(document.body.dataset.refreshed || 0),
  nodes: Array.from(document.querySelectorAll('#graph .gnode')).map(g => g.dataset.agent).sort(),
  edges: Array.from(document.querySelectorAll('#graph .gedge')).map(e => [e.dataset.source, e.dataset.target, Number(e.dataset.count)]).sort(),
  cells: Array.from(document.querySelectorAll('#matrix td.cell')).map(c => [c.dataset.source, c.dataset.target, Number(c.dataset.count), c.textContent]).sort(),
  members: Array.from(document.querySelectorAll('#members tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent)),
  idle: document.getElementById('idle').textContent,
  error: document.getElementById('error').textContent
})"#;

/// `/ui` on a live cluster with traffic, in headless Chromium: the graph has one node per
/// agent and one edge per calling pair with the right counts, the matrix has the right
/// numbers, the agent filter narrows both, and a screenshot is saved as a CI artifact.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_shows_graph_and_matrix_in_headless_chromium() -> Result<()> {
    let mesh = traffic_mesh(&[]).await?;
    let n3 = mesh.nodes[2].clone();
    // The page reads gossiped summaries: wait until node 3 has them all.
    wait_until("node 3's matrix", CONVERGE, || async {
        let (_, v) = mesh.get(&n3, "/v1/mesh/matrix").await?;
        Ok((matrix_counts(&v) == expected_matrix()).then_some(()))
    })
    .await?;
    let mut procs = Procs::default();
    let mut cdp = Cdp::launch(&mut procs, mesh.path()).await?;
    cdp.send("Page.enable", serde_json::json!({})).await?;
    cdp.send(
        "Page.navigate",
        serde_json::json!({ "url": format!("{}/ui", n3.api) }),
    )
    .await?;
    let want_edges = serde_json::json!([
        ["agent-1", "agent-2", CALLS_1_TO_2],
        ["agent-2", "agent-1", CALLS_2_TO_1]
    ]);
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        last = cdp.eval_json(PAGE_STATE_JS).await.unwrap_or_default();
        if last["edges"] == want_edges {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["edges"], want_edges, "{last}");
    assert_eq!(
        last["nodes"],
        serde_json::json!(["agent-1", "agent-2", "agent-3"]),
        "{last}"
    );
    let cells = last["cells"].as_array().context("cells")?;
    assert_eq!(cells.len(), 2, "{last}");
    assert_eq!(cells[0][0], "agent-1");
    assert_eq!(cells[0][1], "agent-2");
    assert_eq!(cells[0][2], CALLS_1_TO_2);
    assert!(
        cells[0][3]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{CALLS_1_TO_2} · 0.0 %")),
        "{last}"
    );
    assert_eq!(cells[1][2], CALLS_2_TO_1);
    assert_eq!(last["members"].as_array().map(Vec::len), Some(3), "{last}");
    assert!(
        last["idle"].as_str().unwrap_or("").contains("agent-3"),
        "{last}"
    );
    assert_eq!(last["error"], "", "{last}");

    let shot = cdp
        .send(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        )
        .await?;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().context("screenshot data")?)?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = artifact_dir()?.join("dashboard.png");
    std::fs::write(&path, &png)?;
    println!(
        "dashboard screenshot: {} ({} bytes)",
        path.display(),
        png.len()
    );

    // Filter: everything involving agent-3 is just agent-3, alone.
    cdp.eval_json(
        "(() => { const s = document.getElementById('filter'); s.value = 'agent-3'; \
         s.dispatchEvent(new Event('change')); return 'null'; })()",
    )
    .await?;
    let mut filtered = serde_json::Value::Null;
    for _ in 0..50 {
        filtered = cdp.eval_json(PAGE_STATE_JS).await?;
        if filtered["nodes"] == serde_json::json!(["agent-3"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        filtered["nodes"],
        serde_json::json!(["agent-3"]),
        "{filtered}"
    );
    assert_eq!(filtered["edges"], serde_json::json!([]), "{filtered}");
    Ok(())
}

/// Agents in the large dashboard test: more than 20, one node each (a node has one agent).
const MANY_AGENTS: usize = 21;

const LARGE_STATE_JS: &str = r#"(() => {
  const labels = Array.from(document.querySelectorAll('#graph .gnode text.glabel')).map(t => {
    const r = t.getBoundingClientRect();
    return { agent: t.parentNode.dataset.agent, text: t.textContent, l: r.left, t: r.top, r: r.right, b: r.bottom };
  });
  const overlaps = [];
  for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
    const a = labels[i], b = labels[j];
    if (a.l < b.r && b.l < a.r && a.t < b.b && b.t < a.b) overlaps.push([a.agent, b.agent]);
  }
  const rows = (id) => Array.from(document.querySelectorAll('#' + id + ' tbody tr[data-code]')).map(r => Array.from(r.cells).map(c => c.textContent));
  return JSON.stringify({
    labels: labels.length,
    minHeight: Math.min(...labels.map(l => l.b - l.t)),
    overlaps,
    selfEdges: Array.from(document.querySelectorAll('#graph .gedge.self')).map(e => [e.dataset.source, e.dataset.target, Number(e.dataset.count), e.querySelector('path') ? 1 : 0]),
    failed: rows('failed'),
    refused: rows('refused'),
    error: document.getElementById('error').textContent
  });
})()"#;

/// The dashboard at more than 20 agents, in headless Chromium: the self-calls of agent-1 (it
/// calls its own capability) are a loop edge; no two agent labels overlap on screen; a call
/// that failed (agent-2 answers every call with a 500) and a call refused by routing (an
/// attribute no agent has: `no_eligible_agent`) are listed with their codes and messages.
/// Everything comes from real nodes: 21 nodes, each with its demo agent.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_draws_self_calls_readable_labels_and_failures_at_21_agents() -> Result<()> {
    let started = std::time::Instant::now();
    let mut mesh = Mesh::new()?;
    for i in 1..=MANY_AGENTS {
        let mut o = NodeOpts::caps(&[&format!("cap.{i}")]);
        if i == 2 {
            o.error_rate = 1.0;
        }
        mesh.start_node(o).await?;
    }
    let n1 = mesh.nodes[0].clone();
    wait_until(
        "node 1 to see every agent",
        Duration::from_secs(90),
        || async {
            let (_, v) = mesh.get(&n1, "/v1/mesh/matrix").await?;
            Ok((v["agents"].as_array().map(Vec::len) == Some(MANY_AGENTS)).then_some(()))
        },
    )
    .await?;
    mesh.wait_offers(&n1, "cap.2", 1).await?;
    mesh.wait_offers(&n1, "cap.3", 1).await?;
    println!(
        "{MANY_AGENTS} nodes started and converged in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    const SELF_CALLS: u64 = 3;
    for _ in 0..SELF_CALLS {
        let r = mesh.call(&n1, "cap.1", "{\"q\":1}", &[]).await?;
        assert_eq!(r.status(), 200);
        assert!(agentmesh_tests::served_by(&r).ends_with("agent-1"));
    }
    let r = mesh.call(&n1, "cap.2", "{\"q\":1}", &[]).await?;
    let failed_status = r.status().as_u16();
    let failed_body = r.text().await?;
    assert!(failed_status >= 500, "{failed_status} {failed_body}");
    let r = mesh
        .call(&n1, "cap.3", "{\"q\":1}", &[("x-mesh-attr-region", "mars")])
        .await?;
    assert_eq!(r.status(), 404);
    let refusal: serde_json::Value = r.json().await?;
    assert_eq!(refusal["code"], "no_eligible_agent", "{refusal}");
    // The same records behind the page, in the summary JSON.
    let (_, s) = mesh.get(&n1, "/v1/mesh/summary").await?;
    assert_eq!(s["recent_refusals"][0]["code"], "no_eligible_agent", "{s}");
    assert_eq!(s["recent_refusals"][0]["capability"], "cap.3", "{s}");
    assert_eq!(s["recent_failures"][0]["capability"], "cap.2", "{s}");
    assert_eq!(s["recent_failures"][0]["caller"], "agent-1", "{s}");
    assert_eq!(s["recent_failures"][0]["target"], "agent-2", "{s}");

    let mut procs = Procs::default();
    let mut cdp = Cdp::launch(&mut procs, mesh.path()).await?;
    cdp.send("Page.enable", serde_json::json!({})).await?;
    cdp.send(
        "Page.navigate",
        serde_json::json!({ "url": format!("{}/ui", n1.api) }),
    )
    .await?;
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        last = cdp.eval_json(LARGE_STATE_JS).await.unwrap_or_default();
        if last["labels"] == MANY_AGENTS
            && last["selfEdges"].as_array().is_some_and(|e| !e.is_empty())
            && last["failed"].as_array().is_some_and(|e| !e.is_empty())
            && last["refused"].as_array().is_some_and(|e| !e.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["error"], "", "{last}");
    assert_eq!(last["labels"], MANY_AGENTS, "{last}");
    assert_eq!(last["overlaps"], serde_json::json!([]), "{last}");
    assert!(
        last["minHeight"].as_f64().unwrap_or(0.0) >= 9.0,
        "readable: {last}"
    );
    assert_eq!(
        last["selfEdges"],
        serde_json::json!([["agent-1", "agent-1", SELF_CALLS, 1]]),
        "{last}"
    );
    let failed = last["failed"].as_array().context("failed rows")?;
    let row = failed
        .iter()
        .find(|r| r[1] == "cap.2")
        .with_context(|| format!("no failed call to cap.2: {last}"))?;
    assert_eq!(row[0], "agent-1", "{last}");
    assert_eq!(row[2], "agent-2", "{last}");
    assert!(!row[3].as_str().unwrap_or("").is_empty(), "{last}");
    assert!(
        !row[4].as_str().unwrap_or("").is_empty(),
        "a message: {last}"
    );
    let refused = last["refused"].as_array().context("refused rows")?;
    let row = refused
        .iter()
        .find(|r| r[1] == "cap.3")
        .with_context(|| format!("no refusal of cap.3: {last}"))?;
    assert_eq!(row[0], "agent-1", "{last}");
    assert_eq!(row[2], "no_eligible_agent", "{last}");
    assert!(
        row[3].as_str().unwrap_or("").contains("none matches"),
        "routing's reason: {last}"
    );

    let shot = cdp
        .send(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
        )
        .await?;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().context("screenshot data")?)?;
    let path = artifact_dir()?.join("dashboard-21-agents.png");
    std::fs::write(&path, &png)?;
    println!(
        "dashboard screenshot: {} ({} bytes); whole test {:.1} s",
        path.display(),
        png.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OTLP traces

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

/// A received span, flattened.
#[derive(Debug, Clone)]
struct GotSpan {
    via: &'static str,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    attrs: HashMap<String, String>,
    /// The attributes of the resource the span was exported under.
    resource: HashMap<String, String>,
}

fn flatten(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<GotSpan>>>);

impl Sink {
    fn take(&self, via: &'static str, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let resource = flatten(
                rs.resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]),
            );
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let attrs = flatten(&s.attributes);
                    out.push(GotSpan {
                        via,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        attrs,
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take("grpc", req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the OTLP receiver: gRPC (tonic) and HTTP/protobuf (`POST /v1/traces`), both
/// decoding with the official `opentelemetry-proto` types. Returns the two base URLs.
async fn start_receiver(sink: Sink) -> Result<(String, String)> {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc_url = format!("http://{}", grpc.local_addr()?);
    let svc = TraceServiceServer::new(sink.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await;
    });
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_url = format!("http://{}", http.local_addr()?);
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                use prost::Message;
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        sink.take("http", req);
                        let resp = ExportTraceServiceResponse::default().encode_to_vec();
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            resp,
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"bad protobuf".to_vec(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    Ok((grpc_url, http_url))
}

/// An agent calls node 1 for `b.cap` with a `traceparent`; agent-2 (node 2) answers by calling
/// `c.cap` through its node, which agent-3 (node 3) serves. Nodes 1 and 3 export over gRPC,
/// node 2 over HTTP/protobuf. The receiver gets one trace with the caller's trace id and the
/// parent/child chain route → attempt → serve → agent → route → attempt → serve → agent, with
/// the mesh attributes on each span.
#[tokio::test(flavor = "multi_thread")]
async fn otlp_trace_follows_a_call_chain_across_three_nodes() -> Result<()> {
    let sink = Sink::default();
    let (grpc, http) = start_receiver(sink.clone()).await?;
    let grpc_toml = format!("[telemetry]\notlp_endpoint = \"{grpc}\"\notlp_protocol = \"grpc\"\n");
    let http_toml =
        format!("[telemetry]\notlp_endpoint = \"{http}\"\notlp_protocol = \"http/protobuf\"\n");
    let mut mesh = Mesh::new()?;
    let mut o1 = NodeOpts::caps(&["a.cap"]);
    o1.extra_toml = grpc_toml.clone();
    mesh.start_node(o1).await?;
    let mut o2 = NodeOpts::caps(&["b.cap"]);
    o2.forward = Some("c.cap".into());
    o2.extra_toml = http_toml;
    mesh.start_node(o2).await?;
    let mut o3 = NodeOpts::caps(&["c.cap"]);
    o3.extra_toml = grpc_toml;
    mesh.start_node(o3).await?;
    wait_converged(&mesh, &["a.cap", "b.cap", "c.cap"]).await?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let agent_span = "00f067aa0ba902b7";
    let tp = format!("00-{trace_id}-{agent_span}-01");
    let n1 = mesh.nodes[0].clone();
    let r = mesh
        .call(
            &n1,
            "b.cap",
            "{\"q\":1}",
            &[("traceparent", &tp), ("tracestate", "vendor=x")],
        )
        .await?;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await?;
    assert!(
        body["forwarded"].is_object(),
        "agent-2 called onward: {body}"
    );

    let spans = wait_until("8 spans of the trace", Duration::from_secs(40), || async {
        let got: Vec<GotSpan> = sink
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        Ok((got.len() >= 8).then_some(got))
    })
    .await?;
    let others = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id != trace_id)
        .count();
    assert_eq!(others, 0, "every span belongs to the one trace");
    assert_eq!(spans.len(), 8, "{spans:#?}");
    let by_id: HashMap<&str, &GotSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let child_of = |parent: &str, name: &str| -> Result<&GotSpan> {
        spans
            .iter()
            .find(|s| s.parent == parent && s.name == name)
            .with_context(|| format!("no span {name:?} under {parent}: {spans:#?}"))
    };
    let (id1, id2, id3) = (&mesh.nodes[0].id, &mesh.nodes[1].id, &mesh.nodes[2].id);
    // Node 1 (gRPC).
    let route1 = child_of(agent_span, "mesh.route b.cap")?;
    let att1 = child_of(&route1.span_id, "mesh.attempt b.cap")?;
    // Node 2 (HTTP/protobuf).
    let serve2 = child_of(&att1.span_id, "mesh.serve b.cap")?;
    let agent2 = child_of(&serve2.span_id, "mesh.agent b.cap")?;
    let route2 = child_of(&agent2.span_id, "mesh.route c.cap")?;
    let att2 = child_of(&route2.span_id, "mesh.attempt c.cap")?;
    // Node 3 (gRPC).
    let serve3 = child_of(&att2.span_id, "mesh.serve c.cap")?;
    let agent3 = child_of(&serve3.span_id, "mesh.agent c.cap")?;
    assert_eq!(by_id.len(), 8);
    for (s, via) in [
        (route1, "grpc"),
        (serve2, "http"),
        (route2, "http"),
        (serve3, "grpc"),
    ] {
        assert_eq!(s.via, via, "{} exported over {via}", s.name);
    }
    // Span kinds (OTLP enum): 1 internal, 2 server, 3 client.
    for (s, kind) in [
        (route1, 1),
        (att1, 3),
        (serve2, 2),
        (agent2, 3),
        (att2, 3),
        (serve3, 2),
        (agent3, 3),
    ] {
        assert_eq!(s.kind, kind, "{}", s.name);
    }
    let a = |s: &GotSpan, k: &str| s.attrs.get(k).cloned().unwrap_or_default();
    // The attempt spans carry the whole set.
    for (att, caller, caller_agent, callee, callee_agent, cap) in [
        (att1, id1, "agent-1", id2, "agent-2", "b.cap"),
        (att2, id2, "agent-2", id3, "agent-3", "c.cap"),
    ] {
        assert_eq!(a(att, "mesh.caller.node"), *caller, "{att:?}");
        assert_eq!(a(att, "mesh.caller.agent"), caller_agent);
        assert_eq!(a(att, "mesh.callee.node"), *callee);
        assert_eq!(a(att, "mesh.callee.agent"), callee_agent);
        assert_eq!(a(att, "mesh.capability"), cap);
        assert!(!a(att, "mesh.policy").is_empty(), "{att:?}");
        assert_eq!(a(att, "mesh.attempt"), "1");
        assert_eq!(a(att, "mesh.outcome"), "ok");
        assert_eq!(a(att, "mesh.breaker.state"), "closed");
        assert_eq!(a(att, "rpc.system"), "agentmesh");
        assert_eq!(a(att, "rpc.method"), cap);
        assert_eq!(a(att, "http.response.status_code"), "200");
    }
    for (serve, caller, caller_agent, callee, callee_agent) in [
        (serve2, id1, "agent-1", id2, "agent-2"),
        (serve3, id2, "agent-2", id3, "agent-3"),
    ] {
        assert_eq!(a(serve, "mesh.caller.node"), *caller, "{serve:?}");
        assert_eq!(a(serve, "mesh.caller.agent"), caller_agent);
        assert_eq!(a(serve, "mesh.callee.node"), *callee);
        assert_eq!(a(serve, "mesh.callee.agent"), callee_agent);
        assert_eq!(a(serve, "mesh.outcome"), "ok");
    }
    for ag in [agent2, agent3] {
        assert_eq!(a(ag, "http.request.method"), "POST");
        assert_eq!(a(ag, "http.response.status_code"), "200");
        assert!(a(ag, "url.full").starts_with("http://127.0.0.1:"), "{ag:?}");
    }
    assert_eq!(a(route1, "mesh.outcome"), "ok");
    assert_eq!(a(route1, "mesh.attempts"), "1");

    // Which node and which agent, on every span: the resource's `service.instance.id` is the
    // node that exported it (so a backend tells the nodes apart), and each span names its node
    // and the agent it works for there (caller side: the calling agent; callee side: the
    // serving agent).
    for (s, node, agent) in [
        (route1, id1, "agent-1"),
        (att1, id1, "agent-1"),
        (serve2, id2, "agent-2"),
        (agent2, id2, "agent-2"),
        (route2, id2, "agent-2"),
        (att2, id2, "agent-2"),
        (serve3, id3, "agent-3"),
        (agent3, id3, "agent-3"),
    ] {
        let r = |k: &str| s.resource.get(k).cloned().unwrap_or_default();
        assert_eq!(r("service.instance.id"), *node, "{s:?}");
        assert_eq!(r("service.name"), "agentmesh", "{s:?}");
        assert_eq!(a(s, "agentmesh.node.id"), *node, "{s:?}");
        assert_eq!(a(s, "agentmesh.agent"), agent, "{s:?}");
    }
    let instances: std::collections::BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s.resource.get("service.instance.id").map(String::as_str))
        .collect();
    assert_eq!(
        instances.len(),
        3,
        "one instance id per node: {instances:?}"
    );
    Ok(())
}
