//! Adaptive concurrency limits per agent (AIMD on latency, after Netflix's concurrency-limits).
//!
//! Each callee agent gets a limit on the calls this node has in flight to it. A call that comes
//! back no slower than `tolerance` times the agent's no-load latency, while the limit was in
//! use, raises the limit by one (additive increase). A slow answer, an overload or a timeout
//! cuts it by `backoff_ratio` (multiplicative decrease). So an agent that slows down under load
//! is capped near the concurrency it sustains instead of being buried; the router skips an
//! agent whose limit is reached. Pure state: the caller passes latencies in and asks for slots.

use serde::{Deserialize, Serialize};

/// Largest `max_limit` accepted.
pub const ADAPTIVE_LIMIT_MAX: u32 = 10_000;
/// Weight with which the no-load latency estimate drifts up towards a slower sample, so a
/// lasting change of the agent is learned while a burst of slow calls is not.
pub const NOLOAD_DRIFT: f64 = 0.01;

/// Settings of the adaptive limit (per capability section; state is per agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Apply an adaptive limit to each agent of the capability.
    pub enabled: bool,
    /// Limit before anything was observed.
    pub initial_limit: u32,
    /// The limit never goes below this.
    pub min_limit: u32,
    /// The limit never goes above this.
    pub max_limit: u32,
    /// Factor applied to the limit on a drop, in (0, 1).
    pub backoff_ratio: f64,
    /// A sample slower than `tolerance` × no-load latency counts as a drop (≥ 1).
    pub tolerance: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            enabled: false,
            initial_limit: 20,
            min_limit: 1,
            max_limit: 200,
            backoff_ratio: 0.9,
            tolerance: 2.0,
        }
    }
}

impl AdaptiveConfig {
    /// Checks the settings; the error names the key (relative to the section) and the valid values.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, v: String| Err((k.to_string(), v));
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return err("min_limit", "valid: 1 to max_limit".into());
        }
        if self.max_limit > ADAPTIVE_LIMIT_MAX {
            return err(
                "max_limit",
                format!("valid: min_limit to {ADAPTIVE_LIMIT_MAX}"),
            );
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return err("initial_limit", "valid: min_limit to max_limit".into());
        }
        if !(self.backoff_ratio > 0.0 && self.backoff_ratio < 1.0) {
            return err("backoff_ratio", "valid: strictly between 0 and 1".into());
        }
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return err("tolerance", "valid: a finite number ≥ 1".into());
        }
        Ok(())
    }
}

/// What an attempt's outcome says about the agent's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// It answered; the latency decides.
    Answered,
    /// It was overloaded, timed out or unreachable: back off.
    Dropped,
    /// Nothing learned (cancelled, or a failure unrelated to load).
    Ignored,
}

/// The limit and in-flight count of one agent.
#[derive(Debug, Clone, Default)]
pub struct AimdLimiter {
    limit: Option<f64>,
    in_flight: u32,
    noload_ms: Option<f64>,
}

impl AimdLimiter {
    /// The limit now.
    pub fn limit(&self, cfg: &AdaptiveConfig) -> u32 {
        self.limit.unwrap_or(cfg.initial_limit as f64).floor() as u32
    }

    /// Calls in flight counted against the limit.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// True if a call may start now.
    pub fn has_room(&self, cfg: &AdaptiveConfig) -> bool {
        self.in_flight < self.limit(cfg)
    }

    /// Takes a slot if there is room; returns whether it did.
    pub fn try_acquire(&mut self, cfg: &AdaptiveConfig) -> bool {
        if !self.has_room(cfg) {
            return false;
        }
        self.in_flight += 1;
        true
    }

    /// Gives a slot back with what the call showed.
    pub fn release(&mut self, cfg: &AdaptiveConfig, rtt_ms: f64, sample: Sample) {
        let busy = self.in_flight as f64 * 2.0 >= self.limit(cfg) as f64;
        self.in_flight = self.in_flight.saturating_sub(1);
        let limit = self.limit.unwrap_or(cfg.initial_limit as f64);
        let (lo, hi) = (cfg.min_limit as f64, cfg.max_limit as f64);
        let next = match sample {
            Sample::Ignored => limit,
            Sample::Dropped => limit * cfg.backoff_ratio,
            Sample::Answered => {
                let noload = match self.noload_ms {
                    Some(n) if rtt_ms >= n => n + (rtt_ms - n) * NOLOAD_DRIFT,
                    _ => rtt_ms,
                };
                self.noload_ms = Some(noload);
                if rtt_ms > cfg.tolerance * noload.max(f64::MIN_POSITIVE) {
                    limit * cfg.backoff_ratio
                } else if busy {
                    limit + 1.0
                } else {
                    limit
                }
            }
        };
        self.limit = Some(next.clamp(lo, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            enabled: true,
            initial_limit: 4,
            min_limit: 1,
            max_limit: 8,
            backoff_ratio: 0.5,
            tolerance: 2.0,
        }
    }

    #[test]
    fn slots_are_capped_by_the_limit() {
        let c = cfg();
        let mut l = AimdLimiter::default();
        for _ in 0..4 {
            assert!(l.try_acquire(&c));
        }
        assert!(!l.try_acquire(&c), "fifth call over a limit of 4");
        l.release(&c, 10.0, Sample::Ignored);
        assert!(l.try_acquire(&c), "a released slot is free again");
    }

    #[test]
    fn fast_answers_under_load_raise_the_limit_up_to_max() {
        let c = cfg();
        let mut l = AimdLimiter::default();
        for _ in 0..20 {
            while l.try_acquire(&c) {}
            l.release(&c, 10.0, Sample::Answered);
        }
        assert_eq!(l.limit(&c), 8, "capped at max_limit");
    }

    #[test]
    fn idle_agent_keeps_its_limit() {
        let c = cfg();
        let mut l = AimdLimiter::default();
        for _ in 0..10 {
            assert!(l.try_acquire(&c));
            l.release(&c, 10.0, Sample::Answered);
        }
        assert_eq!(
            l.limit(&c),
            4,
            "one call in flight never proves more capacity"
        );
    }

    #[test]
    fn slow_answers_and_drops_cut_the_limit_down_to_min() {
        let c = cfg();
        let mut l = AimdLimiter::default();
        assert!(l.try_acquire(&c));
        l.release(&c, 10.0, Sample::Answered);
        assert!(l.try_acquire(&c));
        l.release(&c, 50.0, Sample::Answered); // 5× the no-load latency
        assert_eq!(l.limit(&c), 2);
        assert!(l.try_acquire(&c));
        l.release(&c, 0.0, Sample::Dropped);
        assert_eq!(l.limit(&c), 1);
        assert!(l.try_acquire(&c));
        l.release(&c, 0.0, Sample::Dropped);
        assert_eq!(l.limit(&c), 1, "never below min_limit");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = cfg();
        c.backoff_ratio = 1.0;
        assert_eq!(c.validate().unwrap_err().0, "backoff_ratio");
        let mut c = cfg();
        c.initial_limit = 9;
        assert_eq!(c.validate().unwrap_err().0, "initial_limit");
        let mut c = cfg();
        c.tolerance = 0.5;
        assert_eq!(c.validate().unwrap_err().0, "tolerance");
        assert!(cfg().validate().is_ok());
    }
}
