//! What this node observed about each (agent, capability): peak-EWMA latency, a success window
//! whose old outcomes weigh less, a breaker and an adaptive concurrency limit. Keyed by
//! (node, capability), so failures on one capability never black out the agent's others, and
//! one breaker follows one capability's thresholds. Reset when the member returns with a new
//! incarnation: a restarted agent starts clean, not with the failures of its crash.

use crate::resilience::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use agentmesh_crypto::NodeId;
use rand::Rng;
use std::collections::{HashMap, VecDeque};

/// Time constant of the peak-EWMA decay, in ms.
pub const PEAK_EWMA_DECAY_MS: f64 = 10_000.0;
/// Latency a failed attempt counts as, at least, in ms: a fast failure counts as slow, so a
/// failing agent does not attract traffic (linkerd2 #11669).
pub const FAILURE_LATENCY_MS: f64 = 1_000.0;
/// Outcomes kept per (agent, capability) for the success rate.
pub const QUALITY_WINDOW_CALLS_MAX: usize = 100;
/// Outcomes older than this leave the success-rate window, in ms.
pub const QUALITY_WINDOW_MS: u64 = 60_000;
/// Half-life of an outcome's weight in the success rate, in ms: a failure 10 s old counts half
/// as much as a fresh one, so an agent that recovered is judged on what it does now.
pub const QUALITY_HALF_LIFE_MS: f64 = 10_000.0;
/// (agent, capability) pairs with observations kept.
pub const SCOREBOARD_PEERS_MAX: usize = 16_384;

/// Peak-EWMA latency (Finagle/tower): jumps up to a slower sample at once, decays toward
/// faster ones with time constant [`PEAK_EWMA_DECAY_MS`].
#[derive(Debug, Clone, Default)]
pub struct PeakEwma {
    value_ms: Option<f64>,
    last_ms: u64,
}

impl PeakEwma {
    /// Adds a sample.
    pub fn observe(&mut self, now_ms: u64, rtt_ms: f64) {
        let v = match self.value_ms {
            None => rtt_ms,
            Some(v) if rtt_ms > v => rtt_ms,
            Some(v) => {
                let dt = now_ms.saturating_sub(self.last_ms) as f64;
                let w = (-dt / PEAK_EWMA_DECAY_MS).exp();
                v * w + rtt_ms * (1.0 - w)
            }
        };
        self.value_ms = Some(v);
        self.last_ms = now_ms;
    }

    /// The current estimate.
    pub fn get(&self) -> Option<f64> {
        self.value_ms
    }
}

/// Everything observed about one agent for one capability.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    /// Latency estimate.
    pub ewma: PeakEwma,
    outcomes: VecDeque<(u64, bool)>,
    /// Running weight sums of `outcomes`, so a call pays O(1) `exp`s, not one per outcome.
    sums: OutcomeSums,
    /// Its breaker.
    pub breaker: Breaker,
    /// Its adaptive concurrency limit.
    pub limiter: crate::resilience::adaptive::AimdLimiter,
    touched_ms: u64,
    incarnation: u64,
}

/// Sums of the kept outcomes' weights `2^((t - base_ms) / half-life)`, all and successful
/// ones. The success rate weighs each outcome by `2^(-(now - t) / half-life)`; the factor
/// `2^(-(now - base_ms) / half-life)` is common to every term and cancels in the ratio, so
/// the rate is `ok / all` whatever `now` is, and the sums change only when an outcome
/// enters or leaves. Summing every outcome per call cost 100 `exp`s (1.7 % of a caller's CPU
/// at 64 in flight).
#[derive(Debug, Clone, Default)]
struct OutcomeSums {
    base_ms: u64,
    all: f64,
    ok: f64,
}

/// Rebase the sums once the newest weight would exceed `2^REBASE_HALF_LIVES`: it keeps the
/// weights far from overflow and from the rounding of very large sums.
const REBASE_HALF_LIVES: f64 = 32.0;

impl OutcomeSums {
    fn weight(&self, t: u64) -> f64 {
        (t.saturating_sub(self.base_ms) as f64 / QUALITY_HALF_LIFE_MS).exp2()
    }

    fn add(&mut self, t: u64, ok: bool) {
        let w = self.weight(t);
        self.all += w;
        if ok {
            self.ok += w;
        }
    }

    fn remove(&mut self, t: u64, ok: bool) {
        let w = self.weight(t);
        self.all -= w;
        if ok {
            self.ok -= w;
        }
    }

