//! `agentmesh mcp stdio`: an MCP server on stdin/stdout that bridges to a node's `/mcp`, for
//! desktop hosts that launch MCP servers as processes. `tools/list` and `tools/call` are passed
//! to the node (so the node's routing, RBAC, audit and errors apply unchanged), and the node's
//! `list_changed` notifications are passed back.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, Peer, RequestContext};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{
    ClientHandler, ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceExt,
};
use std::sync::{Arc, Mutex};

/// The stdio side's peer, once the host initialized it (to pass `list_changed` on).
type HostSlot = Arc<Mutex<Option<Peer<RoleServer>>>>;

/// The client side of the bridge: passes the node's `list_changed` to the host.
struct Upstream(HostSlot);

impl ClientHandler for Upstream {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let host = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = host {
            let _ = h.notify_tool_list_changed().await;
        }
    }
}

/// The server side of the bridge, facing the host on stdio.
#[derive(Clone)]
struct Bridge {
    node: Peer<RoleClient>,
    host: HostSlot,
}

fn upstream_error(e: impl std::fmt::Display) -> McpError {
    McpError::internal_error(format!("agentmesh node: {e}"), None)
}

impl ServerHandler for Bridge {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new(
            "agentmesh-stdio",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self.node.list_all_tools().await.map_err(upstream_error)?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let mut request = request;
        // Routing hints in the request context's _meta travel on to the node.
        if request.meta.is_none() && !context.meta.0 .0.is_empty() {
            request.meta = Some(context.meta.clone());
        }
        let r = self.node.call_tool(request).await.map_err(upstream_error)?;
        Ok(r.into())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        *self.host.lock().unwrap_or_else(|p| p.into_inner()) = Some(context.peer);
    }
}

/// Runs the bridge until stdin closes: `mcp_url` is the node's `/mcp`, `token` its API token.
pub async fn run(mcp_url: &str, token: Option<String>) -> anyhow::Result<()> {
    let host: HostSlot = Arc::new(Mutex::new(None));
    let mut cfg = StreamableHttpClientTransportConfig::with_uri(mcp_url.to_string());
    if let Some(t) = token {
        cfg = cfg.auth_header(t);
    }
    let transport = StreamableHttpClientTransport::from_config(cfg);
    let node = Upstream(host.clone())
        .serve(transport)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the node's MCP endpoint {mcp_url}: {e}"))?;
    let bridge = Bridge {
        node: node.peer().clone(),
        host,
    };
    let server = bridge
        .serve(rmcp::transport::io::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("stdio: {e}"))?;
    let _ = server.waiting().await;
    let _ = node.cancel().await;
    Ok(())
}
