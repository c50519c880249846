//! Per-agent circuit breakers: a sans-IO state machine on caller-supplied time (`now_ms`) and a
//! caller-supplied RNG, so every transition is testable on virtual time.
//!
//! ```text
//! closed --(≥ min_calls in the window and failure rate ≥ threshold)--> open
//! open --(open duration elapsed)--> half_open
//! half_open --(probe_successes probes succeed)--> closed
//! half_open --(a probe fails)--> open (duration grows: base · 2^(opens-1), capped, jittered)
//! ```
//!
//! Half-open admits at most `half_open_probes` calls at once. A probe whose result never comes
//! back (the caller went away) stops counting after `probe_timeout_ms`, so a breaker cannot stay
//! stuck in half-open with every probe slot taken.
//!
//! The capability-level rules (all open → fallback or `circuit_open`; panic mode when more than
//! `panic_threshold` of the candidates are ejected) live in [`crate::routing::policies`], because they
//! need the whole candidate set.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Most outcomes one breaker keeps, whatever the configured window.
pub const BREAKER_WINDOW_CALLS_MAX: u32 = 1024;

/// Breaker settings (`[defaults.breaker]`, `[capability."x".breaker]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Turns breakers off for the capability.
    pub enabled: bool,
    /// Calls kept in the sliding window (1..=[`BREAKER_WINDOW_CALLS_MAX`]).
    pub window_calls: u32,
    /// Outcomes older than this leave the window, in ms.
    pub window_ms: u64,
    /// Failure rate in the window that opens the breaker, in (0, 1].
    pub failure_rate: f64,
    /// Calls in the window before the rate is judged.
    pub min_calls: u32,
    /// First open duration, in ms.
    pub open_ms: u64,
    /// Longest open duration after repeated opens, in ms.
    pub open_ms_max: u64,
    /// Calls admitted at once while half-open.
    pub half_open_probes: u32,
    /// Successful probes that close the breaker.
    pub probe_successes: u32,
    /// A probe without a result after this long frees its slot, in ms.
    pub probe_timeout_ms: u64,
    /// Envoy's panic mode: when more than this fraction of a capability's candidates are
    /// ejected (open), ejection is ignored and every candidate is used. 1.0 turns it off.
    pub panic_threshold: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            window_calls: 20,
            window_ms: 30_000,
            failure_rate: 0.5,
            min_calls: 5,
            open_ms: 2_000,
            open_ms_max: 60_000,
            half_open_probes: 1,
            probe_successes: 2,
            probe_timeout_ms: 10_000,
            panic_threshold: 0.5,
        }
    }
}

impl BreakerConfig {
    /// Checks ranges; `Err((key, what is valid))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=BREAKER_WINDOW_CALLS_MAX).contains(&self.window_calls) {
            return Err((
                "window_calls",
                format!("must be 1 to {BREAKER_WINDOW_CALLS_MAX}"),
            ));
        }
        if self.window_ms == 0 {
            return Err(("window_ms", "must be at least 1".into()));
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(("failure_rate", "must be in (0, 1]".into()));
        }
        if self.min_calls == 0 || self.min_calls > self.window_calls {
            return Err(("min_calls", "must be 1 to window_calls".into()));
        }
        if self.open_ms == 0 || self.open_ms > self.open_ms_max {
            return Err(("open_ms", "must be 1 to open_ms_max".into()));
        }
        if self.half_open_probes == 0 {
            return Err(("half_open_probes", "must be at least 1".into()));
        }
        if self.probe_successes == 0 {
            return Err(("probe_successes", "must be at least 1".into()));
        }
        if self.probe_timeout_ms == 0 {
            return Err(("probe_timeout_ms", "must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.panic_threshold) {
            return Err(("panic_threshold", "must be in [0, 1]".into()));
        }
        Ok(())
    }
}

/// The visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open duration passes.
    Open,
    /// A few probe calls test the agent.
    HalfOpen,
}

