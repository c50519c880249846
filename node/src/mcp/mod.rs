//! MCP (Model Context Protocol) in both directions, on the official Rust SDK (`rmcp`):
//! [`server`] serves the mesh's capabilities as MCP tools (Streamable HTTP at `/mcp` on the
//! local API, and `agentmesh mcp stdio`); [`agents`] joins MCP servers to the mesh as agents.
//! See docs/mcp.md.

pub mod agents;
pub mod server;
pub mod stdio;

use crate::runtime::MeshHandle;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;

/// Largest MCP request body, in bytes (a call body plus its JSON-RPC envelope).
pub const MCP_REQUEST_BYTES_MAX: usize = crate::contract::BODY_BYTES_MAX + 64 * 1024;

/// The Streamable HTTP service for `/mcp` over `mesh`, and the task that sends
/// `list_changed` notifications (the caller keeps it for the service's lifetime).
pub fn http_service(
    mesh: MeshHandle,
) -> (
    StreamableHttpService<server::MeshTools, LocalSessionManager>,
    tokio::task::JoinHandle<()>,
) {
    let sessions = Arc::new(server::Sessions::default());
    let watcher = tokio::spawn(server::watch_list_changes(mesh.clone(), sessions.clone()));
    let svc = StreamableHttpService::new(
        move || Ok(server::MeshTools::new(mesh.clone(), sessions.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_max_request_body_bytes(MCP_REQUEST_BYTES_MAX),
    );
    (svc, watcher)
}
