//! Retries and deadlines: which failures are retried, how long to wait, the retry budget, and
//! the time budget each hop passes on. Pure functions and small state machines on caller time.

use crate::contract::{CallError, ErrorCode};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Most retries a capability may configure (attempts: one more).
pub const RETRIES_MAX: u32 = 9;
/// Most attempts a capability may configure (the old `max_attempts` spelling).
pub const RETRY_ATTEMPTS_MAX: u32 = RETRIES_MAX + 1;
/// Largest retry budget balance, in retries (bounds a burst after a quiet period).
pub const RETRY_BUDGET_BALANCE_MAX: f64 = 1000.0;
/// Largest `retry_on` list.
pub const RETRY_ON_MAX: usize = 16;
pub use crate::agent::client::H_RETRYABLE;

/// A failure class a capability may retry (`retry_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryOn {
    /// The attempt ran out of time (`deadline_exceeded`, the attempt timeout).
    #[serde(rename = "timeout")]
    Timeout,
    /// The agent or its node could not be reached, or the connection was lost.
    #[serde(rename = "unreachable")]
    Unreachable,
    /// Refused before any work: `overloaded` (at capacity, shed, adaptive limit).
    #[serde(rename = "overloaded")]
    Overloaded,
    /// The agent answered 500–599.
    #[serde(rename = "5xx")]
    ServerError,
    /// The agent answered 503.
    #[serde(rename = "503")]
    Unavailable,
    /// The agent answered 429.
    #[serde(rename = "429")]
    TooMany,
}

/// The default `retry_on`: timeouts, unreachable agents and 5xx answers, plus the two answers
/// that say "not now" before any work was done (`overloaded`, 429).
pub fn retry_on_default() -> Vec<RetryOn> {
    vec![
        RetryOn::Timeout,
        RetryOn::Unreachable,
        RetryOn::Overloaded,
        RetryOn::ServerError,
        RetryOn::TooMany,
    ]
}

/// Retry settings (`[defaults.retry]`, `[capability."x".retry]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first attempt (0 turns retries off). `max_attempts = n` in node.toml
    /// is read as `max_retries = n - 1`.
    pub max_retries: u32,
    /// The failures that are retried.
    pub retry_on: Vec<RetryOn>,
    /// Backoff ceiling of the first retry, in ms (full jitter below it).
    pub backoff_base_ms: u64,
    /// Largest backoff ceiling, in ms.
    pub backoff_max_ms: u64,
    /// Retries allowed as a fraction of calls (the budget earns this per call).
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic (the floor).
    pub budget_min_per_s: f64,
    /// An attempt's own timeout as a multiple of the capability's observed p99 latency
    /// (0: none, the attempt may use the whole remaining deadline).
    pub attempt_timeout_p99_multiple: u32,
    /// The attempt timeout is never below this, in ms.
    pub attempt_timeout_min_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            retry_on: retry_on_default(),
            backoff_base_ms: 10,
            backoff_max_ms: 500,
            budget_ratio: 0.2,
            budget_min_per_s: 10.0,
            attempt_timeout_p99_multiple: 5,
            attempt_timeout_min_ms: 2_000,
        }
    }
}

impl RetryConfig {
    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// Checks ranges; `Err((key, what is valid))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_retries > RETRIES_MAX {
            return Err(("max_retries", format!("must be 0 to {RETRIES_MAX}")));
        }
        if self.retry_on.len() > RETRY_ON_MAX {
            return Err(("retry_on", format!("at most {RETRY_ON_MAX} entries")));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return Err(("backoff_base_ms", "must be at most backoff_max_ms".into()));
        }
        if !(0.0..=1.0).contains(&self.budget_ratio) {
            return Err(("budget_ratio", "must be in [0, 1]".into()));
        }
        if !(0.0..=1000.0).contains(&self.budget_min_per_s) {
            return Err(("budget_min_per_s", "must be 0 to 1000".into()));
        }
        if self.attempt_timeout_p99_multiple > 100 {
            return Err(("attempt_timeout_p99_multiple", "must be 0 to 100".into()));
        }
        if !(1..=DEADLINE_MS_MAX).contains(&self.attempt_timeout_min_ms) {
            return Err((
                "attempt_timeout_min_ms",
                format!("must be 1 to {DEADLINE_MS_MAX}"),
            ));
        }
        Ok(())
    }

    fn on(&self, r: RetryOn) -> bool {
        self.retry_on.contains(&r)
    }
}

