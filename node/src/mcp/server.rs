//! The mesh as an MCP server: every capability in the mesh is a tool. `tools/list` lists them
//! (name, description, input and output schema); `tools/call` routes through the mesh exactly
//! like `POST /v1/call` ([`MeshHandle::call`]), and a mesh error is a tool error whose
//! structured content is the mesh's JSON error (`{"code": "no_capability", …}`). Clients that
//! finished initialization get `notifications/tools/list_changed` when the mesh's
//! capabilities change.
//!
//! Routing hints go in the request's `_meta`: [`META_POLICY`], [`META_DEADLINE_MS`],
//! [`META_PREFER`], plus the standard `traceparent` / `tracestate`.

use crate::contract::{CallError, CallRequest, ErrorCode};
use crate::runtime::MeshHandle;
use futures::StreamExt;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `_meta` key naming a routing policy.
pub const META_POLICY: &str = "agentmesh.policy";
/// `_meta` key giving the call's deadline in ms.
pub const META_DEADLINE_MS: &str = "agentmesh.deadline_ms";
/// `_meta` key naming a preferred agent or node.
pub const META_PREFER: &str = "agentmesh.prefer";
/// Most MCP sessions notified of list changes (older ones are dropped first).
pub const MCP_SESSIONS_MAX: usize = 256;
/// How often the capability set is compared for `list_changed`.
pub const LIST_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Most tools listed (the mesh's capabilities, sorted by name).
pub const MCP_TOOLS_MAX: usize = 1024;
/// Largest answer body turned into a tool result, in bytes (the mesh's body limit).
pub const MCP_RESULT_BYTES_MAX: usize = crate::contract::BODY_BYTES_MAX;

/// The sessions to notify of list changes.
#[derive(Default)]
pub struct Sessions {
    peers: Mutex<Vec<Peer<RoleServer>>>,
}

impl Sessions {
    fn add(&self, p: Peer<RoleServer>) {
        let mut g = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|p| !p.is_transport_closed());
        if g.len() >= MCP_SESSIONS_MAX {
            g.remove(0);
        }
        g.push(p);
    }

    /// Sends `notifications/tools/list_changed` to every open session; returns how many got it.
    pub async fn notify_list_changed(&self) -> usize {
        let peers: Vec<Peer<RoleServer>> = {
            let mut g = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            g.retain(|p| !p.is_transport_closed());
            g.clone()
        };
        let mut sent = 0;
        for p in peers {
            if p.notify_tool_list_changed().await.is_ok() {
                sent += 1;
            }
        }
        sent
    }
}

/// The MCP server handler over a node. Cheap to clone (one per MCP session).
#[derive(Clone)]
pub struct MeshTools {
    mesh: MeshHandle,
    sessions: Arc<Sessions>,
}

impl MeshTools {
    /// A handler over `mesh`, registering sessions in `sessions`.
    pub fn new(mesh: MeshHandle, sessions: Arc<Sessions>) -> Self {
        MeshTools { mesh, sessions }
    }
}

/// Watches the mesh's capability set and notifies every session when it changes. Runs until
/// the task is dropped.
pub async fn watch_list_changes(mesh: MeshHandle, sessions: Arc<Sessions>) {
    let mut last = mesh.capability_fingerprint();
    let mut tick = tokio::time::interval(LIST_POLL_INTERVAL);
    loop {
        tick.tick().await;
        let now = mesh.capability_fingerprint();
        if now != last {
            last = now;
            let n = sessions.notify_list_changed().await;
            tracing::debug!(sessions = n, "mcp: tools/list_changed sent");
        }
    }
}

