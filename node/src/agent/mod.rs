//! The local agent: the pooled HTTP client the node hands calls to, and the demo agent.

pub mod client;
pub mod demo;
pub mod local;
