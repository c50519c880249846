//! Lifeguard suspicion timers: start at a maximum and shrink towards a minimum as independent
//! confirmations arrive: `timeout = max(min, max − (max − min)·ln(c+1)/ln(k+1))`.

use agentmesh_crypto::NodeId;

use crate::config::Config;
use crate::member::SignedAccusation;
use crate::time::Millis;
use std::sync::Arc;

/// Most confirmations remembered per suspicion (`k` never needs more).
pub const CONFIRMATIONS_MAX: usize = 16;

/// One running suspicion.
#[derive(Debug, Clone)]
pub struct Suspicion {
    start: Millis,
    min_ms: u64,
    max_ms: u64,
    k: u32,
    accusers: Vec<NodeId>,
    saturated: bool,
    evidence: Option<Arc<SignedAccusation>>,
    not_before: Millis,
}

/// The Lifeguard minimum and maximum suspicion timeouts for a cluster of `n` live members.
pub fn suspicion_bounds(cfg: &Config, n: usize) -> (u64, u64) {
    let scale = (n.max(10) as f64).log10();
    let min = cfg.suspicion_alpha * scale * cfg.protocol_period_ms as f64;
    let max = cfg.suspicion_beta * min;
    (min as u64, max as u64)
}

/// The timeout after `c` independent confirmations out of `k` expected.
pub fn suspicion_timeout(min_ms: u64, max_ms: u64, c: u32, k: u32) -> u64 {
    if k == 0 {
        return min_ms;
    }
    let frac = ((c as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
    let t = max_ms as f64 - (max_ms - min_ms) as f64 * frac;
    (t.floor() as u64).max(min_ms)
}

impl Suspicion {
    /// Starts a suspicion raised by `accuser` in a cluster of `n` live members.
    pub fn new(cfg: &Config, n: usize, accuser: NodeId, now: Millis) -> Self {
        let (min_ms, max_ms) = suspicion_bounds(cfg, n);
        // With few members there cannot be k independent confirmations (memberlist: n − 2).
        let k = cfg
            .suspicion_confirmations_k
            .min(n.saturating_sub(2) as u32);
        Suspicion {
            start: now,
            min_ms,
            max_ms,
            k,
            accusers: vec![accuser],
            saturated: false,
            evidence: None,
            not_before: 0,
        }
    }

    /// Records a confirmation. Returns true if it was a new, independent one.
    pub fn confirm(&mut self, accuser: NodeId) -> bool {
        if self.accusers.contains(&accuser) || self.accusers.len() >= CONFIRMATIONS_MAX {
            return false;
        }
        self.accusers.push(accuser);
        true
    }

    /// Distinct accusers, the first included.
    pub fn accusers(&self) -> usize {
        self.accusers.len()
    }

    /// Holds the verdict until at least `t` (to gather evidence of our own first).
    pub fn defer(&mut self, t: Millis) {
        self.not_before = self.not_before.max(t);
    }

    /// True if `id` is among the accusers.
    pub fn accused_by(&self, id: &NodeId) -> bool {
        self.accusers.contains(id)
    }

    /// Keeps the latest signed accusation, to show the suspect and to relay.
    pub fn set_evidence(&mut self, a: Arc<SignedAccusation>) {
        self.evidence = Some(a);
    }

    /// The latest signed accusation held.
    pub fn evidence(&self) -> Option<&Arc<SignedAccusation>> {
        self.evidence.as_ref()
    }

    /// Treats the suspicion as fully confirmed (another member already declared death): the
    /// timeout drops to its minimum, measured from the start.
    pub fn saturate(&mut self) {
        self.saturated = true;
    }

    /// Confirmations beyond the first accusation.
    pub fn confirmations(&self) -> u32 {
        self.accusers.len().saturating_sub(1) as u32
    }

    /// When the suspect is declared dead.
    pub fn deadline(&self) -> Millis {
        let c = if self.saturated {
            self.k
        } else {
            self.confirmations()
        };
        (self.start + suspicion_timeout(self.min_ms, self.max_ms, c, self.k)).max(self.not_before)
    }
}