fn object_schema(v: Option<Value>) -> Arc<JsonObject> {
    match v {
        Some(Value::Object(m)) => Arc::new(m),
        // MCP needs an object schema; `true` or a missing schema accept any object.
        _ => Arc::new(
            json!({"type": "object"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    }
}

/// The mesh error as a tool error: structured content is the API's JSON error.
pub fn tool_error(e: &CallError) -> CallToolResult {
    CallToolResult::structured_error(serde_json::to_value(e).unwrap_or(Value::Null))
}

fn meta_str(meta: &JsonObject, key: &str) -> Option<String> {
    meta.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

/// Builds the mesh call for a `tools/call`: the arguments are the JSON body, `_meta` carries
/// the routing hints. A bad hint is a `bad_request` naming `_meta.<key>`.
pub fn call_request(
    name: &str,
    arguments: Option<JsonObject>,
    meta: &JsonObject,
) -> Result<CallRequest, CallError> {
    let body = serde_json::to_vec(&Value::Object(arguments.unwrap_or_default()))
        .map_err(|e| CallError::new(ErrorCode::Internal, e.to_string()))?;
    let deadline_ms = match meta.get(META_DEADLINE_MS) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|d| (1..=MCP_DEADLINE_MS_MAX).contains(d))
                .ok_or_else(|| {
                    CallError::bad_field(
                        &format!("_meta.{META_DEADLINE_MS}"),
                        format!("must be an integer 1 to {} (ms)", MCP_DEADLINE_MS_MAX),
                    )
                })?,
        ),
    };
    for key in [META_POLICY, META_PREFER] {
        if let Some(v) = meta.get(key) {
            let ok = v
                .as_str()
                .is_some_and(|s| !s.is_empty() && s.len() <= ROUTING_HINT_LEN_MAX);
            if !ok {
                return Err(CallError::bad_field(
                    &format!("_meta.{key}"),
                    format!("must be a string of 1 to {ROUTING_HINT_LEN_MAX} bytes"),
                ));
            }
        }
    }
    Ok(CallRequest {
        capability: name.to_string(),
        deadline_ms,
        policy: meta_str(meta, META_POLICY),
        prefer: meta_str(meta, META_PREFER),
        traceparent: meta_str(meta, "traceparent").filter(|t| t.len() <= 128),
        tracestate: meta_str(meta, "tracestate").filter(|t| t.len() <= 512),
        content_type: Some("application/json".into()),
        body: body.into(),
        ..Default::default()
    })
}

/// Largest deadline a tool call may ask for, in ms (as the HTTP API's).
pub const MCP_DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest policy or prefer hint, in bytes (as the HTTP API's).
pub const ROUTING_HINT_LEN_MAX: usize = 128;

/// Routes one tool call through the mesh and turns the answer into a tool result: a JSON
/// object answer is structured content; any other answer is text; a status ≥ 400 or a mesh
/// error is a tool error.
pub async fn route(mesh: &MeshHandle, req: CallRequest) -> CallToolResult {
    let resp = match mesh.call(req).await {
        Ok(r) => r,
        Err(e) => return tool_error(&e),
    };
    let mut body = Vec::new();
    let mut stream = resp.body;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if body.len() + c.len() <= MCP_RESULT_BYTES_MAX => body.extend_from_slice(&c),
            Ok(_) => {
                return tool_error(&CallError::new(
                    ErrorCode::AgentError,
                    format!("answer larger than {MCP_RESULT_BYTES_MAX} bytes"),
                ))
            }
            Err(e) => {
                return tool_error(&CallError::new(
                    ErrorCode::AgentUnreachable,
                    format!("answer broke off: {e}"),
                ))
            }
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if resp.status >= 400 {
        let mut e = CallError::new(
            ErrorCode::AgentError,
            format!("the agent answered {}", resp.status),
        );
        e.status = Some(resp.status);
        e.body = Some(text);
        return tool_error(&e);
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => CallToolResult::structured(v),
        _ => CallToolResult::success(vec![ContentBlock::text(text)]),
    }
}

impl ServerHandler for MeshTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("agentmesh", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Every tool is a capability of the agentmesh mesh; calls are routed to the best \
             agent offering it. Routing hints go in _meta: agentmesh.policy, \
             agentmesh.deadline_ms, agentmesh.prefer.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self
            .mesh
            .capability_details()
            .await
            .into_iter()
            .take(MCP_TOOLS_MAX)
            .map(|d| {
                let mut t = Tool::new(
                    d.name,
                    d.description.unwrap_or_default(),
                    object_schema(d.input_schema),
                );
                if let Some(Value::Object(o)) = d.output_schema {
                    t.output_schema = Some(Arc::new(o));
                }
                t
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let mut meta = context.meta.0 .0.clone();
        if let Some(m) = &request.meta {
            meta.extend(m.0 .0.clone());
        }
        let req = match call_request(&request.name, request.arguments, &meta) {
            Ok(r) => r,
            Err(e) => return Ok(tool_error(&e).into()),
        };
        Ok(route(&self.mesh, req).await.into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.sessions.add(context.peer);
    }
}
