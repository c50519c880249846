//! The agentmesh node library: QUIC transport, admission, gossip driver, call protocol,
//! routing and the runtime that composes them; plus the local API and CLI.
#![forbid(unsafe_code)]

pub mod a2a;
pub mod a2a_api;
pub mod a2a_bridge;
pub mod adaptive;
pub mod admission;
pub mod agent_client;
pub mod api;
pub mod api_workflow;
pub mod audit;
pub mod audit_proto;
pub mod breaker;
pub mod call_proto;
pub mod callee;
pub mod caller;
pub mod chain;
pub mod cli;
pub mod cli_config;
pub mod cli_security;
pub mod cli_top;
pub mod cli_workflow;
pub mod config;
pub mod contract;
pub mod demo_agent;
pub mod frame;
pub mod gossip_driver;
pub mod hedge;
pub mod mesh_config;
pub mod mesh_view;
pub mod metrics;
pub mod obs_api;
pub mod policy;
pub mod quorum;
pub mod rbac;
pub mod resilience;
pub mod retry;
pub mod router;
pub mod runtime;
pub mod security;
pub mod shed;
pub mod stream_pool;
pub mod telemetry;
pub mod traffic;
pub mod transport;
pub mod workflow;