    /// Recomputed from scratch on `outcomes`, weights measured from the oldest.
    fn rebuilt(outcomes: &VecDeque<(u64, bool)>) -> OutcomeSums {
        let mut s = OutcomeSums {
            base_ms: outcomes.front().map_or(0, |(t, _)| *t),
            ..OutcomeSums::default()
        };
        for &(t, ok) in outcomes {
            s.add(t, ok);
        }
        s
    }
}

impl PeerStats {
    /// Success rate (outcomes weighted by age, half-life [`QUALITY_HALF_LIFE_MS`]) and the
    /// outcome count in the window.
    pub fn success(&mut self, now_ms: u64) -> (Option<f64>, u32) {
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > QUALITY_WINDOW_MS)
        {
            self.pop_outcome();
        }
        let n = self.outcomes.len();
        if n == 0 {
            return (None, 0);
        }
        // Every kept weight is at least 1 (base_ms is at or before the oldest outcome).
        let rate = if self.sums.all > 0.0 {
            (self.sums.ok / self.sums.all).clamp(0.0, 1.0)
        } else {
            1.0
        };
        (Some(rate), n as u32)
    }

    fn pop_outcome(&mut self) {
        if let Some((t, ok)) = self.outcomes.pop_front() {
            if self.outcomes.is_empty() {
                self.sums = OutcomeSums::default();
            } else {
                self.sums.remove(t, ok);
            }
        }
    }

    /// Forgets every outcome.
    fn clear_outcomes(&mut self) {
        self.outcomes.clear();
        self.sums = OutcomeSums::default();
    }

    fn push(&mut self, now_ms: u64, ok: bool) {
        if self.outcomes.is_empty() {
            self.sums = OutcomeSums {
                base_ms: now_ms,
                ..OutcomeSums::default()
            };
        }
        self.outcomes.push_back((now_ms, ok));
        self.sums.add(now_ms, ok);
        while self.outcomes.len() > QUALITY_WINDOW_CALLS_MAX {
            self.pop_outcome();
        }
        let span = now_ms.saturating_sub(self.sums.base_ms) as f64 / QUALITY_HALF_LIFE_MS;
        if span > REBASE_HALF_LIVES {
            self.sums = OutcomeSums::rebuilt(&self.outcomes);
        }
    }
}

/// Observations per (agent, capability). Bounded by [`SCOREBOARD_PEERS_MAX`].
#[derive(Debug, Default)]
pub struct Scoreboard {
    peers: HashMap<(NodeId, String), PeerStats>,
}

impl Scoreboard {
    /// Every breaker held and its state now (metrics, dashboard, `routes`).
    pub fn breakers(&mut self, now_ms: u64) -> Vec<(NodeId, String, BreakerState)> {
        self.peers
            .iter_mut()
            .map(|((k, c), s)| (*k, c.clone(), s.breaker.state(now_ms)))
            .collect()
    }

    /// The stats of `node` for `capability`, created if absent (evicting the least recently
    /// used if full).
    pub fn entry(&mut self, node: NodeId, capability: &str, now_ms: u64) -> &mut PeerStats {
        let key = (node, capability.to_string());
        if !self.peers.contains_key(&key) && self.peers.len() >= SCOREBOARD_PEERS_MAX {
            if let Some(old) = self
                .peers
                .iter()
                .min_by_key(|(_, s)| s.touched_ms)
                .map(|(k, _)| k.clone())
            {
                self.peers.remove(&old);
            }
        }
        let s = self.peers.entry(key).or_default();
        s.touched_ms = now_ms;
        s
    }

    /// [`Scoreboard::entry`], first forgetting what was observed under an older incarnation of
    /// the member: a restarted agent is judged afresh (its breaker closed, no stale failures).
    /// Returns whether it was reset.
    pub fn entry_at(
        &mut self,
        node: NodeId,
        capability: &str,
        incarnation: u64,
        now_ms: u64,
    ) -> (&mut PeerStats, bool) {
        let s = self.entry(node, capability, now_ms);
        let mut reset = false;
        if s.incarnation != incarnation {
            // Incarnation 0: made before any record was read (a penalty learnt by gossip);
            // it belongs to the member as it is now, so it is adopted, not reset.
            if s.incarnation != 0 {
                *s = PeerStats::default();
                reset = true;
            }
            s.incarnation = incarnation;
            s.touched_ms = now_ms;
        }
        (s, reset)
    }

