//! Deterministic discrete-event simulator for agentmesh gossip: thousands of real
//! `agentmesh-gossip` state machines over a modelled network (latency, loss, duplication,
//! reordering, partitions, crashes, stalls) with adversaries. One seed, one run, byte for byte.

pub mod adversary;
pub mod cache;
pub mod queue;
pub mod quorum;
pub mod scenario;
pub mod security;
pub mod world;

pub use scenario::{run, Params, Report, SCENARIOS};
