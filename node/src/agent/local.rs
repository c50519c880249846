//! The local agent: its registration, its in-flight count and limit, and the pool that
//! reaches it. Shared by the callee side and by routing when the local agent is chosen.

use crate::agent::client::{self, AgentRequest};
use crate::contract::{AgentRegistration, CallError, ErrorCode};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The local agent, its registration and its in-flight limit. Shared by the callee side and by
/// the router when the local agent is the chosen candidate.
#[derive(Debug)]
pub struct LocalAgent {
    // Shared, so a call reads it without copying its capability list.
    reg: RwLock<Option<Arc<AgentRegistration>>>,
    in_flight: Arc<AtomicU32>,
    draining: AtomicBool,
    client: client::AgentPool,
    /// Calls refused because the agent was at `max_concurrency`.
    pub overloaded_total: AtomicU64,
}

/// Holds one in-flight slot; releases it on drop.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU32>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalAgent {
    /// A local agent slot, initially with `reg`.
    pub fn new(reg: Option<AgentRegistration>) -> Self {
        LocalAgent {
            reg: RwLock::new(reg.map(Arc::new)),
            in_flight: Arc::new(AtomicU32::new(0)),
            draining: AtomicBool::new(false),
            client: client::pool(),
            overloaded_total: AtomicU64::new(0),
        }
    }

    /// The current registration.
    pub fn registration(&self) -> Option<Arc<AgentRegistration>> {
        self.reg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The registered agent's name.
    pub fn name(&self) -> Option<String> {
        self.reg
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.name.clone())
    }

    /// Replaces the registration.
    pub fn set_registration(&self, reg: Option<AgentRegistration>) {
        *self.reg.write().unwrap_or_else(|p| p.into_inner()) = reg.map(Arc::new);
    }

    /// Calls in flight to the local agent now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops taking new calls (graceful shutdown).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The agent's concurrency limit (0 without an agent).
    pub fn max_concurrency(&self) -> u32 {
        self.registration().map(|r| r.max_concurrency).unwrap_or(0)
    }

    /// Takes an in-flight slot, or answers why not.
    pub fn try_acquire(&self) -> Result<InFlightGuard, CallError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(CallError::new(ErrorCode::Overloaded, "node is draining"));
        }
        let max = self.max_concurrency();
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= max {
                self.overloaded_total.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::new(
                    ErrorCode::Overloaded,
                    format!("agent at its limit of {max} calls in flight"),
                ));
            }
            match self
                .in_flight
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(InFlightGuard(self.in_flight.clone())),
                Err(now) => cur = now,
            }
        }
    }

    /// The registration if it offers `capability`, else `no_capability`.
    pub fn offering(&self, capability: &str) -> Result<Arc<AgentRegistration>, CallError> {
        match self.registration() {
            Some(r) if r.capabilities.iter().any(|c| c.name == capability) => Ok(r),
            _ => Err(CallError::new(
                ErrorCode::NoCapability,
                format!("this node's agent does not offer {capability}"),
            )),
        }
    }

    /// Sends a request to the agent (see [`client::send`]).
    pub async fn invoke(&self, req: AgentRequest) -> Result<client::AgentResponse, CallError> {
        client::send(&self.client, req).await
    }
}
