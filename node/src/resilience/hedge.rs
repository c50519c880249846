//! Hedged calls (gRPC A6 semantics): when the first attempt has not answered after the
//! capability's observed p95 latency, a second attempt goes to another agent; the first answer
//! wins and the others are cancelled (dropping an attempt resets its QUIC stream, and the
//! callee's node then drops the agent request). Hedges are paid from the retry budget.
//! This module holds the settings and the latency window the delay comes from; the race itself
//! runs in the runtime.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Most hedged attempts per call a config may ask for.
pub const HEDGES_MAX: u32 = 3;
/// Successful-attempt latencies kept per capability for the p95.
pub const HEDGE_WINDOW_SAMPLES: usize = 256;
/// Below this many samples the configured `delay_ms` is used instead of the p95.
pub const HEDGE_MIN_SAMPLES: usize = 20;
/// Largest hedging delay a config may set, in ms.
pub const HEDGE_DELAY_MS_MAX: u64 = 600_000;

/// Hedging settings of a capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HedgingConfig {
    /// Send further attempts to other agents after the observed p95.
    pub enabled: bool,
    /// Most hedged attempts per call (on top of the first), 1 to [`HEDGES_MAX`].
    pub max_hedges: u32,
    /// Delay used until [`HEDGE_MIN_SAMPLES`] latencies were observed, in ms.
    pub delay_ms: u64,
    /// The delay is never shorter than this, in ms (a p95 of 0 would hedge every call).
    pub min_delay_ms: u64,
}

impl Default for HedgingConfig {
    fn default() -> Self {
        HedgingConfig {
            enabled: false,
            max_hedges: 1,
            delay_ms: 100,
            min_delay_ms: 2,
        }
    }
}

impl HedgingConfig {
    /// Checks the settings; the error names the key and the valid values.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=HEDGES_MAX).contains(&self.max_hedges) {
            return Err(("max_hedges", format!("valid: 1 to {HEDGES_MAX}")));
        }
        if self.delay_ms > HEDGE_DELAY_MS_MAX {
            return Err(("delay_ms", format!("valid: 0 to {HEDGE_DELAY_MS_MAX}")));
        }
        if self.min_delay_ms > self.delay_ms {
            return Err(("min_delay_ms", "valid: 0 to delay_ms".into()));
        }
        Ok(())
    }
}

/// A quantile asked per call is recomputed after this many new samples, not on every call:
/// over [`HEDGE_WINDOW_SAMPLES`] samples it moves little in 16, and the selection per call was
/// 2 % of a caller's CPU at 64 in flight.
pub const QUANTILE_REFRESH_SAMPLES: u64 = 16;

/// The latest successful-attempt latencies of one capability (bounded).
#[derive(Debug, Clone, Default)]
pub struct LatencyWindow {
    samples: VecDeque<f64>,
    /// Samples ever pushed (the age of a memoised quantile).
    pushed: u64,
    /// Memoised `(q bits, pushed when computed, value)` for the two quantiles asked per call.
    memo: std::cell::Cell<[Option<(u64, u64, f64)>; 2]>,
}

impl LatencyWindow {
    /// Adds a latency in ms, forgetting the oldest beyond [`HEDGE_WINDOW_SAMPLES`].
    pub fn push(&mut self, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        if self.samples.len() == HEDGE_WINDOW_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(ms);
        self.pushed += 1;
    }

