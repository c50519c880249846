//! A2A (Agent2Agent) protocol mapping, pure and testable: Agent Cards (v1.0 and v0.3) to mesh
//! capabilities, mesh call bodies to A2A messages and back, JSON-RPC envelopes, and the mesh's
//! aggregate Agent Card. No I/O here: [`crate::a2a::bridge`] forwards mesh calls to an A2A agent
//! and [`crate::api::a2a`] serves the mesh as one A2A endpoint.
//!
//! **Content mapping.** A mesh call body is JSON. Towards A2A: `{"text": "…"}` (only that key)
//! becomes one text part; `{"parts": […]}` is sent as those parts; anything else becomes one
//! data part. Back from A2A, the same in reverse: one text part is `{"text": …}`, one data part
//! is its data, several parts are `{"parts": […]}`.
//!
//! **Skill extension.** A2A has no field naming a skill, so a client of the mesh endpoint names
//! the capability in the message's (or the request's) metadata under [`META_SKILL`], with the
//! optional routing hints [`META_POLICY`], [`META_DEADLINE_MS`] and [`META_PREFER`]. The
//! aggregate card declares this as extension [`SKILL_EXTENSION_URI`].

pub mod bridge;
pub mod stream;

use crate::contract::names::is_capability_name;
use agentmesh_gossip::record::{AttrValue, Capability, Proficiency};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Metadata key naming the capability (skill) a message is for.
pub const META_SKILL: &str = "agentmesh.skill";
/// Metadata key naming a routing policy.
pub const META_POLICY: &str = "agentmesh.policy";
/// Metadata key giving the call's deadline in ms.
pub const META_DEADLINE_MS: &str = "agentmesh.deadline_ms";
/// Metadata key naming a preferred agent.
pub const META_PREFER: &str = "agentmesh.prefer";
/// The extension the aggregate card declares for skill selection by metadata.
pub const SKILL_EXTENSION_URI: &str = "urn:agentmesh:a2a:skill-metadata:v1";
/// Where A2A agents publish their card, relative to their base URL.
pub const WELL_KNOWN_CARD_PATH: &str = "/.well-known/agent-card.json";
/// Largest Agent Card read, in bytes.
pub const CARD_BYTES_MAX: usize = 256 * 1024;
/// Most skills taken from one card (the record's own capability limit applies too).
pub const CARD_SKILLS_MAX: usize = agentmesh_gossip::record::CAPABILITIES_MAX;
/// Largest JSON-RPC request or response handled, in bytes.
pub const RPC_BYTES_MAX: usize = crate::contract::BODY_BYTES_MAX;
/// Protocol version header of A2A v1.0 requests.
pub const VERSION_HEADER: &str = "A2A-Version";

/// JSON-RPC error: invalid request.
pub const RPC_INVALID_REQUEST: i64 = -32600;
/// JSON-RPC error: unknown method.
pub const RPC_METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC error: invalid params.
pub const RPC_INVALID_PARAMS: i64 = -32602;
/// JSON-RPC error: internal error (the mesh call failed; `data` carries the mesh error).
pub const RPC_INTERNAL: i64 = -32603;
/// JSON-RPC error: parse error.
pub const RPC_PARSE: i64 = -32700;

/// Which A2A protocol generation a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// v1.0: `SendMessage`, `ROLE_USER`, parts without `kind`, results wrapped by type.
    V1,
    /// v0.3: `message/send`, `user`, parts with `kind`.
    V03,
}

/// Per-skill additions from config (A2A has no fields for them).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillOverride {
    /// Capability name to offer the skill as (default: derived from the skill id).
    pub capability: Option<String>,
    /// Proficiency.
    #[serde(default)]
    pub proficiency: Option<Proficiency>,
    /// Cost per call.
    #[serde(default)]
    pub cost: Option<f64>,
    /// Attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
}

/// What the node takes from an Agent Card.
#[derive(Debug, Clone, PartialEq)]
pub struct CardInfo {
    /// The agent's name.
    pub name: String,
    /// JSON-RPC endpoint.
    pub rpc_url: String,
    /// Protocol generation.
    pub version: Version,
    /// Whether the agent streams (`capabilities.streaming`).
    pub streaming: bool,
    /// Skill ids, in card order.
    pub skills: Vec<String>,
}