/// Whether a failed attempt may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient: another attempt (preferably elsewhere) may succeed.
    Transient,
    /// Permanent: retrying would fail the same way or do harm.
    Permanent,
}

/// Classifies a failed attempt against the capability's `retry_on`. The agent's own word wins:
/// `x-mesh-retryable: false` is never retried, `true` always is. A non-idempotent capability
/// is retried only on failures that prove the agent did no work (`overloaded`, 429): never
/// after the request may have reached it. Routing refusals, loops, bad requests and RBAC
/// denials are permanent.
pub fn classify(e: &CallError, cfg: &RetryConfig, idempotent: bool) -> Retry {
    let yes = |b: bool| {
        if b {
            Retry::Transient
        } else {
            Retry::Permanent
        }
    };
    if e.no_retry {
        return Retry::Permanent;
    }
    if e.retryable && e.code == ErrorCode::AgentError {
        return Retry::Transient;
    }
    let status = e.status.unwrap_or(0);
    let refused_before_work =
        e.code == ErrorCode::Overloaded || (e.code == ErrorCode::AgentError && status == 429);
    if !idempotent && !refused_before_work {
        return Retry::Permanent;
    }
    match e.code {
        ErrorCode::DeadlineExceeded => yes(cfg.on(RetryOn::Timeout)),
        ErrorCode::AgentUnreachable => yes(cfg.on(RetryOn::Unreachable)),
        ErrorCode::Overloaded => yes(cfg.on(RetryOn::Overloaded)),
        ErrorCode::AgentError => yes(match status {
            429 => cfg.on(RetryOn::TooMany),
            503 => cfg.on(RetryOn::Unavailable) || cfg.on(RetryOn::ServerError),
            500..=599 => cfg.on(RetryOn::ServerError),
            _ => false,
        }),
        _ => Retry::Permanent,
    }
}

/// Successful attempts observed before an attempt gets its own timeout.
pub const ATTEMPT_TIMEOUT_MIN_SAMPLES: usize = 20;

/// An attempt's own timeout: `attempt_timeout_p99_multiple` × the observed p99 latency, never
/// below `attempt_timeout_min_ms`; `None` (the whole remaining deadline) while fewer than
/// [`ATTEMPT_TIMEOUT_MIN_SAMPLES`] latencies are known or when turned off.
pub fn attempt_timeout_ms(p99_ms: Option<f64>, samples: usize, cfg: &RetryConfig) -> Option<u64> {
    if cfg.attempt_timeout_p99_multiple == 0 || samples < ATTEMPT_TIMEOUT_MIN_SAMPLES {
        return None;
    }
    let p99 = p99_ms.filter(|p| p.is_finite() && *p >= 0.0)?;
    let t = (p99 * cfg.attempt_timeout_p99_multiple as f64).ceil() as u64;
    Some(t.clamp(cfg.attempt_timeout_min_ms, DEADLINE_MS_MAX))
}

/// Whether an agent's answer (status below 500) should be treated as a transient failure.
pub fn transient_status(status: u16, cfg: &RetryConfig) -> bool {
    status == 429 && cfg.on(RetryOn::TooMany)
}

/// Full-jitter backoff before retry number `retry` (1 = first retry): uniform in
/// `[0, min(max, base · 2^(retry-1))]`, in ms.
pub fn backoff_ms<R: Rng>(retry: u32, cfg: &RetryConfig, rng: &mut R) -> u64 {
    let exp = retry.saturating_sub(1).min(30);
    let ceiling = cfg
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.backoff_max_ms);
    if ceiling == 0 {
        return 0;
    }
    rng.gen_range(0..=ceiling)
}

/// A retry budget as a token bucket (Finagle's RetryBudget, gRPC's retry throttling in
/// spirit): every call deposits `ratio` of a retry, time deposits `min_per_s` per second, and a
/// retry withdraws one. So at most about `ratio` of the calls plus a small floor are retries,
/// and a failing dependency cannot turn into a retry storm.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    balance: f64,
    last_ms: u64,
}

