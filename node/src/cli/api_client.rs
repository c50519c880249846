//! The commands that talk to a running node's API: `members`, `routes`, `call`.

use super::*;

/// An HTTP client with `timeout`.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| fail(exit::FAILURE, e.to_string()))
}

pub(crate) fn url(api: &ApiArgs, path: &str) -> String {
    format!("{}{path}", api.api.trim_end_matches('/'))
}

pub(crate) fn authed(rb: reqwest::RequestBuilder, api: &ApiArgs) -> reqwest::RequestBuilder {
    match &api.token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

pub(crate) fn unreachable(api: &ApiArgs, e: reqwest::Error) -> Failure {
    fail(
        exit::UNREACHABLE,
        format!(
            "cannot reach the node API at {}: {e} (is the node running? see --api)",
            api.api
        ),
    )
}

/// Reads a response fully (up to [`CLI_RESPONSE_BYTES_MAX`]); a non-2xx status is a failure
/// carrying the node's error `code` and message.
pub(crate) async fn read_ok(
    api: &ApiArgs,
    resp: reqwest::Response,
) -> Result<bytes::Bytes, Failure> {
    let status = resp.status();
    let body = read_limited(resp).await.map_err(|e| unreachable(api, e))?;
    if status.is_success() {
        return Ok(body);
    }
    let msg = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => format!(
            "{} ({}): {}{}",
            v["code"].as_str().unwrap_or("error"),
            status.as_u16(),
            v["message"].as_str().unwrap_or(""),
            v["field"]
                .as_str()
                .map(|f| format!(" [field {f}]"))
                .unwrap_or_default()
        ),
        Err(_) => format!("{status}: {}", String::from_utf8_lossy(&body)),
    };
    Err(fail(exit::REMOTE_ERROR, msg))
}

pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
) -> Result<bytes::Bytes, reqwest::Error> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = CLI_RESPONSE_BYTES_MAX.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(out.freeze())
}

pub(crate) async fn get_json(api: &ApiArgs, path: &str) -> Result<serde_json::Value, Failure> {
    let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
    let resp = authed(c.get(url(api, path)), api)
        .send()
        .await
        .map_err(|e| unreachable(api, e))?;
    let body = read_ok(api, resp).await?;
    serde_json::from_slice(&body)
        .map_err(|e| fail(exit::REMOTE_ERROR, format!("node answered non-JSON: {e}")))
}

/// Shortens `s` to at most `n` characters, marking the cut with `…`.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub(crate) async fn members(a: ReadArgs) -> CmdResult {
    let v = get_json(&a.api, "/v1/members").await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!("{}", members_table(&v));
    Ok(())
}

pub(crate) async fn capabilities(a: ReadArgs) -> CmdResult {
    let v = get_json(&a.api, "/v1/capabilities").await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!("{}", capabilities_text(&v));
    Ok(())
}

