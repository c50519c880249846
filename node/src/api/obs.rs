//! The observability endpoints: `/metrics`, `/v1/mesh/matrix`, `/v1/mesh/summary` and the
//! dashboard at `/ui`.

use crate::runtime::MeshHandle;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The dashboard page (HTML, CSS and script in one file; no external assets).
pub const UI_HTML: &str = include_str!("ui.html");

/// `GET /metrics`: OpenMetrics when `accept` asks for it, else the Prometheus text format.
pub fn metrics_response(mesh: &MeshHandle, accept: Option<&str>) -> Response {
    use crate::obs::exposition::{negotiate, to_text_004, Format};
    let format = negotiate(accept);
    let text = match format {
        Format::OpenMetrics => mesh.metrics_text(),
        Format::Text004 => to_text_004(&mesh.metrics_text()),
    };
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        text,
    )
        .into_response()
}

/// `GET /v1/mesh/matrix`.
pub fn matrix_response(mesh: &MeshHandle) -> Response {
    Json(mesh.mesh_matrix()).into_response()
}

/// `GET /v1/mesh/summary`.
pub fn summary_response(mesh: &MeshHandle) -> Response {
    Json(mesh.mesh_summary()).into_response()
}

/// `GET /ui`.
pub fn ui_response() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        UI_HTML,
    )
        .into_response()
}
