//! The agentmesh node library: QUIC transport, admission, gossip driver, call protocol,
//! routing and the runtime that composes them; plus the local API and CLI.
#![forbid(unsafe_code)]

pub mod contract;
pub mod api;
pub mod cli;
pub mod config;
pub mod demo_agent;
pub mod runtime;
