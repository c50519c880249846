//! Resilience mechanisms, each a small state machine with no I/O: circuit breakers, retries
//! and their budget, hedging, adaptive concurrency limits, load shedding and loop refusal
//! (the call chain).

pub mod adaptive;
pub mod breaker;
pub mod chain;
pub mod hedge;
pub mod retry;
pub mod shed;
