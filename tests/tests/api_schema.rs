//! The OpenAPI document against the handlers, on a real node process: every documented
//! path and method is called with a valid request (a table below), each JSON answer is
//! validated with a JSON Schema validator against the schema the document gives for that
//! status (`$ref`s resolve into the document's components), every status seen must be one the
//! document lists for the operation, and every documented request schema that says
//! `additionalProperties: false` must belong to a handler that refuses unknown fields (and the
//! other way round).

use agentmesh_tests::{Mesh, NodeOpts};
use serde_json::{json, Value};

/// One valid request: method, path, body (None: no body), and whether its answer is JSON.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    raw: Option<String>,
}

fn call(method: &'static str, path: &str, body: Option<Value>) -> Call {
    Call {
        method,
        path: path.to_string(),
        body,
        raw: None,
    }
}

/// The schema of `op`'s answer with `status` as a standalone document whose `$ref`s resolve
/// (the document's components are carried along).
fn response_schema(doc: &Value, op: &Value, status: u16) -> Option<Value> {
    let r = &op["responses"][status.to_string()];
    let r = match r["$ref"].as_str() {
        Some(p) => doc.pointer(p.trim_start_matches('#'))?,
        None => r,
    };
    let mut schema = r["content"]["application/json"]["schema"].clone();
    if schema.is_null() {
        return None;
    }
    let obj = schema.as_object_mut()?;
    obj.insert("components".into(), doc["components"].clone());
    Some(schema)
}

/// The operation documented for `method` and the concrete `path`.
fn find_op<'a>(doc: &'a Value, method: &str, path: &str) -> Option<(&'a str, &'a Value)> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.iter().find_map(|(tmpl, ops)| {
        let t: Vec<&str> = tmpl.split('/').collect();
        let same = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| a == b || (a.starts_with('{') && a.ends_with('}')));
        let op = ops.get(method)?;
        same.then_some((tmpl.as_str(), op))
    })
}

async fn send(http: &reqwest::Client, api: &str, c: &Call) -> (u16, String, String) {
    let m = reqwest::Method::from_bytes(c.method.to_uppercase().as_bytes()).unwrap();
    let mut rb = http.request(m, format!("{api}{}", c.path));
    if let Some(b) = &c.body {
        rb = rb.json(b);
    }
    if let Some(r) = &c.raw {
        rb = rb.body(r.clone());
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ct, r.text().await.unwrap_or_default())
}

/// Checks one answer against the document; returns what disagrees.
fn check(doc: &Value, c: &Call, status: u16, ct: &str, text: &str) -> Vec<String> {
    let what = format!("{} {} -> {status}", c.method.to_uppercase(), c.path);
    let Some((tmpl, op)) = find_op(doc, c.method, &c.path) else {
        return vec![format!("{what}: not documented")];
    };
    if op["responses"].get(status.to_string()).is_none() {
        return vec![format!(
            "{what}: status not documented for {tmpl} (documented: {:?}): {text:.300}",
            op["responses"]
                .as_object()
                .map(|o| o.keys().collect::<Vec<_>>())
        )];
    }
    let content = &op["responses"][status.to_string()]["content"];
    if !ct.starts_with("application/json") || content.get("application/json").is_none() {
        // Not JSON (metrics text, the dashboard) or any type (a routed call's answer is the
        // agent's own): the status was checked, the body has no schema to meet.
        return vec![];
    }
    let Some(schema) = response_schema(doc, op, status) else {
        return vec![format!("{what}: JSON answer but no JSON schema documented")];
    };
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return vec![format!("{what}: not JSON ({e}): {text:.200}")],
    };
    let validator = match jsonschema::draft202012::new(&schema) {
        Ok(v) => v,
        Err(e) => return vec![format!("{what}: the documented schema is invalid: {e}")],
    };
    validator
        .iter_errors(&v)
        .map(|e| format!("{what}: {} at {}: {text:.300}", e, e.instance_path()))
        .collect()
}

