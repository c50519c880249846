//! MCP servers as agents of the mesh. The node connects to each configured MCP server
//! (Streamable HTTP URL, or a command it launches over stdio), lists its tools and registers
//! each as a capability of the node's agent, with the tool's description and schemas. It
//! follows `notifications/tools/list_changed` (and re-lists every [`MCP_HEALTH_INTERVAL`]);
//! a server that goes away is unregistered and reconnected to when it returns.
//!
//! Inbound mesh calls reach the tools through a small HTTP server on `127.0.0.1:0`, registered
//! as the agent's handler (as the A2A bridge does), so a tool call takes the callee path of
//! any call: RBAC, audit, metrics, traces, concurrency limits; the caller's node applies its
//! breakers and retries. `POST {handler}/{capability}` becomes `tools/call` with the body's
//! JSON object as the arguments.
//!
//! ```toml
//! [mcp]
//! agent = "tools"                   # the agent name the tools are offered under
//! [[mcp.servers]]
//! name = "weather"
//! url = "http://127.0.0.1:8000/mcp" # or: command = ["python3", "server.py"]
//! [mcp.servers.tools.get_forecast]  # keyed by tool name; like [a2a.skills]
//! capability = "weather.forecast"
//! proficiency = "expert"
//! cost = 0.1
//! attributes = { region = "eu" }
//! ```

use crate::agent::client::{H_DEADLINE, H_ERROR};
use crate::contract::names::is_capability_name;
use crate::contract::{AgentRegistration, CallError, CapabilitySpec, ErrorCode};
use crate::runtime::MeshHandle;
use agentmesh_gossip::record::{AttrValue, Proficiency, DESCRIPTION_LEN_MAX};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::{NotificationContext, Peer, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, OnceCell};

/// Most MCP servers one node joins to the mesh.
pub const MCP_SERVERS_MAX: usize = 16;
/// Longest server name, in bytes.
pub const SERVER_NAME_LEN_MAX: usize = 64;
/// How often a connected server's tools are re-listed (also its liveness check).
pub const MCP_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// How long one connection attempt or listing may take.
pub const MCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between reconnection attempts to a server that went away.
pub const MCP_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Deadline of a forwarded tool call that carries none, in ms.
pub const TOOL_DEADLINE_MS_DEFAULT: u64 = 30_000;
/// Longest description taken from a tool (the record's limit; cut at a char boundary).
pub const TOOL_DESCRIPTION_LEN_MAX: usize = DESCRIPTION_LEN_MAX;

fn default_agent() -> String {
    "mcp".into()
}
fn default_max_concurrency() -> u32 {
    64
}

/// Per-tool additions from config (MCP tools have no fields for them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolOverride {
    /// Capability name to offer the tool as (default: the tool name).
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

/// One MCP server to join to the mesh (`[[mcp.servers]]`, or `PUT /v1/mcp/server`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// A name for the server, unique on this node.
    pub name: String,
    /// Its Streamable HTTP endpoint, e.g. `http://127.0.0.1:8000/mcp`.
    #[serde(default)]
    pub url: Option<String>,
    /// Or a command to launch, speaking MCP over stdio: program and arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Per-tool overrides keyed by tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolOverride>,
}