    /// Records an attempt's outcome: latency (a failure counts as at least
    /// [`FAILURE_LATENCY_MS`]), success, and the breaker's verdict.
    #[allow(clippy::too_many_arguments)]
    pub fn observe<R: Rng>(
        &mut self,
        (node, capability): (NodeId, &str),
        now_ms: u64,
        rtt_ms: f64,
        ok: bool,
        permit: Permit,
        breaker: &BreakerConfig,
        rng: &mut R,
    ) {
        let s = self.entry(node, capability, now_ms);
        let sample = if ok {
            rtt_ms
        } else {
            rtt_ms.max(FAILURE_LATENCY_MS)
        };
        s.ewma.observe(now_ms, sample);
        s.push(now_ms, ok);
        let was = s.breaker.state(now_ms);
        s.breaker.on_result(now_ms, permit, ok, breaker, rng);
        if was == BreakerState::HalfOpen && s.breaker.peek() == BreakerState::Closed {
            // Its probes proved the agent again: judge it on what it does now, not on the
            // failures that opened its breaker (they would keep it below the quality tiers,
            // and its latency at the failure floor, for tens of seconds).
            s.clear_outcomes();
            s.push(now_ms, true);
            s.ewma = PeakEwma::default();
            s.ewma.observe(now_ms, rtt_ms);
        }
    }

    /// Counts a failure in `node`'s success windows without touching its breakers or latency:
    /// the agent answered, but a quorum found the answer wrong. `None` counts it against every
    /// capability observed for the node.
    pub fn penalize(&mut self, node: NodeId, capability: Option<&str>, now_ms: u64) {
        match capability {
            Some(c) => self.entry(node, c, now_ms).push(now_ms, false),
            None => {
                for ((n, _), s) in self.peers.iter_mut() {
                    if *n == node {
                        s.push(now_ms, false);
                    }
                }
            }
        }
    }

