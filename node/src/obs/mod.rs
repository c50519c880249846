//! Observability: Prometheus metrics, OpenTelemetry spans, the traffic matrix and the mesh
//! view behind the dashboard.

pub mod exposition;
pub mod failures;
pub mod mesh_view;
pub mod metrics;
pub mod otlp_http;
pub mod telemetry;
pub mod traffic;
