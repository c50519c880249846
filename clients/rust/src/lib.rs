//! Rust client for an agentmesh node's local API, for agents.
//!
//! An agent talks to the mesh through the node beside it (`http://127.0.0.1:7600` by default,
//! or `$AGENTMESH_API`; the bearer token, if the node sets one, from `$AGENTMESH_API_TOKEN`):
//!
//! ```no_run
//! # async fn doc() -> Result<(), agentmesh_client::MeshError> {
//! use agentmesh_client::{AgentRegistration, CallOptions, Capability, Client};
//! use std::time::Duration;
//!
//! let mesh = Client::from_env()?;
//! mesh.register(&AgentRegistration::new(
//!     "inventory-bot",
//!     "http://127.0.0.1:8101",
//!     [Capability::new("inventory.query")],
//! ))
//! .await?;
//! let answer = mesh.call("inventory.query", &serde_json::json!({"sku": "A-1"})).await?;
//! let opts = CallOptions::new().policy("latency").deadline(Duration::from_secs(2));
//! let full = mesh.call_with("inventory.query", &serde_json::json!({"sku": "A-1"}), &opts).await?;
//! println!("{answer} served by {}", full.served_by);
//! # Ok(()) }
//! ```
//!
//! An agent that calls other agents while serving a call wraps its handlers in [`MeshLayer`]
//! (a tower layer; axum's `Router::layer` takes it): its calls then carry the inbound chain,
//! deadline and trace headers, so loops are refused, deadlines shrink and traces continue
//! (see [`propagation`]). Every failure is a [`MeshError`] whose [`ErrorCode`] is the node's
//! stable error code; [`MeshError::to_response`] passes a failed onward call back typed.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
pub mod propagation;
pub mod stream;

pub use client::{
    AgentRegistration, CallOptions, CallResponse, Capability, Client, QuorumOptions, Registered,
    API_DEFAULT, DEADLINE_MS_MAX, DEADLINE_SLACK, REQUEST_TIMEOUT, RESPONSE_BYTES_MAX,
};
pub use error::{ErrorCode, MeshError, ERROR_TEXT_BYTES_MAX};
pub use propagation::{Inbound, MeshLayer, MeshService};
pub use stream::{EventStream, StreamEvent};

/// Response header naming the error code of a failed call; an agent copies it when it passes
/// a failed onward call back, so the code survives the hop.
pub const ERROR_HEADER: &str = "x-mesh-error";