impl BreakerState {
    /// `closed | open | half_open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What [`Breaker::try_acquire`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal call (closed).
    Normal,
    /// A probe call (half-open); report its result with `probe = true`.
    Probe,
}

/// One agent's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    open_until_ms: u64,
    /// Consecutive opens without a close (drives the backoff).
    opens: u32,
    outcomes: VecDeque<(u64, bool)>,
    probes_started_ms: Vec<u64>,
    probe_ok: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker with an empty window.
    pub fn new() -> Self {
        Breaker {
            state: BreakerState::Closed,
            open_until_ms: 0,
            opens: 0,
            outcomes: VecDeque::new(),
            probes_started_ms: Vec::new(),
            probe_ok: 0,
        }
    }

    /// The state at `now_ms` (an open breaker whose time is up becomes half-open).
    pub fn state(&mut self, now_ms: u64) -> BreakerState {
        if self.state == BreakerState::Open && now_ms >= self.open_until_ms {
            self.state = BreakerState::HalfOpen;
            self.probes_started_ms.clear();
            self.probe_ok = 0;
        }
        self.state
    }

    /// The state without advancing time (for display of a stored breaker).
    pub fn peek(&self) -> BreakerState {
        self.state
    }

    /// When an open breaker half-opens, in ms.
    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms
    }

    /// True if a call would be admitted now (no slot is taken).
    pub fn would_admit(&mut self, now_ms: u64, cfg: &BreakerConfig) -> bool {
        match self.state(now_ms) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.live_probes(now_ms, cfg) < cfg.half_open_probes as usize,
        }
    }

    fn live_probes(&mut self, now_ms: u64, cfg: &BreakerConfig) -> usize {
        self.probes_started_ms
            .retain(|s| now_ms.saturating_sub(*s) < cfg.probe_timeout_ms);
        self.probes_started_ms.len()
    }

    /// Admits a call, or None if the breaker refuses it now.
    pub fn try_acquire(&mut self, now_ms: u64, cfg: &BreakerConfig) -> Option<Permit> {
        if !cfg.enabled {
            return Some(Permit::Normal);
        }
        match self.state(now_ms) {
            BreakerState::Closed => Some(Permit::Normal),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if self.live_probes(now_ms, cfg) >= cfg.half_open_probes as usize {
                    return None;
                }
                self.probes_started_ms.push(now_ms);
                Some(Permit::Probe)
            }
        }
    }

    /// Reports a call's outcome. `permit` is what [`Breaker::try_acquire`] granted.
    pub fn on_result<R: Rng>(
        &mut self,
        now_ms: u64,
        permit: Permit,
        ok: bool,
        cfg: &BreakerConfig,
        rng: &mut R,
    ) {
        if !cfg.enabled {
            return;
        }
        let state = self.state(now_ms);
        if permit == Permit::Probe {
            // The oldest outstanding probe finished (ordering does not matter: only the count).
            if !self.probes_started_ms.is_empty() {
                self.probes_started_ms.remove(0);
            }
            if state != BreakerState::HalfOpen {
                return;
            }
            if ok {
                self.probe_ok += 1;
                if self.probe_ok >= cfg.probe_successes {
                    self.close();
                }
            } else {
                self.trip(now_ms, cfg, rng);
            }
            return;
        }
        if state != BreakerState::Closed {
            // A normal call that was in flight when the breaker opened: not evidence.
            return;
        }
        self.outcomes.push_back((now_ms, ok));
        self.trim(now_ms, cfg);
        let total = self.outcomes.len() as u32;
        let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count() as f64;
        if total >= cfg.min_calls && failures / total as f64 >= cfg.failure_rate {
            self.trip(now_ms, cfg, rng);
        }
    }

    fn trim(&mut self, now_ms: u64, cfg: &BreakerConfig) {
        let keep = cfg.window_calls.min(BREAKER_WINDOW_CALLS_MAX) as usize;
        while self.outcomes.len() > keep {
            self.outcomes.pop_front();
        }
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > cfg.window_ms)
        {
            self.outcomes.pop_front();
        }
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opens = 0;
        self.outcomes.clear();
        self.probes_started_ms.clear();
        self.probe_ok = 0;
    }

    fn trip<R: Rng>(&mut self, now_ms: u64, cfg: &BreakerConfig, rng: &mut R) {
        self.opens = self.opens.saturating_add(1);
        let d = open_duration_ms(self.opens, cfg, rng);
        self.state = BreakerState::Open;
        self.open_until_ms = now_ms.saturating_add(d);
        self.outcomes.clear();
        self.probes_started_ms.clear();
        self.probe_ok = 0;
    }

    /// Failure rate and calls in the window (for `routes`).
    pub fn window(&self) -> (u32, u32) {
        let total = self.outcomes.len() as u32;
        let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count() as u32;
        (failures, total)
    }
}