/// Every endpoint, called validly, answers what the document says, in the shape it says.
#[tokio::test(flavor = "multi_thread")]
async fn every_answer_matches_its_documented_schema() {
    let mut mesh = Mesh::new().unwrap();
    let wf_dir = mesh.path().join("workflows");
    std::fs::create_dir_all(&wf_dir).unwrap();
    std::fs::write(
        wf_dir.join("one.toml"),
        "name = \"one-step\"\n[[steps]]\nid = \"a\"\ncall = \"echo.ok\"\n",
    )
    .unwrap();
    let opts = NodeOpts {
        extra_toml: format!(
            "[workflows]\npaths = [\"{}\"]\n[audit]\ndir = \"audit\"\n",
            wf_dir.display()
        ),
        ..NodeOpts::caps(&["echo.ok"])
    };
    let n = mesh.start_node(opts).await.unwrap();
    mesh.wait_offers(&n, "echo.ok", 1).await.unwrap();
    let (_, doc) = mesh.get(&n, "/v1/openapi.json").await.unwrap();
    let (_, agent) = mesh.get(&n, "/v1/agent").await.unwrap();
    let registration = agent["registration"].clone();
    assert!(registration.is_object(), "{agent}");

    let a2a_msg = json!({
        "jsonrpc": "2.0", "id": 1, "method": "message/send",
        "params": {"message": {"role": "user", "messageId": "m1",
            "parts": [{"kind": "text", "text": "hi"}],
            "metadata": {"agentmesh.skill": "echo.ok"}}}
    });
    let card = json!({
        "name": "card-agent", "description": "d", "version": "1",
        "supportedInterfaces": [{"url": "http://127.0.0.1:9/", "protocolBinding": "JSONRPC",
            "protocolVersion": "1.0"}],
        "capabilities": {}, "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "lookup", "name": "lookup", "description": "d", "tags": []}]
    });
    let mut calls = vec![
        call("get", "/healthz", None),
        call("get", "/readyz", None),
        call("get", "/v1/agent", None),
        call("put", "/v1/agent", Some(registration.clone())),
        call("post", "/v1/call/echo.ok", Some(json!({"x": 1}))),
        call("get", "/v1/members", None),
        call("get", "/v1/capabilities", None),
        call("get", "/v1/routes/echo.ok", None),
        call("get", "/v1/openapi.json", None),
        call("get", "/.well-known/agent-card.json", None),
        call("post", "/a2a", Some(a2a_msg)),
        call("get", "/v1/config", None),
        call("post", "/v1/config/reload", None),
        call("get", "/v1/workflows", None),
        call(
            "post",
            "/v1/workflows/one-step/run",
            Some(json!({"input": {"x": 1}})),
        ),
        call(
            "post",
            "/v1/workflows/run",
            Some(
                json!({"workflow": {"name": "adhoc", "steps": [{"id": "a", "call": "echo.ok"}]},
                "input": {}}),
            ),
        ),
        call(
            "post",
            "/v1/quorum/echo.ok",
            Some(json!({"payload": {"q": 1}, "n": 1})),
        ),
        call("get", "/metrics", None),
        call("get", "/v1/mesh/matrix", None),
        call("get", "/v1/mesh/summary", None),
        call("get", "/ui", None),
        call("get", "/v1/security", None),
        call("get", "/v1/audit?limit=5", None),
        call("get", "/v1/audit?mesh=true&limit=5", None),
        call("get", &format!("/v1/audit/witnessed?node={}", n.id), None),
        call("get", "/v1/mcp/servers", None),
        // Joining an MCP server needs a live one (tests/mcp does it with the official SDK);
        // here the answers for one that is not there must match the document.
        call(
            "put",
            "/v1/mcp/server",
            Some(json!({"name": "gone", "url": "http://127.0.0.1:9/mcp"})),
        ),
        call("delete", "/v1/mcp/server/gone", None),
        // Error answers are part of the contract too.
        call("get", "/v1/routes/nobody.offers", None),
        call("post", "/v1/workflows/nope/run", Some(json!({}))),
        call("put", "/v1/agent", Some(json!({"name": "x"}))),
        call("get", "/v1/audit?colour=red", None),
        // Last: replaces the agent with one learnt from an A2A card.
        call("put", "/v1/a2a/agent", Some(json!({"card": card}))),
    ];
    for (path, body) in [
        ("/v1/revocations", "00"),
        ("/v1/policy", "00"),
        ("/v1/revocations", "zz"),
    ] {
        calls.push(Call {
            method: "post",
            path: path.into(),
            body: None,
            raw: Some(body.into()),
        });
    }

    let http = reqwest::Client::new();
    let mut problems = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    for c in &calls {
        let (status, ct, text) = send(&http, &n.api, c).await;
        if let Some((tmpl, _)) = find_op(&doc, c.method, &c.path) {
            covered.insert((c.method, tmpl.to_string(), status < 400));
        }
        problems.extend(check(&doc, c, status, &ct, &text));
    }
    // Every documented operation was called, and every one that has a 200 answered it.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let ok = covered
                .iter()
                .any(|(m, p, ok)| m == method && p == path && *ok);
            let any = covered.iter().any(|(m, p, _)| m == method && p == path);
            let needs_root = path == "/v1/revocations" || path == "/v1/policy";
            // Needs a live MCP server; its 2xx answers are checked by tests/mcp.
            let needs_mcp_server = path.starts_with("/v1/mcp/server");
            // `/mcp` speaks the MCP protocol (rmcp's Streamable HTTP): proven with the official
            // MCP SDK in tests/mcp, not by request and response schemas.
            if path == "/mcp" {
                continue;
            }
            if !any
                || (!ok && !needs_root && !needs_mcp_server && op["responses"].get("200").is_some())
            {
                problems.push(format!(
                    "{} {path}: no valid request answered {}",
                    method.to_uppercase(),
                    if any { "2xx" } else { "at all" }
                ));
            }
        }
    }

    // Request schemas with additionalProperties: false belong to handlers that refuse unknown
    // fields, and handlers that refuse them say so in the document.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let media = &op["requestBody"]["content"]["application/json"];
            let Some(example) = media["example"].as_object() else {
                continue;
            };
            let mut schema = media["schema"].clone();
            if let Some(r) = schema["$ref"].as_str() {
                schema = doc.pointer(r.trim_start_matches('#')).unwrap().clone();
            }
            let closed = schema["additionalProperties"] == json!(false);
            let mut body = example.clone();
            body.insert("zz_unknown".into(), json!(1));
            let concrete = path
                .replace("{capability}", "echo.ok")
                .replace("{name}", "one-step");
            let m: &'static str = match method.as_str() {
                "put" => "put",
                _ => "post",
            };
            let c = call(m, &concrete, Some(Value::Object(body)));
            let (status, _, text) = send(&http, &n.api, &c).await;
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let refused = status == 400 && v["field"] == "zz_unknown";
            if closed != refused {
                problems.push(format!(
                    "{} {path}: schema additionalProperties false = {closed}, but an unknown \
                     field got {status} {text:.200}",
                    method.to_uppercase()
                ));
            }
            // The example itself must satisfy the documented schema.
            let mut s = media["schema"].clone();
            s.as_object_mut()
                .unwrap()
                .insert("components".into(), doc["components"].clone());
            let validator = jsonschema::draft202012::new(&s).unwrap();
            let ex = Value::Object(example.clone());
            for e in validator.iter_errors(&ex) {
                problems.push(format!("{path} example: {e} at {}", e.instance_path()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} disagreements between openapi.json and the node:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