/// Why a card cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent card: {0}")]
pub struct CardError(pub String);

/// Parses an Agent Card (v1.0 `supportedInterfaces`, or v0.3 `url` + `preferredTransport`).
/// Only a JSON-RPC interface over http(s) is usable.
pub fn parse_card(bytes: &[u8]) -> Result<CardInfo, CardError> {
    if bytes.len() > CARD_BYTES_MAX {
        return Err(CardError(format!("larger than {CARD_BYTES_MAX} bytes")));
    }
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| CardError(format!("not JSON: {e}")))?;
    let name = v["name"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| CardError("missing name".into()))?
        .to_string();
    let jsonrpc = |b: &Value| b.as_str().is_none_or(|s| s.eq_ignore_ascii_case("JSONRPC"));
    let (rpc_url, version) = if let Some(list) = v["supportedInterfaces"].as_array() {
        let i = list
            .iter()
            .find(|i| jsonrpc(&i["protocolBinding"]) && i["url"].is_string())
            .ok_or_else(|| CardError("no JSONRPC entry in supportedInterfaces".into()))?;
        let ver = match i["protocolVersion"].as_str() {
            Some(s) if s.starts_with("0.") => Version::V03,
            _ => Version::V1,
        };
        (i["url"].as_str().unwrap_or_default().to_string(), ver)
    } else if let Some(url) = v["url"].as_str() {
        if !jsonrpc(&v["preferredTransport"]) {
            let extra = v["additionalInterfaces"].as_array().and_then(|l| {
                l.iter()
                    .find(|i| jsonrpc(&i["transport"]) && i["url"].is_string())
            });
            match extra {
                Some(i) => (
                    i["url"].as_str().unwrap_or_default().to_string(),
                    Version::V03,
                ),
                None => return Err(CardError("no JSONRPC transport".into())),
            }
        } else {
            (url.to_string(), Version::V03)
        }
    } else {
        return Err(CardError("no url or supportedInterfaces".into()));
    };
    match reqwest::Url::parse(&rpc_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        _ => return Err(CardError(format!("{rpc_url:?} is not an http(s) URL"))),
    }
    let skills: Vec<String> = v["skills"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if skills.is_empty() {
        return Err(CardError("no skills".into()));
    }
    if skills.len() > CARD_SKILLS_MAX {
        return Err(CardError(format!("more than {CARD_SKILLS_MAX} skills")));
    }
    Ok(CardInfo {
        name,
        rpc_url,
        version,
        streaming: v["capabilities"]["streaming"].as_bool().unwrap_or(false),
        skills,
    })
}

/// A capability name for a skill id: lowercased, other characters than `[a-z0-9_.-]` become
/// `-`, cut to the name limit.
pub fn capability_for_skill(id: &str) -> String {
    let s: String = id
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(crate::contract::names::CAPABILITY_NAME_LEN_MAX)
        .collect();
    if s.is_empty() {
        "skill".into()
    } else {
        s
    }
}

/// Maps the card's skills to capabilities with the config's overrides; returns the
/// capabilities and, for each, the skill id it stands for.
pub fn capabilities(
    card: &CardInfo,
    overrides: &BTreeMap<String, SkillOverride>,
) -> Result<Vec<(Capability, String)>, CardError> {
    let mut out = Vec::new();
    for id in &card.skills {
        let o = overrides.get(id).cloned().unwrap_or_default();
        let name = o.capability.unwrap_or_else(|| capability_for_skill(id));
        if !is_capability_name(&name) {
            return Err(CardError(format!(
                "skill {id:?}: {name:?} is not a capability name"
            )));
        }
        out.push((
            Capability {
                name,
                proficiency: o.proficiency.unwrap_or_default(),
                attributes: o.attributes,
                cost: o.cost.unwrap_or(0.0),
                ..Default::default()
            },
            id.clone(),
        ));
    }
    if let Some(unknown) = overrides.keys().find(|k| !card.skills.contains(k)) {
        return Err(CardError(format!(
            "config names skill {unknown:?}, which the card lacks"
        )));
    }
    Ok(out)
}