/// The open duration after `opens` consecutive opens: `open_ms · 2^(opens-1)` capped at
/// `open_ms_max`, with equal jitter (half fixed, half uniform) so breakers opened together do
/// not all probe at the same instant.
pub fn open_duration_ms<R: Rng>(opens: u32, cfg: &BreakerConfig, rng: &mut R) -> u64 {
    let exp = opens.saturating_sub(1).min(30);
    let d = cfg
        .open_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.open_ms_max)
        .max(1);
    let half = d / 2;
    half + rng.gen_range(0..=d - half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window_calls: 10,
            min_calls: 4,
            failure_rate: 0.5,
            open_ms: 1000,
            open_ms_max: 8000,
            half_open_probes: 1,
            probe_successes: 2,
            probe_timeout_ms: 500,
            ..BreakerConfig::default()
        }
    }

    /// Step of a breaker script: (time ms, action, expected state after).
    #[derive(Debug, Clone, Copy)]
    enum Act {
        Ok,
        Fail,
        ProbeOk,
        ProbeFail,
        Acquire(Option<Permit>),
        Look,
    }

    fn run(script: &[(u64, Act, BreakerState)]) -> Breaker {
        let c = cfg();
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Breaker::new();
        for (i, (t, act, want)) in script.iter().enumerate() {
            match act {
                Act::Ok => b.on_result(*t, Permit::Normal, true, &c, &mut rng),
                Act::Fail => b.on_result(*t, Permit::Normal, false, &c, &mut rng),
                Act::ProbeOk => b.on_result(*t, Permit::Probe, true, &c, &mut rng),
                Act::ProbeFail => b.on_result(*t, Permit::Probe, false, &c, &mut rng),
                Act::Acquire(p) => assert_eq!(b.try_acquire(*t, &c), *p, "step {i}"),
                Act::Look => {}
            }
            assert_eq!(b.state(*t), *want, "step {i} ({act:?} at {t})");
        }
        b
    }

    use BreakerState::{Closed, HalfOpen, Open};

    #[test]
    fn below_min_calls_never_opens() {
        run(&[
            (0, Act::Fail, Closed),
            (1, Act::Fail, Closed),
            (2, Act::Fail, Closed),
        ]);
    }

    #[test]
    fn opens_at_rate_then_half_opens_then_closes() {
        run(&[
            (0, Act::Ok, Closed),
            (1, Act::Fail, Closed),
            (2, Act::Ok, Closed),
            (3, Act::Fail, Open), // 2 of 4 = 0.5
            (4, Act::Acquire(None), Open),
            (499, Act::Look, Open), // jittered duration is at least half of 1000
            (1004, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            (1005, Act::Acquire(None), HalfOpen), // one probe at a time
            (1010, Act::ProbeOk, HalfOpen),
            (1011, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            (1012, Act::ProbeOk, Closed),
            (1013, Act::Acquire(Some(Permit::Normal)), Closed),
        ]);
    }

    #[test]
    fn failed_probe_reopens_with_longer_duration() {
        let c = cfg();
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Breaker::new();
        for t in 0..4 {
            b.on_result(t, Permit::Normal, false, &c, &mut rng);
        }
        assert_eq!(b.state(3), Open);
        let first = b.open_until_ms() - 3;
        assert!((500..=1000).contains(&first), "{first}");
        let t = b.open_until_ms();
        assert_eq!(b.try_acquire(t, &c), Some(Permit::Probe));
        b.on_result(t, Permit::Probe, false, &c, &mut rng);
        assert_eq!(b.state(t), Open);
        let second = b.open_until_ms() - t;
        assert!((1000..=2000).contains(&second), "{second}");
    }

    #[test]
    fn probe_failure_reopens() {
        run(&[
            (0, Act::Fail, Closed),
            (0, Act::Fail, Closed),
            (0, Act::Fail, Closed),
            (0, Act::Fail, Open),
            (1000, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            (1001, Act::ProbeFail, Open),
            (1002, Act::Acquire(None), Open),
        ]);
    }

    #[test]
    fn backoff_grows_and_caps_with_jitter() {
        let c = cfg();
        let mut rng = StdRng::seed_from_u64(9);
        let cases: &[(u32, u64, u64)] = &[
            (1, 500, 1000),
            (2, 1000, 2000),
            (3, 2000, 4000),
            (4, 4000, 8000),
            (5, 4000, 8000),
            (40, 4000, 8000),
        ];
        for (opens, lo, hi) in cases {
            for _ in 0..50 {
                let d = open_duration_ms(*opens, &c, &mut rng);
                assert!((*lo..=*hi).contains(&d), "opens {opens}: {d}");
            }
        }
    }

    /// The reported failure mode: a probe is taken and its caller vanishes. Without a probe
    /// timeout the breaker would stay half-open with its only slot taken, forever.
    #[test]
    fn stuck_half_open_recovers_after_probe_timeout() {
        run(&[
            (0, Act::Fail, Closed),
            (0, Act::Fail, Closed),
            (0, Act::Fail, Closed),
            (0, Act::Fail, Open),
            (1000, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            // Its result never arrives.
            (1200, Act::Acquire(None), HalfOpen),
            (1499, Act::Acquire(None), HalfOpen),
            (1500, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            (1510, Act::ProbeOk, HalfOpen),
            (1511, Act::Acquire(Some(Permit::Probe)), HalfOpen),
            (1512, Act::ProbeOk, Closed),
        ]);
    }

    #[test]
    fn window_forgets_old_outcomes() {
        let c = BreakerConfig {
            window_ms: 100,
            ..cfg()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Breaker::new();
        for t in 0..3 {
            b.on_result(t, Permit::Normal, false, &c, &mut rng);
        }
        // 200 ms later the three failures are gone; one more is not enough.
        b.on_result(200, Permit::Normal, false, &c, &mut rng);
        assert_eq!(b.state(200), Closed);
        assert_eq!(b.window(), (1, 1));
    }

    #[test]
    fn disabled_breaker_always_admits() {
        let c = BreakerConfig {
            enabled: false,
            ..cfg()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Breaker::new();
        for t in 0..50 {
            b.on_result(t, Permit::Normal, false, &c, &mut rng);
            assert_eq!(b.try_acquire(t, &c), Some(Permit::Normal));
        }
    }

    #[test]
    fn config_ranges() {
        BreakerConfig::default().validate().unwrap();
        type Edit = fn(&mut BreakerConfig);
        let cases: &[(Edit, &str)] = &[
            (|c| c.window_calls = 0, "window_calls"),
            (|c| c.failure_rate = 0.0, "failure_rate"),
            (|c| c.failure_rate = 1.5, "failure_rate"),
            (|c| c.min_calls = 1000, "min_calls"),
            (|c| c.open_ms = 0, "open_ms"),
            (|c| c.open_ms = 1_000_000, "open_ms"),
            (|c| c.half_open_probes = 0, "half_open_probes"),
            (|c| c.panic_threshold = 2.0, "panic_threshold"),
        ];
        for (edit, key) in cases {
            let mut c = BreakerConfig::default();
            edit(&mut c);
            assert_eq!(c.validate().unwrap_err().0, *key);
        }
    }
}