impl McpServerSpec {
    /// Checks the spec; the error names the field.
    pub fn validate(&self) -> Result<(), CallError> {
        if self.name.is_empty()
            || self.name.len() > SERVER_NAME_LEN_MAX
            || self.name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(CallError::bad_field(
                "name",
                format!("1 to {SERVER_NAME_LEN_MAX} bytes, no '/' or control characters"),
            ));
        }
        match (&self.url, &self.command) {
            (Some(u), None) => {
                let ok = reqwest::Url::parse(u)
                    .map(|u| matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(false);
                if !ok {
                    return Err(CallError::bad_field("url", "must be an http(s) URL"));
                }
            }
            (None, Some(c)) if !c.is_empty() && !c[0].is_empty() => {}
            (None, Some(_)) => {
                return Err(CallError::bad_field(
                    "command",
                    "must name a program: [\"program\", \"arg\", …]",
                ))
            }
            _ => {
                return Err(CallError::bad_field(
                    "url",
                    "set exactly one of url or command",
                ))
            }
        }
        for (tool, o) in &self.tools {
            if let Some(c) = &o.capability {
                if !is_capability_name(c) {
                    return Err(CallError::bad_field(
                        &format!("tools.{tool}.capability"),
                        crate::contract::names::capability_name_rule(c),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[mcp]` in `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpSection {
    /// The agent name the tools are offered under.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// Calls accepted at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// The servers.
    #[serde(default)]
    pub servers: Vec<McpServerSpec>,
}

impl Default for McpSection {
    fn default() -> Self {
        McpSection {
            agent: default_agent(),
            max_concurrency: default_max_concurrency(),
            servers: vec![],
        }
    }
}

/// One registered tool: the capability it is offered as and where it lives.
#[derive(Debug, Clone)]
struct ToolEntry {
    tool: String,
    spec: CapabilitySpec,
}

struct ServerState {
    spec: McpServerSpec,
    peer: Option<Peer<RoleClient>>,
    tools: Vec<ToolEntry>,
    status: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServerState {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one server stands, for `GET /v1/mcp/servers`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Its name.
    pub name: String,
    /// URL or command.
    pub target: String,
    /// `connected`, `connecting`, or why not.
    pub status: String,
    /// `tool → capability` registered from it.
    pub tools: BTreeMap<String, String>,
}

/// The MCP servers joined to the mesh through this node.
pub struct McpAgents {
    mesh: MeshHandle,
    agent: String,
    max_concurrency: u32,
    handler: OnceCell<String>,
    servers: Mutex<BTreeMap<String, ServerState>>,
    /// Serializes re-registration so the last state wins.
    publish: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tells the supervisor a server's tool list changed.
struct Notify(mpsc::Sender<()>);

impl ClientHandler for Notify {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.0.try_send(());
    }
}

type Client = RunningService<RoleClient, Notify>;

fn short_description(d: Option<&str>) -> Option<String> {
    let d = d?.trim();
    let clean: String = d
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = clean.len().min(TOOL_DESCRIPTION_LEN_MAX);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    (!clean.is_empty()).then(|| clean[..end].to_string())
}

/// The capability a tool is offered as, with its description and schemas.
fn tool_spec(t: &Tool, o: Option<&ToolOverride>) -> Result<CapabilitySpec, String> {
    let o = o.cloned().unwrap_or_default();
    let name = o.capability.unwrap_or_else(|| t.name.to_string());
    if !is_capability_name(&name) {
        return Err(format!(
            "tool {:?}: {name:?} is not a capability name; map it in [mcp.servers.tools]",
            t.name
        ));
    }
    Ok(CapabilitySpec {
        name,
        proficiency: o.proficiency.unwrap_or_default(),
        attributes: o.attributes,
        cost: o.cost.unwrap_or(0.0),
        description: short_description(t.description.as_deref()),
        input_schema: Some(Value::Object((*t.input_schema).clone())),
        output_schema: t
            .output_schema
            .as_ref()
            .map(|s| Value::Object((**s).clone())),
    })
}

impl McpAgents {
    /// Joins no servers yet; tools are offered as agent `agent`.
    pub fn new(mesh: MeshHandle, agent: String, max_concurrency: u32) -> Arc<Self> {
        Arc::new(McpAgents {
            mesh,
            agent,
            max_concurrency,
            handler: OnceCell::new(),
            servers: Mutex::new(BTreeMap::new()),
            publish: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the `[mcp]` servers of `node.toml` (connecting in the background).
    pub async fn start_config(self: &Arc<Self>, cfg: &McpSection) -> Result<(), CallError> {
        for s in &cfg.servers {
            self.add(s.clone()).await?;
        }
        Ok(())
    }

    async fn handler_url(self: &Arc<Self>) -> Result<String, CallError> {
        let this = Arc::downgrade(self);
        self.handler
            .get_or_try_init(|| async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| CallError::new(ErrorCode::Internal, format!("bind: {e}")))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| CallError::new(ErrorCode::Internal, e.to_string()))?;
                let app = Router::new()
                    .route("/{capability}", post(forward))
                    .with_state(this);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                Ok(format!("http://{addr}"))
            })
            .await
            .cloned()
    }

    /// Adds (or replaces) a server: validates it, then connects, lists and registers its tools
    /// in the background. Returns once the server is recorded.
    pub async fn add(self: &Arc<Self>, spec: McpServerSpec) -> Result<(), CallError> {
        spec.validate()?;
        let handler = self.handler_url().await?;
        if let Some(reg) = self.mesh.agent_registration() {
            if reg.handler != handler {
                return Err(CallError::bad_field(
                    "name",
                    format!(
                        "this node already serves agent {:?}; a node has one agent (run \
                         another node for the MCP server)",
                        reg.name
                    ),
                ));
            }
        }
        let mut g = lock(&self.servers);
        if !g.contains_key(&spec.name) && g.len() >= MCP_SERVERS_MAX {
            return Err(CallError::bad_field(
                "name",
                format!("at most {MCP_SERVERS_MAX} MCP servers per node"),
            ));
        }
        let task = tokio::spawn(supervise(Arc::downgrade(self), spec.clone()));
        g.insert(
            spec.name.clone(),
            ServerState {
                spec,
                peer: None,
                tools: vec![],
                status: "connecting".into(),
                task,
            },
        );
        Ok(())
    }

    /// Removes a server and unregisters its tools. False if there was none by that name.
    pub async fn remove(self: &Arc<Self>, name: &str) -> bool {
        let gone = lock(&self.servers).remove(name).is_some();
        if gone {
            self.publish().await;
        }
        gone
    }

    /// Every server and its state.
    pub fn status(&self) -> Vec<ServerStatus> {
        lock(&self.servers)
            .values()
            .map(|s| ServerStatus {
                name: s.spec.name.clone(),
                target: s
                    .spec
                    .url
                    .clone()
                    .unwrap_or_else(|| s.spec.command.clone().unwrap_or_default().join(" ")),
                status: s.status.clone(),
                tools: s
                    .tools
                    .iter()
                    .map(|t| (t.tool.clone(), t.spec.name.clone()))
                    .collect(),
            })
            .collect()
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut ServerState)) {
        if let Some(s) = lock(&self.servers).get_mut(name) {
            f(s);
        }
    }

    /// Registers the union of every connected server's tools as the node's agent. A
    /// capability offered by two servers goes to the first by server name; tools past the
    /// record's limits are left out and named in the server's status.
    async fn publish(&self) {
        let _one = self.publish.lock().await;
        let Some(handler) = self.handler.get().cloned() else {
            return;
        };
        let mut caps: Vec<CapabilitySpec> = vec![];
        let mut seen = std::collections::BTreeSet::new();
        for s in lock(&self.servers).values() {
            for t in &s.tools {
                if seen.insert(t.spec.name.clone()) {
                    caps.push(t.spec.clone());
                }
            }
        }
        caps.truncate(agentmesh_gossip::record::CAPABILITIES_MAX);
        let mut reg = AgentRegistration {
            name: self.agent.clone(),
            handler,
            capabilities: caps,
            max_concurrency: self.max_concurrency,
        };
        // Past the record's size budget, the last tools are left out (and logged).
        while let Err(e) = crate::contract::validate_registration(&reg) {
            if e.field != "capabilities" || reg.capabilities.pop().is_none() {
                break;
            }
            tracing::warn!("mcp: a tool left out: {e}");
        }
        if let Err(e) = self.mesh.register_agent(reg).await {
            tracing::warn!("mcp: registering the tools failed: {e}");
        }
    }

    fn route(&self, capability: &str) -> Option<(String, Peer<RoleClient>)> {
        let g = lock(&self.servers);
        g.values().find_map(|s| {
            let t = s.tools.iter().find(|t| t.spec.name == capability)?;
            Some((t.tool.clone(), s.peer.clone()?))
        })
    }
}

async fn connect(spec: &McpServerSpec, tx: mpsc::Sender<()>) -> Result<Client, String> {
    let handler = Notify(tx);
    if let Some(url) = &spec.url {
        let t = rmcp::transport::StreamableHttpClientTransport::from_uri(url.as_str());
        handler.serve(t).await.map_err(|e| e.to_string())
    } else {
        let argv = spec.command.clone().unwrap_or_default();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).kill_on_drop(true);
        let t = rmcp::transport::TokioChildProcess::new(cmd).map_err(|e| e.to_string())?;
        handler.serve(t).await.map_err(|e| e.to_string())
    }
}

/// Maps a server's tools to capability specs; tools that cannot be offered are reported.
fn entries(spec: &McpServerSpec, tools: &[Tool]) -> (Vec<ToolEntry>, Vec<String>) {
    let mut out = vec![];
    let mut problems = vec![];
    for t in tools {
        match tool_spec(t, spec.tools.get(t.name.as_ref())) {
            Ok(c) => {
                let probe = AgentRegistration {
                    name: "probe".into(),
                    handler: "http://127.0.0.1:1".into(),
                    capabilities: vec![c.clone()],
                    max_concurrency: 1,
                };
                match crate::contract::validate_registration(&probe) {
                    Ok(()) => out.push(ToolEntry {
                        tool: t.name.to_string(),
                        spec: c,
                    }),
                    Err(e) => problems.push(format!("tool {:?}: {e}", t.name)),
                }
            }
            Err(e) => problems.push(e),
        }
    }
    (out, problems)
}

/// Keeps one server joined: connect, list, register; re-list on `list_changed` and every
/// [`MCP_HEALTH_INTERVAL`]; on failure unregister its tools and reconnect.
async fn supervise(agents: std::sync::Weak<McpAgents>, spec: McpServerSpec) {
    loop {
        let (tx, mut rx) = mpsc::channel(1);
        let client = tokio::time::timeout(MCP_CONNECT_TIMEOUT, connect(&spec, tx)).await;
        let Some(this) = agents.upgrade() else { return };
        let client = match client {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                this.set(&spec.name, |s| s.status = format!("cannot connect: {e}"));
                drop(this);
                tokio::time::sleep(MCP_RECONNECT_INTERVAL).await;
                continue;
            }
            Err(_) => {
                this.set(&spec.name, |s| s.status = "connect timed out".into());
                drop(this);
                tokio::time::sleep(MCP_RECONNECT_INTERVAL).await;
                continue;
            }
        };
        let peer = client.peer().clone();
        this.set(&spec.name, |s| s.peer = Some(peer.clone()));
        drop(this);
        let mut last: Option<Vec<String>> = None;
        loop {
            let listed = tokio::time::timeout(MCP_CONNECT_TIMEOUT, peer.list_all_tools()).await;
            let Some(this) = agents.upgrade() else { return };
            let tools = match listed {
                Ok(Ok(t)) => t,
                _ => break,
            };
            let (es, problems) = entries(&spec, &tools);
            let fingerprint: Vec<String> = es
                .iter()
                .map(|e| serde_json::to_string(&e.spec).unwrap_or_default())
                .collect();
            let status = if problems.is_empty() {
                "connected".to_string()
            } else {
                format!("connected; left out: {}", problems.join("; "))
            };
            this.set(&spec.name, |s| s.status = status);
            if last.as_ref() != Some(&fingerprint) {
                tracing::info!(server = %spec.name, tools = es.len(), "mcp: server tools registered");
                this.set(&spec.name, |s| s.tools = es);
                this.publish().await;
                last = Some(fingerprint);
            }
            drop(this);
            tokio::select! {
                _ = rx.recv() => {}
                _ = tokio::time::sleep(MCP_HEALTH_INTERVAL) => {}
            }
            if peer.is_transport_closed() {
                break;
            }
        }
        let Some(this) = agents.upgrade() else { return };
        tracing::warn!(server = %spec.name, "mcp: server went away; its tools are unregistered");
        this.set(&spec.name, |s| {
            s.tools.clear();
            s.peer = None;
            s.status = "disconnected; reconnecting".into();
        });
        this.publish().await;
        drop(this);
        let _ = client.cancel().await;
        tokio::time::sleep(MCP_RECONNECT_INTERVAL).await;
    }
}

fn error(code: ErrorCode, msg: impl Into<String>) -> Response {
    let e = CallError::new(code, msg);
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = (status, Json(&e)).into_response();
    if let Ok(v) = serde_json::to_value(code) {
        if let Some(s) = v.as_str().and_then(|s| s.parse().ok()) {
            r.headers_mut().insert(H_ERROR, s);
        }
    }
    r
}

/// A tool result as a mesh answer body: structured content if any; one text block as
/// `{"text": …}`; otherwise `{"content": […]}`.
fn answer_body(r: &rmcp::model::CallToolResult) -> Value {
    if let Some(s) = &r.structured_content {
        return s.clone();
    }
    let blocks = serde_json::to_value(&r.content).unwrap_or(Value::Null);
    if let Some([one]) = blocks.as_array().map(|a| a.as_slice()) {
        if let Some(t) = one.get("text").and_then(|t| t.as_str()) {
            return json!({ "text": t });
        }
    }
    json!({ "content": blocks })
}

/// `POST {handler}/{capability}`: one inbound mesh call as `tools/call`.
async fn forward(
    State(agents): State<std::sync::Weak<McpAgents>>,
    Path(capability): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(this) = agents.upgrade() else {
        return error(ErrorCode::AgentUnreachable, "the node is stopping");
    };
    let Some((tool, peer)) = this.route(&capability) else {
        return error(
            ErrorCode::NoCapability,
            format!("no connected MCP server offers {capability}"),
        );
    };
    drop(this);
    let args: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(ErrorCode::BadRequest, format!("body is not JSON: {e}")),
        }
    };
    let Value::Object(arguments) = args else {
        return error(
            ErrorCode::BadRequest,
            "an MCP tool takes a JSON object as its arguments",
        );
    };
    let deadline_ms = headers
        .get(H_DEADLINE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(TOOL_DEADLINE_MS_DEFAULT);
    let mut params = CallToolRequestParams::new(tool);
    params.arguments = Some(arguments);
    match tokio::time::timeout(Duration::from_millis(deadline_ms), peer.call_tool(params)).await {
        Err(_) => error(
            ErrorCode::DeadlineExceeded,
            "the MCP tool did not answer in time",
        ),
        Ok(Err(e)) => error(ErrorCode::AgentError, format!("MCP server: {e}")),
        Ok(Ok(r)) if r.is_error == Some(true) => {
            // A tool error is the agent's 5xx: the caller sees agent_error with the body.
            (StatusCode::INTERNAL_SERVER_ERROR, Json(answer_body(&r))).into_response()
        }
        Ok(Ok(r)) => (StatusCode::OK, Json(answer_body(&r))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_validated() {
        let ok = McpServerSpec {
            name: "w".into(),
            url: Some("http://127.0.0.1:1/mcp".into()),
            command: None,
            tools: BTreeMap::new(),
        };
        assert!(ok.validate().is_ok());
        let both = McpServerSpec {
            command: Some(vec!["x".into()]),
            ..ok.clone()
        };
        assert_eq!(both.validate().unwrap_err().field.as_deref(), Some("url"));
        let neither = McpServerSpec {
            url: None,
            ..ok.clone()
        };
        assert!(neither.validate().is_err());
        let bad_url = McpServerSpec {
            url: Some("file:///etc/passwd".into()),
            ..ok.clone()
        };
        assert!(bad_url.validate().is_err());
        let bad_name = McpServerSpec {
            name: "a/b".into(),
            ..ok.clone()
        };
        assert!(bad_name.validate().is_err());
        let mut bad_map = ok.clone();
        bad_map.tools.insert(
            "t".into(),
            ToolOverride {
                capability: Some("Not A Name".into()),
                ..Default::default()
            },
        );
        assert_eq!(
            bad_map.validate().unwrap_err().field.as_deref(),
            Some("tools.t.capability")
        );
    }

    #[test]
    fn descriptions_are_cut_and_cleaned() {
        assert_eq!(short_description(Some(" a\nb ")).as_deref(), Some("a b"));
        let long = "é".repeat(TOOL_DESCRIPTION_LEN_MAX);
        let d = short_description(Some(&long)).unwrap();
        assert!(d.len() <= TOOL_DESCRIPTION_LEN_MAX);
        assert_eq!(short_description(Some("  ")), None);
    }
}
