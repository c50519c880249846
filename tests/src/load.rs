//! A steady-load generator that accounts for every call: each call it sends ends as a success,
//! a typed mesh error (JSON with a `code`), an untyped failure, or a hang (no answer by its
//! deadline plus [`HANG_SLACK`]). Failure tests assert that the last two stay at zero.

use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long past its deadline a call may take before it counts as hung.
pub const HANG_SLACK: Duration = Duration::from_millis(1500);
/// Most calls in flight at once; the generator waits rather than queue more.
pub const IN_FLIGHT_MAX: usize = 64;
/// Most outcomes recorded (a bound on memory; a run that reaches it stops sending).
pub const OUTCOMES_MAX: usize = 200_000;

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx; who served it (`x-mesh-served-by`).
    Ok(String),
    /// Non-2xx with a JSON `code`.
    Typed(String),
    /// Failed without a typed error (transport error, body without a code).
    Untyped(String),
    /// No answer within deadline + slack.
    Hung,
}

/// One call's record.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it was sent, relative to the generator's start.
    pub sent_at: Duration,
    /// How long it took.
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// What a run produced.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Every call, in completion order.
    pub records: Vec<Record>,
}

impl Report {
    /// Calls sent.
    pub fn sent(&self) -> usize {
        self.records.len()
    }
    /// Successes.
    pub fn ok(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Ok(_)))
    }
    /// Typed errors.
    pub fn typed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Typed(_)))
    }
    /// Untyped failures.
    pub fn untyped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Untyped(_)))
    }
    /// Hangs.
    pub fn hung(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Hung))
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.records.iter().filter(|r| f(&r.outcome)).count()
    }
    /// Typed errors by code.
    pub fn codes(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.records {
            if let Outcome::Typed(c) | Outcome::Untyped(c) = &r.outcome {
                *m.entry(c.clone()).or_insert(0) += 1;
            }
        }
        m
    }
    /// The slowest call.
    pub fn max_took(&self) -> Duration {
        self.records
            .iter()
            .map(|r| r.took)
            .max()
            .unwrap_or_default()
    }
    /// One line: `sent=… ok=… typed=… untyped=… hung=… max_ms=… codes={…}`.
    pub fn summary(&self) -> String {
        format!(
            "sent={} ok={} typed_error={} untyped={} hung={} lost={} max_ms={} codes={:?}",
            self.sent(),
            self.ok(),
            self.typed(),
            self.untyped(),
            self.hung(),
            self.sent() - self.ok() - self.typed() - self.untyped() - self.hung(),
            self.max_took().as_millis(),
            self.codes()
        )
    }
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Node API base URL, e.g. `http://127.0.0.1:7600`.
    pub api: String,
    /// Capability called.
    pub capability: String,
    /// Calls per second.
    pub rate_per_s: u32,
    /// `x-mesh-deadline-ms` of every call.
    pub deadline_ms: u64,
}

/// Handle to stop a running generator.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks the generator to stop sending; it then waits for calls in flight.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }
    fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Sends calls at `spec.rate_per_s` until `stop` or `max_run` passes, then waits for every call
/// in flight and returns the records. Runs on the current runtime; call it inside the caller's
/// network namespace.
pub async fn run(spec: LoadSpec, stop: Stop, max_run: Duration) -> Result<Report> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(IN_FLIGHT_MAX)
        .build()?;
    let records = Arc::new(Mutex::new(Vec::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rate_per_s.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0usize;
    while !stop.stopped() && start.elapsed() < max_run && sent < OUTCOMES_MAX {
        tick.tick().await;
        let permit = permits.clone().acquire_owned().await?;
        sent += 1;
        let (http, records, spec) = (http.clone(), records.clone(), spec.clone());
        tasks.spawn(async move {
            let sent_at = start.elapsed();
            let t0 = Instant::now();
            let outcome = one_call(&http, &spec).await;
            let rec = Record {
                sent_at,
                took: t0.elapsed(),
                outcome,
            };
            records.lock().unwrap().push(rec);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let records = std::mem::take(&mut *records.lock().unwrap());
    Ok(Report { records })
}

async fn one_call(http: &reqwest::Client, spec: &LoadSpec) -> Outcome {
    let limit = Duration::from_millis(spec.deadline_ms) + HANG_SLACK;
    let fut = http
        .post(format!("{}/v1/call/{}", spec.api, spec.capability))
        .header("content-type", "application/json")
        .header("x-mesh-deadline-ms", spec.deadline_ms.to_string())
        .body(r#"{"q":"chaos"}"#)
        .send();
    let resp = match tokio::time::timeout(limit, fut).await {
        Err(_) => return Outcome::Hung,
        Ok(Err(e)) => return Outcome::Untyped(format!("transport: {e}")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let served = crate::served_by(&resp);
    let body = match tokio::time::timeout(limit, resp.bytes()).await {
        Err(_) => return Outcome::Hung,
        Ok(Err(e)) => return Outcome::Untyped(format!("body: {e}")),
        Ok(Ok(b)) => b,
    };
    if status.is_success() {
        return Outcome::Ok(served);
    }
    match serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
    {
        Some(code) => Outcome::Typed(code),
        None => Outcome::Untyped(format!("status {status} without a code")),
    }
}