    /// (agent, capability) pairs observed.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True if nothing was observed.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn node(b: u8) -> NodeId {
        agentmesh_crypto::Keypair::from_secret([b; 32]).node_id()
    }

    /// The success rate as defined: every kept outcome weighed by its age, summed per call.
    fn direct_rate(outcomes: &VecDeque<(u64, bool)>, now: u64) -> Option<f64> {
        let (mut ok, mut all) = (0.0, 0.0);
        for &(t, good) in outcomes {
            let age = now.saturating_sub(t) as f64;
            let w = (-age * std::f64::consts::LN_2 / QUALITY_HALF_LIFE_MS).exp();
            all += w;
            if good {
                ok += w;
            }
        }
        (!outcomes.is_empty()).then(|| if all > 0.0 { ok / all } else { 1.0 })
    }

    #[test]
    fn the_running_sums_give_the_rate_of_every_outcome_weighed_by_age() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut s = PeerStats::default();
        let mut now = 1_000u64;
        // Bursts, pauses past the window and past the rebase span, mixed outcomes.
        for step in 0..20_000u32 {
            now += match rng.gen_range(0..100u32) {
                0 => rng.gen_range(0..3 * QUALITY_WINDOW_MS),
                1..=10 => rng.gen_range(0..20_000),
                _ => rng.gen_range(0..50),
            };
            if rng.gen_bool(0.7) {
                s.push(now, rng.gen_bool(0.8));
            }
            if step % 3 == 0 {
                let (rate, n) = s.success(now);
                assert_eq!(n as usize, s.outcomes.len());
                let want = direct_rate(&s.outcomes, now);
                match (rate, want) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "step {step}: {a} vs {b}"),
                    (a, b) => assert_eq!(a, b, "step {step}"),
                }
            }
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::default();
        e.observe(0, 10.0);
        e.observe(1, 100.0);
        assert_eq!(e.get(), Some(100.0));
        e.observe(10_000, 10.0);
        let v = e.get().unwrap();
        assert!((40.0..50.0).contains(&v), "one time constant later: {v}");
        for t in 1..=10 {
            e.observe(10_000 + t * 10_000, 10.0);
        }
        assert!(e.get().unwrap() < 11.0);
    }

    #[test]
    fn failures_count_as_slow_and_trip_the_breaker() {
        let mut sb = Scoreboard::default();
        let mut rng = StdRng::seed_from_u64(1);
        let n = node(1);
        let bc = BreakerConfig {
            min_calls: 4,
            ..BreakerConfig::default()
        };
        for t in 0..4 {
            sb.observe((n, "c"), t, 1.0, false, Permit::Normal, &bc, &mut rng);
        }
        let s = sb.entry(n, "c", 4);
        assert!(s.ewma.get().unwrap() >= FAILURE_LATENCY_MS);
        assert_eq!(s.success(4), (Some(0.0), 4));
        assert_eq!(s.breaker.state(4), BreakerState::Open);
        // The success window forgets after QUALITY_WINDOW_MS.
        assert_eq!(s.success(4 + QUALITY_WINDOW_MS + 1), (None, 0));
    }

    #[test]
    fn scores_are_per_capability() {
        let mut sb = Scoreboard::default();
        let mut rng = StdRng::seed_from_u64(1);
        let n = node(2);
        let bc = BreakerConfig {
            min_calls: 2,
            ..BreakerConfig::default()
        };
        for t in 0..4 {
            sb.observe((n, "bad"), t, 1.0, false, Permit::Normal, &bc, &mut rng);
        }
        assert_eq!(sb.entry(n, "bad", 5).breaker.state(5), BreakerState::Open);
        let good = sb.entry(n, "good", 5);
        assert_eq!(good.breaker.state(5), BreakerState::Closed);
        assert_eq!(good.success(5), (None, 0));
    }

    #[test]
    fn old_failures_weigh_less_than_fresh_successes() {
        let mut s = PeerStats::default();
        for t in 0..10 {
            s.push(t, false);
        }
        // 30 s (three half-lives) later, ten successes: the rate is judged mostly on them.
        for t in 0..10 {
            s.push(30_000 + t, true);
        }
        let (rate, n) = s.success(30_010);
        assert_eq!(n, 20);
        assert!(rate.unwrap() > 0.85, "{rate:?}");
    }

    #[test]
    fn a_new_incarnation_starts_clean() {
        let mut sb = Scoreboard::default();
        let mut rng = StdRng::seed_from_u64(1);
        let n = node(3);
        let bc = BreakerConfig {
            min_calls: 2,
            ..BreakerConfig::default()
        };
        assert!(!sb.entry_at(n, "c", 7, 0).1, "first sight is not a reset");
        for t in 0..4 {
            sb.observe((n, "c"), t, 1.0, false, Permit::Normal, &bc, &mut rng);
        }
        let (s, reset) = sb.entry_at(n, "c", 7, 5);
        assert!(!reset);
        assert_eq!(s.breaker.state(5), BreakerState::Open);
        let (s, reset) = sb.entry_at(n, "c", 8, 6);
        assert!(reset);
        assert_eq!(s.breaker.state(6), BreakerState::Closed);
        assert_eq!(s.success(6), (None, 0));
        assert_eq!(s.ewma.get(), None);
    }

    #[test]
    fn a_breaker_closed_by_its_probes_forgets_the_failures_that_opened_it() {
        let mut sb = Scoreboard::default();
        let mut rng = StdRng::seed_from_u64(1);
        let n = node(5);
        let bc = BreakerConfig {
            min_calls: 2,
            probe_successes: 2,
            ..BreakerConfig::default()
        };
        for t in 0..4 {
            sb.observe((n, "c"), t, 1.0, false, Permit::Normal, &bc, &mut rng);
        }
        let s = sb.entry(n, "c", 4);
        assert_eq!(s.breaker.state(4), BreakerState::Open);
        let t = s.breaker.open_until_ms();
        for k in 0..2 {
            let p = sb.entry(n, "c", t + k).breaker.try_acquire(t + k, &bc);
            assert_eq!(p, Some(Permit::Probe));
            sb.observe((n, "c"), t + k, 3.0, true, Permit::Probe, &bc, &mut rng);
        }
        let s = sb.entry(n, "c", t + 2);
        assert_eq!(s.breaker.state(t + 2), BreakerState::Closed);
        assert_eq!(
            s.success(t + 2),
            (Some(1.0), 1),
            "only the closing probe counts"
        );
        assert_eq!(
            s.ewma.get(),
            Some(3.0),
            "latency from the probe, not the failure floor"
        );
    }

    #[test]
    fn penalize_hits_one_or_every_capability() {
        let mut sb = Scoreboard::default();
        let n = node(4);
        sb.entry(n, "a", 0);
        sb.entry(n, "b", 0);
        sb.penalize(n, Some("a"), 1);
        assert_eq!(sb.entry(n, "a", 1).success(1).1, 1);
        assert_eq!(sb.entry(n, "b", 1).success(1).1, 0);
        sb.penalize(n, None, 2);
        assert_eq!(sb.entry(n, "b", 2).success(2).1, 1);
    }
}
