//! The agentmesh node library: QUIC transport, admission, gossip driver, call protocol,
//! routing and the runtime that composes them; plus the local API and CLI.
#![forbid(unsafe_code)]

pub mod contract;
pub mod api;
pub mod cli;
pub mod config;
pub mod demo_agent;
pub mod runtime;
pub mod admission;
pub mod call_proto;
pub mod frame;
pub mod transport;
pub mod agent_client;
pub mod callee;
pub mod caller;
pub mod gossip_driver;
pub mod router;