/// A2A parts for a mesh call body (see the module docs).
pub fn body_to_parts(body: &Value, version: Version) -> Vec<Value> {
    if let Some(obj) = body.as_object() {
        if obj.len() == 1 {
            if let Some(t) = obj.get("text").and_then(Value::as_str) {
                return vec![text_part(t, version)];
            }
            if let Some(parts) = obj.get("parts").and_then(Value::as_array) {
                return parts.clone();
            }
        }
    }
    vec![data_part(body.clone(), version)]
}

fn text_part(t: &str, version: Version) -> Value {
    match version {
        Version::V1 => json!({ "text": t }),
        Version::V03 => json!({ "kind": "text", "text": t }),
    }
}

fn data_part(d: Value, version: Version) -> Value {
    match version {
        Version::V1 => json!({ "data": d }),
        Version::V03 => json!({ "kind": "data", "data": d }),
    }
}

/// A mesh answer body for A2A parts (see the module docs).
pub fn parts_to_body(parts: &[Value]) -> Value {
    if let [p] = parts {
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            return json!({ "text": t });
        }
        if let Some(d) = p.get("data") {
            return d.clone();
        }
    }
    json!({ "parts": parts })
}

/// A new random id (message ids, context ids).
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// An A2A message with `parts`, from `role` (`user` or `agent`).
pub fn message(
    parts: Vec<Value>,
    agent: bool,
    context_id: Option<&str>,
    version: Version,
) -> Value {
    let mut m = Map::new();
    m.insert("messageId".into(), new_id().into());
    m.insert(
        "role".into(),
        match (version, agent) {
            (Version::V1, false) => "ROLE_USER",
            (Version::V1, true) => "ROLE_AGENT",
            (Version::V03, false) => "user",
            (Version::V03, true) => "agent",
        }
        .into(),
    );
    m.insert("parts".into(), parts.into());
    if let Some(c) = context_id {
        m.insert("contextId".into(), c.into());
    }
    if version == Version::V03 {
        m.insert("kind".into(), "message".into());
    }
    Value::Object(m)
}

/// The JSON-RPC request sending `body` to an agent of `version`, streaming or not.
pub fn send_request(body: &Value, version: Version, streaming: bool) -> Value {
    let method = match (version, streaming) {
        (Version::V1, false) => "SendMessage",
        (Version::V1, true) => "SendStreamingMessage",
        (Version::V03, false) => "message/send",
        (Version::V03, true) => "message/stream",
    };
    json!({
        "jsonrpc": "2.0",
        "id": new_id(),
        "method": method,
        "params": { "message": message(body_to_parts(body, version), false, None, version) },
    })
}

/// How an A2A answer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A final answer: the mesh body.
    Done(Value),
    /// The agent failed, refused, or needs input the mesh cannot give; the message says which.
    Failed(String),
    /// Not final yet (a streaming event that is no answer on its own).
    Pending,
}

fn task_state(s: &str) -> &str {
    s.trim_start_matches("TASK_STATE_")
}

/// Interprets one JSON-RPC `result` (or one streaming event's `result`): a message, a task,
/// a status update or an artifact update, in either version's shape. Artifact parts seen in
/// updates are added to `collected`.
pub fn interpret(result: &Value, collected: &mut Vec<Value>) -> Answer {
    // v1.0 wraps by type; v0.3 tags with `kind`.
    let (kind, obj) = if let Some(m) = result.get("message") {
        ("message", m)
    } else if let Some(t) = result.get("task") {
        ("task", t)
    } else if let Some(s) = result.get("statusUpdate") {
        ("status-update", s)
    } else if let Some(a) = result.get("artifactUpdate") {
        ("artifact-update", a)
    } else {
        (result["kind"].as_str().unwrap_or(""), result)
    };
    let parts_of = |v: &Value| v["parts"].as_array().cloned().unwrap_or_default();
    match kind {
        "message" => Answer::Done(parts_to_body(&parts_of(obj))),
        "artifact-update" => {
            collected.extend(parts_of(&obj["artifact"]));
            Answer::Pending
        }
        "task" | "status-update" => {
            if let Some(arts) = obj["artifacts"].as_array() {
                for a in arts {
                    collected.extend(parts_of(a));
                }
            }
            let status = &obj["status"];
            let state = task_state(status["state"].as_str().unwrap_or(""));
            let status_parts = parts_of(&status["message"]);
            match state.to_ascii_lowercase().replace('_', "-").as_str() {
                "completed" => {
                    let parts = if collected.is_empty() {
                        status_parts
                    } else {
                        std::mem::take(collected)
                    };
                    Answer::Done(parts_to_body(&parts))
                }
                s @ ("failed" | "rejected" | "canceled" | "cancelled" | "input-required"
                | "auth-required") => {
                    let why = parts_to_body(&status_parts);
                    Answer::Failed(format!("A2A task {s}: {why}"))
                }
                _ if obj["final"].as_bool() == Some(true) => {
                    Answer::Failed(format!("A2A stream ended in state {state:?}"))
                }
                _ => Answer::Pending,
            }
        }
        _ => Answer::Failed(format!(
            "unrecognised A2A result: {}",
            crate::net::call_proto::truncate(&result.to_string(), 256)
        )),
    }
}

