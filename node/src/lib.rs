//! The agentmesh node library: QUIC transport, admission, gossip driver, call protocol,
//! routing and the runtime that composes them; plus the local API and CLI.
#![forbid(unsafe_code)]

pub mod admission;
pub mod agent_client;
pub mod api;
pub mod audit;
pub mod breaker;
pub mod call_proto;
pub mod callee;
pub mod caller;
pub mod chain;
pub mod cli;
pub mod cli_config;
pub mod cli_security;
pub mod config;
pub mod contract;
pub mod demo_agent;
pub mod frame;
pub mod gossip_driver;
pub mod mesh_config;
pub mod policy;
pub mod rbac;
pub mod resilience;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod security;
pub mod shed;
pub mod transport;