impl RetryBudget {
    /// A budget at `now_ms` holding `initial` retries (the node starts with one second's
    /// worth of the floor, so the first failures of a fresh node may be retried).
    pub fn new(now_ms: u64, initial: f64) -> Self {
        RetryBudget {
            balance: initial.clamp(0.0, RETRY_BUDGET_BALANCE_MAX),
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64, cfg: &RetryConfig) {
        let dt_s = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now_ms);
        // The floor refills at most one second's worth: a long idle spell must not bank a
        // burst of retries.
        let cap = cfg.budget_min_per_s.max(1.0);
        let floor = (cfg.budget_min_per_s * dt_s).min(cap);
        self.balance = (self.balance + floor).min(RETRY_BUDGET_BALANCE_MAX);
    }

    /// Records a call (first attempt).
    pub fn deposit(&mut self, now_ms: u64, cfg: &RetryConfig) {
        self.refill(now_ms, cfg);
        self.balance = (self.balance + cfg.budget_ratio).min(RETRY_BUDGET_BALANCE_MAX);
    }

    /// Takes one retry from the budget, or says there is none.
    pub fn withdraw(&mut self, now_ms: u64, cfg: &RetryConfig) -> bool {
        self.refill(now_ms, cfg);
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }

    /// Retries available now.
    pub fn balance(&self) -> f64 {
        self.balance
    }
}

/// Deadline settings (`[defaults.deadline]`, `[capability."x".deadline]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadlineConfig {
    /// Deadline of a call that names none, in ms.
    pub default_ms: u64,
    /// Share of the remaining time each hop keeps back, in percent.
    pub reserve_pct: u32,
    /// Smallest reserve, in ms.
    pub reserve_min_ms: u64,
    /// A hop with less than this to pass on fails at once with `deadline_exceeded`, in ms.
    pub min_ms: u64,
}

/// Largest deadline accepted, in ms.
pub const DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;

impl Default for DeadlineConfig {
    fn default() -> Self {
        DeadlineConfig {
            default_ms: 30_000,
            reserve_pct: 10,
            reserve_min_ms: 5,
            min_ms: 10,
        }
    }
}

impl DeadlineConfig {
    /// Checks ranges; `Err((key, what is valid))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=DEADLINE_MS_MAX).contains(&self.default_ms) {
            return Err(("default_ms", format!("must be 1 to {DEADLINE_MS_MAX}")));
        }
        if self.reserve_pct > 50 {
            return Err(("reserve_pct", "must be 0 to 50".into()));
        }
        if self.reserve_min_ms > 10_000 {
            return Err(("reserve_min_ms", "must be 0 to 10000".into()));
        }
        if self.min_ms == 0 || self.min_ms > self.default_ms {
            return Err(("min_ms", "must be 1 to default_ms".into()));
        }
        Ok(())
    }
}