/// An inbound A2A request to the mesh endpoint, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// JSON-RPC id (echoed).
    pub id: Value,
    /// Protocol generation the client speaks.
    pub version: Version,
    /// Whether the client asked for a stream.
    pub streaming: bool,
    /// Capability named in metadata (None: not named).
    pub skill: Option<String>,
    /// Routing policy from metadata.
    pub policy: Option<String>,
    /// Deadline from metadata, in ms.
    pub deadline_ms: Option<u64>,
    /// Preferred agent from metadata.
    pub prefer: Option<String>,
    /// The mesh call body.
    pub body: Value,
    /// The client's context id, if any.
    pub context_id: Option<String>,
}

/// A JSON-RPC error: `(id, code, message)`.
pub type RpcError = (Value, i64, String);

/// Parses a JSON-RPC `SendMessage`/`SendStreamingMessage` (v1.0) or `message/send`/
/// `message/stream` (v0.3) request.
pub fn parse_inbound(bytes: &[u8]) -> Result<Inbound, RpcError> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| (Value::Null, RPC_PARSE, format!("parse error: {e}")))?;
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    if v["jsonrpc"] != "2.0" {
        return Err((id, RPC_INVALID_REQUEST, "jsonrpc must be \"2.0\"".into()));
    }
    let (version, streaming) = match v["method"].as_str() {
        Some("SendMessage") => (Version::V1, false),
        Some("SendStreamingMessage") => (Version::V1, true),
        Some("message/send") => (Version::V03, false),
        Some("message/stream") => (Version::V03, true),
        Some(m) => {
            return Err((
                id,
                RPC_METHOD_NOT_FOUND,
                format!("method {m:?} is not served; the mesh endpoint takes SendMessage, SendStreamingMessage, message/send, message/stream"),
            ))
        }
        None => return Err((id, RPC_INVALID_REQUEST, "missing method".into())),
    };
    let params = &v["params"];
    let msg = &params["message"];
    let Some(parts) = msg["parts"].as_array() else {
        return Err((
            id,
            RPC_INVALID_PARAMS,
            "params.message.parts is required".into(),
        ));
    };
    let meta = |k: &str| {
        msg["metadata"]
            .get(k)
            .or_else(|| params["metadata"].get(k))
            .cloned()
    };
    let text = |k: &str| meta(k).and_then(|v| v.as_str().map(str::to_string));
    let deadline_ms = match meta(META_DEADLINE_MS) {
        None => None,
        Some(d) => Some(d.as_u64().ok_or_else(|| {
            (
                id.clone(),
                RPC_INVALID_PARAMS,
                format!("{META_DEADLINE_MS} must be a positive integer"),
            )
        })?),
    };
    Ok(Inbound {
        skill: text(META_SKILL),
        policy: text(META_POLICY),
        prefer: text(META_PREFER),
        deadline_ms,
        body: parts_to_body(parts),
        context_id: msg["contextId"].as_str().map(str::to_string),
        id,
        version,
        streaming,
    })
}

/// The JSON-RPC result carrying the mesh's answer as an agent message.
pub fn reply_result(answer: &Value, inbound: &Inbound) -> Value {
    let ctx = inbound.context_id.clone().unwrap_or_else(new_id);
    let m = message(
        body_to_parts(answer, inbound.version),
        true,
        Some(&ctx),
        inbound.version,
    );
    match inbound.version {
        Version::V1 => json!({ "message": m }),
        Version::V03 => m,
    }
}

