//! `/v1/mcp/…`: join MCP servers to the mesh at run time (see [`crate::mcp::agents`]).

use super::{ApiError, ApiState, API_BODY_BYTES_MAX};
use crate::contract::{CallError, ErrorCode};
use crate::mcp::agents::McpServerSpec;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// `PUT /v1/mcp/server`: adds or replaces an MCP server; its tools are registered as
/// capabilities once it is reached (see `GET /v1/mcp/servers`).
pub(crate) async fn put_server(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > API_BODY_BYTES_MAX {
        return Err(ApiError {
            status: Some(StatusCode::PAYLOAD_TOO_LARGE),
            err: CallError::bad_field("body", format!("at most {API_BODY_BYTES_MAX} bytes")),
        });
    }
    let spec: McpServerSpec = serde_json::from_slice(&body)
        .map_err(|e| CallError::bad_field("body", format!("not an MCP server spec: {e}")))?;
    let name = spec.name.clone();
    st.mcp.add(spec).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "server": name, "status": "connecting" })),
    )
        .into_response())
}

/// `GET /v1/mcp/servers`: every server, its state and the tools registered from it.
pub(crate) async fn get_servers(State(st): State<ApiState>) -> Response {
    Json(serde_json::json!({ "servers": st.mcp.status() })).into_response()
}

/// `DELETE /v1/mcp/server/{name}`: disconnects a server and unregisters its tools.
pub(crate) async fn delete_server(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if st.mcp.remove(&name).await {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(CallError::new(
            ErrorCode::NoCapability,
            format!("no MCP server named {name:?}"),
        )
        .into())
    }
}
