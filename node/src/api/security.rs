//! Security endpoints of the local API (a child module of `api`): status, revocations, the
//! root-signed policy and audit queries.

use super::{bad, read_body, ApiError, ApiState};
use crate::security::audit::AuditQuery;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Largest revocation or policy body (hex of the signed envelope), in bytes.
pub const SIGNED_BODY_BYTES_MAX: usize = 2 * crate::security::SIGNED_POLICY_BYTES_MAX + 64;

fn unhex(bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| bad("body", "expected hex text"))?;
    hex::decode(text.trim()).map_err(|_| bad("body", "expected hex text"))
}

/// `GET /v1/security`: roles, policy, audit log, revoked nodes and counters.
pub async fn get_security(State(st): State<ApiState>) -> Response {
    Json(st.mesh.security_report()).into_response()
}

/// `POST /v1/revocations`: body is the hex of a root-signed revocation.
pub async fn post_revocation(State(st): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = unhex(&read_body(body, SIGNED_BODY_BYTES_MAX).await?)?;
    let r = agentmesh_crypto::SignedRevocation::from_bytes(&bytes)
        .map_err(|e| bad("body", format!("revocation: {e}")))?;
    let id = st.mesh.revoke(r).await?;
    Ok(Json(serde_json::json!({ "revoked": id.to_string() })).into_response())
}

/// `POST /v1/policy`: body is the hex of a root-signed policy; adopted if newer.
pub async fn post_policy(State(st): State<ApiState>, body: Body) -> Result<Response, ApiError> {
    let bytes = unhex(&read_body(body, SIGNED_BODY_BYTES_MAX).await?)?;
    let v = st.mesh.push_policy(&bytes).await?;
    Ok(Json(serde_json::json!({ "adopted": v.is_some(), "version": v })).into_response())
}

/// Longest text value (`capability`, `agent`, `node`) of an audit query, in bytes.
pub const AUDIT_QUERY_TEXT_LEN_MAX: usize = 256;
/// The values `decision` may take.
pub const AUDIT_DECISIONS: [&str; 3] = ["allow", "deny", "audit_only_deny"];

/// Parses `capability, agent, node, decision, since_ms, until_ms, limit, mesh` from a query
/// string; anything else, a value that is not UTF-8, too long or has control characters, or
/// a decision outside [`AUDIT_DECISIONS`] is a `bad_request` naming the parameter.
pub fn parse_audit_query(query: &str) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery::default();
    for (k, v) in super::query::query_pairs(query)? {
        let k = k.as_str();
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(k, "expected a whole number"))
        };
        let text = |v: String| {
            if v.is_empty() || v.len() > AUDIT_QUERY_TEXT_LEN_MAX || v.chars().any(char::is_control)
            {
                return Err(bad(
                    k,
                    format!("must be 1 to {AUDIT_QUERY_TEXT_LEN_MAX} printable bytes"),
                ));
            }
            Ok(Some(v))
        };
        match k {
            "capability" => q.capability = text(v)?,
            "agent" => q.agent = text(v)?,
            "node" => q.node = text(v)?,
            "decision" if AUDIT_DECISIONS.contains(&v.as_str()) => q.decision = Some(v),
            "decision" => return Err(bad(k, format!("expected one of {AUDIT_DECISIONS:?}"))),
            "since_ms" => q.since_ms = Some(num(&v)?),
            "until_ms" => q.until_ms = Some(num(&v)?),
            "limit" => q.limit = Some(num(&v)? as usize),
            "mesh" if matches!(v.as_str(), "" | "true" | "1" | "false" | "0") => {}
            "mesh" => return Err(bad(k, "expected true or false")),
            _ => return Err(bad(k, "unknown audit query parameter")),
        }
    }
    Ok(q)
}

/// `GET /v1/audit?...`: entries of this node's audit log matching the query; with
/// `mesh=true`, also those of every other live member that allows this node `mesh.audit`
/// (`{node_id, entries, nodes: [{node_id, entries, truncated} | {node_id, code, error}]}`).
pub async fn get_audit(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let raw = query.as_deref().unwrap_or("");
    let q = parse_audit_query(raw)?;
    let mesh = raw
        .split('&')
        .any(|p| p == "mesh=true" || p == "mesh=1" || p == "mesh");
    let me = st.mesh.node_id().to_string();
    let entries = st.mesh.audit_local(q.clone()).await?;
    if !mesh {
        return Ok(Json(serde_json::json!({ "node_id": me, "entries": entries })).into_response());
    }
    let mut nodes = vec![serde_json::json!({ "node_id": me, "entries": entries })];
    for a in st.mesh.audit_mesh(&q).await {
        nodes.push(match a.result {
            Ok((entries, truncated)) => serde_json::json!({
                "node_id": a.node_id.to_string(),
                "entries": entries,
                "truncated": truncated,
            }),
            Err(e) => serde_json::json!({
                "node_id": a.node_id.to_string(),
                "code": e.code,
                "error": e.message,
            }),
        });
    }
    Ok(Json(serde_json::json!({ "node_id": me, "nodes": nodes })).into_response())
}

/// `GET /v1/audit/witnessed?node=<id>`: the newest audit checkpoint of `node` this node saw in
/// gossip (`{node, by, size, head, sig, seen_ms}`; `size: null` if none), for
/// `agentmesh audit verify --witness`.
pub async fn get_witnessed(
    State(st): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let raw = query.as_deref().unwrap_or("");
    let mut node = None;
    for (k, v) in crate::api::query::query_pairs(raw)? {
        match k.as_str() {
            "node" => {
                node = Some(
                    v.parse::<agentmesh_crypto::NodeId>()
                        .map_err(|_| bad("node", "not a node id"))?,
                )
            }
            _ => return Err(bad(&k, "unknown parameter")),
        }
    }
    let node = node.ok_or_else(|| bad("node", "required"))?;
    let me = st.mesh.node_id().to_string();
    let v = match st.mesh.witnessed(&node) {
        Some(s) => serde_json::json!({
            "node": node.to_string(),
            "by": me,
            "size": s.checkpoint.checkpoint.size,
            "head": hex::encode(s.checkpoint.checkpoint.head),
            "sig": hex::encode(s.checkpoint.sig.0),
            "seen_ms": s.seen_ms,
        }),
        None => serde_json::json!({ "node": node.to_string(), "by": me, "size": null }),
    };
    Ok(Json(v).into_response())
}
