//! The agentmesh node: the driver around the sans-IO gossip core, and the product.
//!
//! Folders follow a call and the planes around it (ARCHITECTURE.md has the map). From the
//! bottom up, each folder uses only the ones above it in this list:
//! `contract` (shared types and rules) → `net` (QUIC transport, call plane, framing) →
//! `obs` (metrics, traces, traffic) → `security` (admission, RBAC, audit, vote signing) →
//! `membership` (the gossip driver) → `agent` (the local agent over HTTP) → `resilience`
//! (breakers, retries, hedging, limits, shedding, loop refusal) → `routing` (candidates,
//! policies, settings) → `call` (the outbound pipeline, caller, callee) → `runtime` (composes
//! one node) → `quorum`, `workflow`, `a2a` → `config` (`node.toml`) → `api` → `cli`.
#![forbid(unsafe_code)]

pub mod a2a;
pub mod agent;
pub mod api;
pub mod call;
pub mod cli;
pub mod config;
pub mod contract;
pub mod mcp;
pub mod membership;
pub mod net;
pub mod obs;
pub mod quorum;
pub mod resilience;
pub mod routing;
pub mod runtime;
pub mod security;
pub mod workflow;
