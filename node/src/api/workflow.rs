//! The local API's workflow and quorum routes (mounted by [`crate::api::router`]):
//! `GET /v1/workflows`, `POST /v1/workflows/{name}/run`, `POST /v1/workflows/run` (ad hoc)
//! and `POST /v1/quorum/{capability}`.

use crate::api::{read_body, valid_traceparent, ApiError, ApiState};
use crate::contract::{CallError, ErrorCode};
use crate::quorum::QuorumRequest;
use crate::workflow::{self, Workflow};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// Largest workflow run or quorum request body, in bytes.
pub const WORKFLOW_REQUEST_BYTES_MAX: usize = crate::contract::BODY_BYTES_MAX;

/// `POST /v1/workflows/{name}/run` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    input: serde_json::Value,
}

/// `POST /v1/workflows/run` body: the workflow itself (TOML text, or the same as a JSON
/// object) and its input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdhocBody {
    workflow: serde_json::Value,
    #[serde(default)]
    input: serde_json::Value,
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| CallError::bad_field("body", e.to_string()).into());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| msg.split(p).nth(1))
            .and_then(|r| r.split('`').next())
            .unwrap_or("body")
            .to_string();
        CallError::bad_field(&field, msg).into()
    })
}

fn traceparent(h: &HeaderMap) -> Option<String> {
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_string)
}

fn workflow_error(e: workflow::WorkflowError) -> ApiError {
    let mut err = CallError::bad_field(&e.field, e.to_string());
    err.body = Some(e.step);
    err.into()
}

/// A run's answer: 200 when completed; a failed run carries the failing step's error code
/// and HTTP status, with the full record (`failed_step`, `steps`) in the body.
fn run_response(r: workflow::RunResult) -> Response {
    let status = match &r.error {
        None => StatusCode::OK,
        Some(e) => StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
    };
    let mut v = serde_json::to_value(&r).unwrap_or_default();
    if let (Some(e), Some(obj)) = (&r.error, v.as_object_mut()) {
        obj.insert(
            "code".into(),
            serde_json::to_value(e.code).unwrap_or_default(),
        );
        obj.insert(
            "message".into(),
            format!(
                "workflow {} failed at step {}: {}",
                r.workflow,
                r.failed_step.as_deref().unwrap_or("-"),
                e.message
            )
            .into(),
        );
    }
    (status, Json(v)).into_response()
}

/// `GET /v1/workflows`: the workflows loaded from the node config.
pub async fn get_workflows(State(st): State<ApiState>) -> Response {
    let list: Vec<serde_json::Value> = st
        .workflows
        .list()
        .into_iter()
        .map(|(name, description)| serde_json::json!({"name": name, "description": description}))
        .collect();
    Json(serde_json::json!({ "workflows": list })).into_response()
}

/// `POST /v1/workflows/{name}/run` with `{"input": …}`.
pub async fn post_run(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, WORKFLOW_REQUEST_BYTES_MAX).await?;
    let b: RunBody = parse_json(&bytes)?;
    let Some(wf) = st.workflows.get(&name) else {
        let mut err = CallError::new(
            ErrorCode::NotFound,
            format!("no workflow {name:?} is loaded (see GET /v1/workflows)"),
        );
        err.field = Some("name".into());
        return Err(err.into());
    };
    let r = workflow::run(&st.mesh, &wf, b.input, traceparent(&headers).as_deref()).await;
    Ok(run_response(r))
}

/// `POST /v1/workflows/run` with `{"workflow": "<toml>" | {…}, "input": …}`.
pub async fn post_adhoc_run(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, WORKFLOW_REQUEST_BYTES_MAX).await?;
    let b: AdhocBody = parse_json(&bytes)?;
    let wf = match b.workflow {
        serde_json::Value::String(text) => Workflow::from_toml(&text, "<request>"),
        v @ serde_json::Value::Object(_) => Workflow::from_json(v, "<request>"),
        _ => {
            return Err(CallError::bad_field(
                "workflow",
                "expected the workflow as TOML text or a JSON object",
            )
            .into())
        }
    }
    .map_err(workflow_error)?;
    let r = workflow::run(&st.mesh, &wf, b.input, traceparent(&headers).as_deref()).await;
    Ok(run_response(r))
}

/// `POST /v1/quorum/{capability}` with `{"payload", "n", "f"?, "key"?, "deadline_ms"?,
/// "review"?, "policy"?}`.
pub async fn post_quorum(
    State(st): State<ApiState>,
    Path(capability): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if !crate::contract::names::is_capability_name(&capability) {
        return Err(CallError::bad_field("capability", "not a capability name").into());
    }
    let bytes = read_body(body, WORKFLOW_REQUEST_BYTES_MAX).await?;
    let req: QuorumRequest = parse_json(&bytes)?;
    let d = crate::quorum::run(&st.mesh, &capability, req, traceparent(&headers)).await?;
    Ok(Json(d).into_response())
}
