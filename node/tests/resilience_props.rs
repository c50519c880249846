//! Property tests of the resilience state machines on virtual time: the breaker, the retry
//! budget, the adaptive limit and the hedging window. Arbitrary event sequences never break
//! their invariants.

use agentmesh_node::resilience::adaptive::{AdaptiveConfig, AimdLimiter, Sample};
use agentmesh_node::resilience::breaker::{Breaker, BreakerConfig, BreakerState, Permit};
use agentmesh_node::resilience::hedge::{HedgingConfig, LatencyWindow, HEDGE_WINDOW_SAMPLES};
use agentmesh_node::resilience::retry::{RetryBudget, RetryConfig};
use proptest::prelude::*;
use rand::SeedableRng;

#[derive(Debug, Clone)]
enum Ev {
    Advance(u64),
    Call(bool),
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        prop_oneof![
            (0u64..5_000).prop_map(Ev::Advance),
            any::<bool>().prop_map(Ev::Call),
        ],
        0..300,
    )
}

proptest! {
    /// An open breaker admits nothing; half-open admits at most `half_open_probes` at once;
    /// a run of failures past `min_calls` always opens it.
    #[test]
    fn breaker_respects_its_states(evs in events(), seed in any::<u64>()) {
        let cfg = BreakerConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut b = Breaker::new();
        let mut now = 0u64;
        let mut failures_in_a_row = 0u32;
        for ev in evs {
            match ev {
                Ev::Advance(ms) => now += ms,
                Ev::Call(ok) => {
                    let before = b.state(now);
                    match b.try_acquire(now, &cfg) {
                        None => prop_assert_ne!(before, BreakerState::Closed),
                        Some(p) => {
                            prop_assert_ne!(before, BreakerState::Open);
                            if before == BreakerState::HalfOpen {
                                prop_assert_eq!(p, Permit::Probe);
                            }
                            b.on_result(now, p, ok, &cfg, &mut rng);
                            failures_in_a_row = if ok { 0 } else { failures_in_a_row + 1 };
                            if before == BreakerState::Closed
                                && failures_in_a_row >= cfg.window_calls
                            {
                                prop_assert_eq!(b.state(now), BreakerState::Open);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The retry budget never goes negative and never grants more retries than it earned
    /// plus the per-second floor.
    #[test]
    fn retry_budget_is_bounded(calls in prop::collection::vec((0u64..200, any::<bool>()), 0..500)) {
        let cfg = RetryConfig::default();
        let mut now = 0u64;
        let mut b = RetryBudget::new(now, cfg.budget_min_per_s);
        let (mut deposits, mut granted) = (0u64, 0u64);
        for (dt, retry) in calls {
            now += dt;
            b.deposit(now, &cfg);
            deposits += 1;
            if retry && b.withdraw(now, &cfg) {
                granted += 1;
            }
            prop_assert!(b.balance() >= 0.0);
        }
        let floor = cfg.budget_min_per_s * (1.0 + now as f64 / 1000.0);
        prop_assert!(granted as f64 <= deposits as f64 * cfg.budget_ratio + floor + 1.0);
    }

    /// The adaptive limit stays within [min, max] and in-flight never exceeds it.
    #[test]
    fn adaptive_limit_stays_in_bounds(ops in prop::collection::vec((any::<bool>(), 0.0f64..500.0, 0u8..3), 0..400)) {
        let cfg = AdaptiveConfig { enabled: true, initial_limit: 5, min_limit: 2, max_limit: 12, ..AdaptiveConfig::default() };
        let mut l = AimdLimiter::default();
        for (acquire, rtt, kind) in ops {
            if acquire {
                let room = l.has_room(&cfg);
                prop_assert_eq!(l.try_acquire(&cfg), room);
            } else if l.in_flight() > 0 {
                let s = [Sample::Answered, Sample::Dropped, Sample::Ignored][kind as usize];
                l.release(&cfg, rtt, s);
            }
            let lim = l.limit(&cfg);
            prop_assert!((cfg.min_limit..=cfg.max_limit).contains(&lim));
        }
    }

    /// The hedging delay is the configured one below the sample floor, else a value from the
    /// window, and never below `min_delay_ms`; the window never holds more than its bound.
    #[test]
    fn hedge_delay_comes_from_the_window(xs in prop::collection::vec(0.0f64..1000.0, 0..600)) {
        let cfg = HedgingConfig { enabled: true, ..HedgingConfig::default() };
        let mut w = LatencyWindow::default();
        for x in &xs {
            w.push(*x);
        }
        prop_assert!(w.len() <= HEDGE_WINDOW_SAMPLES);
        let d = w.delay_ms(&cfg);
        prop_assert!(d >= cfg.min_delay_ms);
        if w.len() >= agentmesh_node::resilience::hedge::HEDGE_MIN_SAMPLES {
            let max = xs.iter().rev().take(HEDGE_WINDOW_SAMPLES).fold(0.0f64, |a, b| a.max(*b));
            prop_assert!(d as f64 <= max.ceil().max(cfg.min_delay_ms as f64));
        } else {
            prop_assert_eq!(d, cfg.delay_ms.max(cfg.min_delay_ms));
        }
    }
}