/// The human text of `agentmesh capabilities`: one line per capability (name, offers,
/// description), then its schemas indented, compact JSON.
pub fn capabilities_text(v: &serde_json::Value) -> String {
    let empty = vec![];
    let list = v["details"].as_array().unwrap_or(&empty);
    let mut lines = vec![format!(
        "{:<24} {:<28} {}",
        "CAPABILITY", "OFFERED BY", "DESCRIPTION"
    )];
    for d in list {
        let by: Vec<&str> = d["offered_by"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let line = format!(
            "{:<24} {:<28} {}",
            clip(d["name"].as_str().unwrap_or("?"), 24),
            clip(&by.join(","), 28),
            d["description"].as_str().unwrap_or("-")
        );
        lines.push(clip(&line, HUMAN_COLS_MAX));
        for (label, key, hash) in [
            ("input", "input_schema", "input_schema_hash"),
            ("output", "output_schema", "output_schema_hash"),
        ] {
            match (d.get(key), d[hash].as_str()) {
                (Some(s), _) => lines.push(format!("    {label}: {s}")),
                (None, Some(h)) => lines.push(format!("    {label}: sha256:{h} (not fetched)")),
                _ => {}
            }
        }
    }
    lines.push(format!("{} capabilities", list.len()));
    lines.join("\n")
}

/// The human table of `agentmesh members`, each line at most [`HUMAN_COLS_MAX`] columns.
pub fn members_table(v: &serde_json::Value) -> String {
    let empty = vec![];
    let list = v["members"].as_array().unwrap_or(&empty);
    let mut lines = vec![format!(
        "{:<12} {:<7} {:<9} {:<16} {}",
        "NODE", "STATE", "HEALTH", "AGENT", "CAPABILITIES"
    )];
    for m in list {
        let id = m["node_id"].as_str().unwrap_or("?");
        let short = &id[id.len().saturating_sub(10)..];
        let mark = if m["local"].as_bool().unwrap_or(false) {
            "*"
        } else {
            ""
        };
        let caps: Vec<&str> = m["capabilities"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let line = format!(
            "{:<12} {:<7} {:<9} {:<16} {}",
            format!("…{short}{mark}"),
            clip(m["state"].as_str().unwrap_or("?"), 7),
            clip(m["health"].as_str().unwrap_or("-"), 9),
            clip(m["agent"].as_str().unwrap_or("-"), 16),
            caps.join(",")
        );
        lines.push(clip(&line, HUMAN_COLS_MAX));
    }
    lines.push(format!("{} members (* = this node)", list.len()));
    lines.join("\n")
}

pub(crate) fn routing_query(
    attrs: &[String],
    min_proficiency: &Option<String>,
) -> Result<String, Failure> {
    let mut q = url_query();
    for kv in attrs {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| fail(exit::USAGE, format!("--attr {kv:?}: expected K=V")))?;
        q.append_pair(&format!("attr.{k}"), v);
    }
    if let Some(p) = min_proficiency {
        q.append_pair("min_proficiency", p);
    }
    let s = q.finish();
    Ok(if s.is_empty() { s } else { format!("?{s}") })
}

pub(crate) fn url_query() -> reqwest::Url {
    reqwest::Url::parse("http://q/").expect("static URL")
}

trait QueryBuild {
    fn append_pair(&mut self, k: &str, v: &str);
    fn finish(self) -> String;
}

impl QueryBuild for reqwest::Url {
    fn append_pair(&mut self, k: &str, v: &str) {
        self.query_pairs_mut().append_pair(k, v);
    }
    fn finish(self) -> String {
        self.query().unwrap_or("").to_string()
    }
}

pub(crate) async fn routes(a: RoutesArgs) -> CmdResult {
    let mut q = routing_query(&a.attrs, &a.min_proficiency)?;
    for (k, v) in [("policy", &a.policy), ("complexity", &a.complexity)] {
        if let Some(v) = v {
            let pair = reqwest::Url::parse_with_params("http://q/", &[(k, v)])
                .map(|u| u.query().unwrap_or("").to_string())
                .unwrap_or_default();
            q.push(if q.is_empty() { '?' } else { '&' });
            q.push_str(&pair);
        }
    }
    let v = get_json(&a.api, &format!("/v1/routes/{}{q}", a.capability)).await?;
    if a.json {
        print_json(&v);
        return Ok(());
    }
    println!("{}", routes_table(&v));
    Ok(())
}

/// The human table of `agentmesh routes`, each line at most [`HUMAN_COLS_MAX`] columns.
pub fn routes_table(v: &serde_json::Value) -> String {
    let empty = vec![];
    let list = v["candidates"].as_array().unwrap_or(&empty);
    let mut lines = vec![
        format!(
            "{} (policy {}, locality {})",
            v["capability"].as_str().unwrap_or("?"),
            v["policy"].as_str().unwrap_or("?"),
            v["locality"].as_str().unwrap_or("?")
        ),
        format!(
            "{:<4} {:<11} {:<14} {:<11} {:>6} {:>4} {:>7} {:<9} {:<14} {}",
            "RANK",
            "NODE",
            "AGENT",
            "PROFICIENCY",
            "COST",
            "INFL",
            "LAT_MS",
            "BREAKER",
            "WHERE/RTT",
            "WHY"
        ),
    ];
    for c in list {
        let id = c["node_id"].as_str().unwrap_or("?");
        let place = format!(
            "{}/{}",
            c["proximity"].as_str().unwrap_or("-"),
            c["rtt_us"]
                .as_u64()
                .map(|r| format!("{:.1}ms", r as f64 / 1000.0))
                .unwrap_or("-".into())
        );
        let line = format!(
            "{:<4} {:<11} {:<14} {:<11} {:>6.2} {:>4} {:>7} {:<9} {:<14} {}",
            c["rank"]
                .as_u64()
                .map(|r| r.to_string())
                .unwrap_or("-".into()),
            format!("…{}", &id[id.len().saturating_sub(10)..]),
            clip(c["agent"].as_str().unwrap_or("-"), 14),
            clip(c["proficiency"].as_str().unwrap_or("-"), 11),
            c["cost"].as_f64().unwrap_or(0.0),
            c["in_flight"].as_u64().unwrap_or(0),
            c["latency_ms"]
                .as_f64()
                .map(|l| format!("{l:.1}"))
                .unwrap_or("-".into()),
            clip(c["breaker"].as_str().unwrap_or("-"), 9),
            clip(&place, 14),
            c["reason"].as_str().unwrap_or("")
        );
        lines.push(clip(&line, HUMAN_COLS_MAX));
    }
    lines.join("\n")
}

pub(crate) async fn call(a: CallArgs) -> CmdResult {
    serde_json::from_str::<serde_json::Value>(&a.data)
        .map_err(|e| fail(exit::USAGE, format!("--data is not JSON: {e}")))?;
    let q = routing_query(&a.attrs, &a.min_proficiency)?;
    let timeout = Duration::from_millis(a.deadline_ms.unwrap_or(0) + CLI_HTTP_TIMEOUT_MS);
    let c = client(timeout)?;
    let mut rb = c
        .post(url(&a.api, &format!("/v1/call/{}{q}", a.capability)))
        .header("content-type", "application/json")
        .body(a.data.clone());
    if let Some(d) = a.deadline_ms {
        rb = rb.header("x-mesh-deadline-ms", d.to_string());
    }
    if let Some(p) = &a.prefer {
        rb = rb.header("x-mesh-prefer", p);
    }
    if let Some(p) = &a.policy {
        rb = rb.header("x-mesh-policy", p);
    }
    let resp = authed(rb, &a.api)
        .send()
        .await
        .map_err(|e| unreachable(&a.api, e))?;
    let served_by = header_str(&resp, SERVED_BY_HEADER);
    let attempts = header_str(&resp, ATTEMPTS_HEADER);
    let body = read_ok(&a.api, resp).await?;
    println!("{}", String::from_utf8_lossy(&body));
    eprintln!("served by {served_by} ({attempts} attempt(s))");
    Ok(())
}

pub(crate) fn header_str(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}