    /// The `q` quantile as of at most [`QUANTILE_REFRESH_SAMPLES`] samples ago (exact while
    /// the window holds fewer than [`HEDGE_WINDOW_SAMPLES`] / 4).
    pub fn recent_quantile(&self, q: f64) -> Option<f64> {
        let key = q.to_bits();
        let mut memo = self.memo.get();
        let fresh = |pushed: u64| {
            self.samples.len() >= HEDGE_WINDOW_SAMPLES / 4
                && self.pushed - pushed < QUANTILE_REFRESH_SAMPLES
        };
        if let Some((_, _, v)) = memo
            .iter()
            .flatten()
            .find(|(k, at, _)| *k == key && fresh(*at))
        {
            return Some(*v);
        }
        let v = self.quantile(q)?;
        // Replace this q's slot, else an empty one, else the first.
        let slot = memo
            .iter()
            .position(|m| m.is_some_and(|(k, _, _)| k == key))
            .or_else(|| memo.iter().position(Option::is_none))
            .unwrap_or(0);
        memo[slot] = Some((key, self.pushed, v));
        self.memo.set(memo);
        Some(v)
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True if nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q` quantile (nearest rank), if any samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        // A selection, not a sort: every call asks (hedge delay, attempt timeout), and the
        // sort was 3.9 % of a caller's CPU at 64 in flight.
        let (_, nth, _) = v.select_nth_unstable_by(rank - 1, f64::total_cmp);
        Some(*nth)
    }

    /// How long to wait before hedging: the observed p95 once there are enough samples,
    /// else the configured delay; never below `min_delay_ms`.
    pub fn delay_ms(&self, cfg: &HedgingConfig) -> u64 {
        let base = match self.recent_quantile(0.95) {
            Some(p95) if self.samples.len() >= HEDGE_MIN_SAMPLES => p95.ceil() as u64,
            _ => cfg.delay_ms,
        };
        base.max(cfg.min_delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recent_quantile_is_at_most_refresh_samples_old_and_exact_in_a_small_window() {
        let mut w = LatencyWindow::default();
        // Small window: exact after every push.
        for i in 1..=10 {
            w.push(f64::from(i));
            assert_eq!(w.recent_quantile(0.99), w.quantile(0.99));
        }
        for _ in 0..HEDGE_WINDOW_SAMPLES {
            w.push(1.0);
        }
        let cfg = HedgingConfig::default();
        assert_eq!(w.recent_quantile(0.99), Some(1.0));
        assert_eq!(
            w.delay_ms(&cfg),
            cfg.min_delay_ms,
            "p95 of 1 ms, raised to the minimum"
        );
        // Slower samples arrive: the memo answers until QUANTILE_REFRESH_SAMPLES have come,
        // for the attempt timeout's p99 and the hedge delay's p95 alike.
        for _ in 0..QUANTILE_REFRESH_SAMPLES - 1 {
            w.push(100.0);
        }
        assert_eq!(w.quantile(0.99), Some(100.0));
        assert_eq!(w.quantile(0.95), Some(100.0));
        assert_eq!(w.recent_quantile(0.99), Some(1.0), "memoised");
        assert_eq!(w.delay_ms(&cfg), cfg.min_delay_ms, "memoised");
        w.push(100.0);
        assert_eq!(w.recent_quantile(0.99), Some(100.0), "refreshed");
        assert_eq!(w.delay_ms(&cfg), 100, "refreshed");
    }

    #[test]
    fn delay_is_the_configured_one_until_enough_samples() {
        let cfg = HedgingConfig {
            enabled: true,
            delay_ms: 80,
            ..HedgingConfig::default()
        };
        let mut w = LatencyWindow::default();
        for _ in 0..HEDGE_MIN_SAMPLES - 1 {
            w.push(5.0);
        }
        assert_eq!(w.delay_ms(&cfg), 80);
        w.push(5.0);
        assert_eq!(w.delay_ms(&cfg), 5);
    }

    #[test]
    fn delay_is_the_p95_of_the_window() {
        let cfg = HedgingConfig::default();
        let mut w = LatencyWindow::default();
        for i in 1..=100 {
            w.push(i as f64);
        }
        assert_eq!(w.delay_ms(&cfg), 95);
        // The window forgets the oldest: 256 fast samples push the slow ones out.
        for _ in 0..HEDGE_WINDOW_SAMPLES {
            w.push(1.0);
        }
        assert_eq!(w.len(), HEDGE_WINDOW_SAMPLES);
        assert_eq!(w.delay_ms(&cfg), cfg.min_delay_ms);
    }

    #[test]
    fn quantile_is_the_nearest_rank_of_unsorted_samples() {
        let mut w = LatencyWindow::default();
        // 1..=100 in a scrambled order (37 is coprime to 101).
        let xs: Vec<f64> = (1..=100).map(|i| ((i * 37) % 101) as f64).collect();
        for &x in &xs {
            w.push(x);
        }
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let rank = ((q * 100.0_f64).ceil() as usize).clamp(1, 100);
            assert_eq!(w.quantile(q), Some(sorted[rank - 1]), "q = {q}");
        }
    }

    #[test]
    fn bad_samples_are_ignored() {
        let mut w = LatencyWindow::default();
        w.push(f64::NAN);
        w.push(-1.0);
        assert!(w.is_empty());
    }

    #[test]
    fn validation_names_the_key() {
        let bad = HedgingConfig {
            max_hedges: HEDGES_MAX + 1,
            ..HedgingConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "max_hedges");
        let bad = HedgingConfig {
            min_delay_ms: 200,
            ..HedgingConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "min_delay_ms");
    }
}