/// A JSON-RPC success envelope.
pub fn rpc_ok(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// A JSON-RPC error envelope; `data` carries the mesh error when there is one.
pub fn rpc_err(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = json!({ "code": code, "message": message });
    if let Some(d) = data {
        e["data"] = d;
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

/// The aggregate Agent Card of the mesh (v1.0 shape): one skill per capability offered by a
/// live member, with the agents offering it in the description.
pub fn aggregate_card(
    node_id: &str,
    rpc_url: &str,
    capabilities: &BTreeMap<String, Vec<String>>,
) -> Value {
    let skills: Vec<Value> = capabilities
        .iter()
        .map(|(cap, agents)| {
            json!({
                "id": cap,
                "name": cap,
                "description": format!("{cap} via agentmesh, offered by {}", agents.join(", ")),
                "tags": ["agentmesh"],
            })
        })
        .collect();
    json!({
        "name": "agentmesh",
        "description": format!(
            "Every capability of the mesh behind node {node_id}, as one A2A agent. Name the \
             skill in message metadata \"{META_SKILL}\" (extension {SKILL_EXTENSION_URI})."
        ),
        "supportedInterfaces": [
            { "url": rpc_url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0" },
        ],
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": {
            "streaming": true,
            "extensions": [{
                "uri": SKILL_EXTENSION_URI,
                "description": format!(
                    "message.metadata[\"{META_SKILL}\"] names the capability; optional \
                     \"{META_POLICY}\", \"{META_DEADLINE_MS}\", \"{META_PREFER}\" steer routing"
                ),
                "required": false,
            }],
        },
        "defaultInputModes": ["application/json", "text/plain"],
        "defaultOutputModes": ["application/json", "text/plain"],
        "skills": skills,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CARD: &str = r#"{"name":"t","supportedInterfaces":[{"url":"http://127.0.0.1:9/","protocolBinding":"JSONRPC","protocolVersion":"1.0"}],"capabilities":{"streaming":true},"skills":[{"id":"Translate FR","name":"x"},{"id":"sum"}]}"#;
    const V03_CARD: &str = r#"{"name":"t","url":"http://127.0.0.1:9/rpc","preferredTransport":"JSONRPC","protocolVersion":"0.3.0","skills":[{"id":"sum"}]}"#;

    #[test]
    fn cards_of_both_versions_parse() {
        let c = parse_card(V1_CARD.as_bytes()).unwrap();
        assert_eq!((c.version, c.streaming), (Version::V1, true));
        assert_eq!(c.rpc_url, "http://127.0.0.1:9/");
        assert_eq!(c.skills, ["Translate FR", "sum"]);
        let c = parse_card(V03_CARD.as_bytes()).unwrap();
        assert_eq!((c.version, c.streaming), (Version::V03, false));
        assert_eq!(c.rpc_url, "http://127.0.0.1:9/rpc");
    }

    #[test]
    fn bad_cards_are_typed_errors() {
        for bad in [
            "not json",
            r#"{"skills":[{"id":"a"}],"url":"http://x/"}"#,
            r#"{"name":"n","url":"http://x/","skills":[]}"#,
            r#"{"name":"n","url":"ftp://x/","skills":[{"id":"a"}]}"#,
            r#"{"name":"n","url":"http://x/","preferredTransport":"GRPC","skills":[{"id":"a"}]}"#,
            r#"{"name":"n","supportedInterfaces":[{"url":"http://x/","protocolBinding":"GRPC"}],"skills":[{"id":"a"}]}"#,
        ] {
            assert!(parse_card(bad.as_bytes()).is_err(), "{bad}");
        }
        let huge = vec![b' '; CARD_BYTES_MAX + 1];
        assert!(parse_card(&huge).is_err());
    }

    #[test]
    fn skills_map_to_capabilities_with_overrides() {
        let c = parse_card(V1_CARD.as_bytes()).unwrap();
        let mut o = BTreeMap::new();
        o.insert(
            "sum".to_string(),
            SkillOverride {
                capability: Some("math.sum".into()),
                proficiency: Some(Proficiency::Expert),
                cost: Some(0.5),
                ..Default::default()
            },
        );
        let caps = capabilities(&c, &o).unwrap();
        assert_eq!(caps[0].0.name, "translate-fr");
        assert_eq!(caps[1].0.name, "math.sum");
        assert_eq!(caps[1].0.proficiency, Proficiency::Expert);
        assert_eq!(caps[1].1, "sum");
        o.insert("nope".into(), SkillOverride::default());
        assert!(capabilities(&c, &o).is_err());
    }

    #[test]
    fn bodies_and_parts_round_trip() {
        for (body, v) in [
            (json!({"text": "hi"}), Version::V1),
            (json!({"x": 1}), Version::V03),
            (json!([1, 2]), Version::V1),
            (
                json!({"parts": [{"text": "a"}, {"text": "b"}]}),
                Version::V1,
            ),
        ] {
            assert_eq!(parts_to_body(&body_to_parts(&body, v)), body);
        }
    }

    #[test]
    fn results_of_both_versions_are_interpreted() {
        let mut c = vec![];
        let v1 = json!({"message": {"role": "ROLE_AGENT", "parts": [{"text": "ok"}]}});
        assert_eq!(interpret(&v1, &mut c), Answer::Done(json!({"text": "ok"})));
        let v03 = json!({"kind": "message", "parts": [{"kind": "data", "data": {"a": 1}}]});
        assert_eq!(interpret(&v03, &mut c), Answer::Done(json!({"a": 1})));
        let task = json!({"task": {"status": {"state": "TASK_STATE_COMPLETED"},
            "artifacts": [{"parts": [{"text": "art"}]}]}});
        assert_eq!(
            interpret(&task, &mut c),
            Answer::Done(json!({"text": "art"}))
        );
        let failed = json!({"kind": "task", "status": {"state": "failed"}});
        assert!(matches!(interpret(&failed, &mut c), Answer::Failed(_)));
        let working = json!({"statusUpdate": {"status": {"state": "TASK_STATE_WORKING"}}});
        assert_eq!(interpret(&working, &mut c), Answer::Pending);
        let art = json!({"artifactUpdate": {"artifact": {"parts": [{"text": "s"}]}}});
        assert_eq!(interpret(&art, &mut c), Answer::Pending);
        let done = json!({"statusUpdate": {"status": {"state": "TASK_STATE_COMPLETED"}}});
        assert_eq!(interpret(&done, &mut c), Answer::Done(json!({"text": "s"})));
    }

    #[test]
    fn inbound_requests_parse_with_skill_metadata() {
        let r = br#"{"jsonrpc":"2.0","id":7,"method":"SendMessage","params":{"message":{"messageId":"m","role":"ROLE_USER","parts":[{"text":"hello"}],"metadata":{"agentmesh.skill":"echo","agentmesh.deadline_ms":500}}}}"#;
        let i = parse_inbound(r).unwrap();
        assert_eq!(i.skill.as_deref(), Some("echo"));
        assert_eq!(i.deadline_ms, Some(500));
        assert_eq!(i.body, json!({"text": "hello"}));
        assert_eq!(
            (i.version, i.streaming, i.id.clone()),
            (Version::V1, false, json!(7))
        );
        let reply = reply_result(&json!({"x": 1}), &i);
        assert_eq!(reply["message"]["parts"][0]["data"], json!({"x": 1}));
        for (bad, code) in [
            (&b"{"[..], RPC_PARSE),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{}}"#,
                RPC_METHOD_NOT_FOUND,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}"#,
                RPC_INVALID_PARAMS,
            ),
            (br#"{"id":1,"method":"SendMessage"}"#, RPC_INVALID_REQUEST),
        ] {
            assert_eq!(parse_inbound(bad).unwrap_err().1, code);
        }
    }

    #[test]
    fn aggregate_card_has_one_skill_per_capability_and_parses_back() {
        let mut caps = BTreeMap::new();
        caps.insert("echo".to_string(), vec!["a@1".to_string()]);
        caps.insert("sum".to_string(), vec!["b@2".to_string()]);
        let card = aggregate_card("n", "http://127.0.0.1:7600/a2a", &caps);
        let info = parse_card(card.to_string().as_bytes()).unwrap();
        assert_eq!(info.skills, ["echo", "sum"]);
        assert_eq!(info.rpc_url, "http://127.0.0.1:7600/a2a");
    }
}