/// The budget to pass to the next hop when `remaining_ms` are left: the remainder minus a
/// reserve of `max(reserve_pct %, reserve_min_ms)`. Below `min_ms` the call is not sent.
pub fn hop_budget_ms(remaining_ms: u64, cfg: &DeadlineConfig) -> Result<u64, CallError> {
    let pct_of = cfg.reserve_pct as u64;
    let pct = remaining_ms / 100 * pct_of + (remaining_ms % 100) * pct_of / 100;
    let reserve = pct.max(cfg.reserve_min_ms);
    let budget = remaining_ms.saturating_sub(reserve);
    if budget < cfg.min_ms {
        return Err(CallError::new(
            ErrorCode::DeadlineExceeded,
            format!(
                "{remaining_ms} ms left leaves {budget} ms after the {reserve} ms reserve, below \
                 the minimum of {} ms; not sent",
                cfg.min_ms
            ),
        ));
    }
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn classification_table() {
        let e = |code, status: Option<u16>, retryable| CallError {
            status,
            retryable,
            ..CallError::new(code, "x")
        };
        let d = RetryConfig::default();
        use ErrorCode::*;
        let cases = [
            (e(DeadlineExceeded, None, false), Retry::Transient),
            (e(AgentUnreachable, None, false), Retry::Transient),
            (e(Overloaded, None, false), Retry::Transient),
            (e(AgentError, Some(503), false), Retry::Transient),
            (e(AgentError, Some(429), false), Retry::Transient),
            (e(AgentError, Some(500), false), Retry::Transient),
            (e(AgentError, Some(502), false), Retry::Transient),
            (e(AgentError, Some(504), false), Retry::Transient),
            (e(AgentError, Some(500), true), Retry::Transient),
            (e(LoopDetected, None, true), Retry::Permanent),
            (e(Forbidden, None, false), Retry::Permanent),
            (e(BadRequest, None, false), Retry::Permanent),
            (e(NoCapability, None, false), Retry::Permanent),
            (e(CircuitOpen, None, false), Retry::Permanent),
        ];
        for (err, want) in cases {
            assert_eq!(classify(&err, &d, true), want, "{err:?}");
        }
        assert!(transient_status(429, &d));
        for s in [200, 400, 403, 404, 409] {
            assert!(!transient_status(s, &d), "{s}");
        }
    }

    #[test]
    fn retry_on_is_the_users_choice() {
        let only_timeouts = RetryConfig {
            retry_on: vec![RetryOn::Timeout],
            ..RetryConfig::default()
        };
        let err = |code, status| CallError {
            status,
            ..CallError::new(code, "x")
        };
        use ErrorCode::*;
        assert_eq!(
            classify(&err(DeadlineExceeded, None), &only_timeouts, true),
            Retry::Transient
        );
        for (code, status) in [
            (AgentError, Some(500)),
            (AgentError, Some(429)),
            (AgentUnreachable, None),
            (Overloaded, None),
        ] {
            assert_eq!(
                classify(&err(code, status), &only_timeouts, true),
                Retry::Permanent,
                "{code:?} {status:?}"
            );
        }
        assert!(!transient_status(429, &only_timeouts));
        let only_503 = RetryConfig {
            retry_on: vec![RetryOn::Unavailable],
            ..RetryConfig::default()
        };
        assert_eq!(
            classify(&err(AgentError, Some(503)), &only_503, true),
            Retry::Transient
        );
        assert_eq!(
            classify(&err(AgentError, Some(500)), &only_503, true),
            Retry::Permanent
        );
        // The names in node.toml.
        let parsed: Vec<RetryOn> = toml::Value::Array(
            ["timeout", "unreachable", "overloaded", "5xx", "503", "429"]
                .iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )
        .try_into()
        .unwrap();
        assert_eq!(parsed.len(), 6);
    }

    #[test]
    fn attempt_timeout_is_a_bounded_multiple_of_p99() {
        let d = RetryConfig::default();
        assert_eq!(
            attempt_timeout_ms(Some(100.0), 5, &d),
            None,
            "too few samples"
        );
        assert_eq!(
            attempt_timeout_ms(Some(100.0), 50, &d),
            Some(2_000),
            "floor"
        );
        assert_eq!(attempt_timeout_ms(Some(1_000.0), 50, &d), Some(5_000));
        let off = RetryConfig {
            attempt_timeout_p99_multiple: 0,
            ..RetryConfig::default()
        };
        assert_eq!(attempt_timeout_ms(Some(1_000.0), 50, &off), None);
        assert_eq!(
            attempt_timeout_ms(Some(1e12), 50, &d),
            Some(DEADLINE_MS_MAX),
            "bounded"
        );
    }

    #[test]
    fn the_agents_word_and_idempotency_win() {
        let d = RetryConfig::default();
        let no = CallError {
            status: Some(500),
            no_retry: true,
            ..CallError::new(ErrorCode::AgentError, "x")
        };
        assert_eq!(
            classify(&no, &d, true),
            Retry::Permanent,
            "x-mesh-retryable: false"
        );
        let yes = CallError {
            status: Some(418),
            retryable: true,
            ..CallError::new(ErrorCode::AgentError, "x")
        };
        assert_eq!(
            classify(&yes, &d, true),
            Retry::Transient,
            "x-mesh-retryable: true"
        );
        // Non-idempotent: only refusals before any work are retried.
        use ErrorCode::*;
        for (code, status, want) in [
            (Overloaded, None, Retry::Transient),
            (AgentError, Some(429), Retry::Transient),
            (DeadlineExceeded, None, Retry::Permanent),
            (AgentUnreachable, None, Retry::Permanent),
            (AgentError, Some(500), Retry::Permanent),
            (AgentError, Some(503), Retry::Permanent),
        ] {
            let e = CallError {
                status,
                ..CallError::new(code, "x")
            };
            assert_eq!(classify(&e, &d, false), want, "{code:?} {status:?}");
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_a_growing_cap() {
        let cfg = RetryConfig {
            backoff_base_ms: 10,
            backoff_max_ms: 100,
            ..RetryConfig::default()
        };
        let mut rng = StdRng::seed_from_u64(4);
        for (retry, cap) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (60, 100)] {
            let xs: Vec<u64> = (0..400)
                .map(|_| backoff_ms(retry, &cfg, &mut rng))
                .collect();
            assert!(xs.iter().all(|x| *x <= cap), "retry {retry}");
            // Full jitter reaches both ends of the range.
            assert!(xs.iter().any(|x| *x <= cap / 10), "retry {retry} low");
            assert!(xs.iter().any(|x| *x >= cap * 9 / 10), "retry {retry} high");
        }
    }

    /// Budget arithmetic: (calls, over ms, retries wanted per call, expected max retries).
    #[test]
    fn budget_caps_retries_at_ratio_plus_floor() {
        let cfg = RetryConfig {
            budget_ratio: 0.2,
            budget_min_per_s: 2.0,
            ..RetryConfig::default()
        };
        let cases: &[(u64, u64, u64)] = &[
            // 1000 failing calls in 1 s: 20 % of 1000 = 200, plus ≤ 2 from the floor.
            (1000, 1000, 202),
            // 100 calls over 10 s: 20 + 10 s × 2/s = 40.
            (100, 10_000, 40),
            // 10 calls at once: 2, no time for the floor.
            (10, 0, 2),
        ];
        for (calls, span_ms, max) in cases {
            let mut b = RetryBudget::new(0, 0.0);
            let mut granted = 0;
            for i in 0..*calls {
                let now = span_ms * i / calls;
                b.deposit(now, &cfg);
                if b.withdraw(now, &cfg) {
                    granted += 1;
                }
            }
            assert!(granted <= *max, "{calls} calls: {granted} > {max}");
            assert!(
                granted + 3 >= *max,
                "{calls} calls: {granted} far below {max}"
            );
        }
    }

    #[test]
    fn idle_time_does_not_bank_a_burst() {
        let cfg = RetryConfig {
            budget_ratio: 0.0,
            budget_min_per_s: 5.0,
            ..RetryConfig::default()
        };
        let mut b = RetryBudget::new(0, 0.0);
        b.deposit(3_600_000, &cfg);
        let burst = (0..100).filter(|_| b.withdraw(3_600_000, &cfg)).count();
        assert_eq!(burst, 5, "one second's worth of floor, not an hour's");
    }

    /// (remaining, reserve %, reserve floor, min, expected budget or None for refusal).
    #[test]
    fn hop_budget_table() {
        let cases: &[(u64, u32, u64, u64, Option<u64>)] = &[
            (1000, 10, 5, 10, Some(900)),
            (100, 10, 5, 10, Some(90)),
            (30, 10, 5, 10, Some(25)), // 10 % is 3, the floor 5 wins
            (15, 10, 5, 10, Some(10)),
            (14, 10, 5, 10, None),
            (0, 10, 5, 10, None),
            (30_000, 0, 0, 10, Some(30_000)),
            (
                u64::MAX,
                10,
                5,
                10,
                Some(u64::MAX - (u64::MAX / 100 * 10 + 1)),
            ),
        ];
        for (rem, pct, floor, min, want) in cases {
            let cfg = DeadlineConfig {
                default_ms: 30_000,
                reserve_pct: *pct,
                reserve_min_ms: *floor,
                min_ms: *min,
            };
            match (hop_budget_ms(*rem, &cfg), want) {
                (Ok(got), Some(w)) => assert_eq!(got, *w, "remaining {rem}"),
                (Err(e), None) => assert_eq!(e.code, ErrorCode::DeadlineExceeded),
                (got, want) => panic!("remaining {rem}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn budgets_shrink_along_a_chain() {
        let cfg = DeadlineConfig::default();
        let mut left = 1000;
        let mut seen = vec![];
        while let Ok(b) = hop_budget_ms(left, &cfg) {
            seen.push(b);
            left = b;
        }
        assert!(seen.windows(2).all(|w| w[1] < w[0]), "{seen:?}");
        assert!(
            seen.len() > 8,
            "a 1 s budget survives the default hop limit: {seen:?}"
        );
    }

    #[test]
    fn config_ranges() {
        RetryConfig::default().validate().unwrap();
        DeadlineConfig::default().validate().unwrap();
        let r = RetryConfig {
            max_retries: 10,
            ..RetryConfig::default()
        };
        assert_eq!(r.validate().unwrap_err().0, "max_retries");
        assert_eq!(
            RetryConfig::default().max_attempts(),
            4,
            "3 retries by default"
        );
        let d = DeadlineConfig {
            reserve_pct: 90,
            ..DeadlineConfig::default()
        };
        assert_eq!(d.validate().unwrap_err().0, "reserve_pct");
    }
}
