//! This node's outbound call summary per `(target agent, capability)`: count, errors and a
//! latency histogram, plus the slowest recent calls. A compact, bounded copy of it
//! ([`TrafficSummary`]) rides in the node's signed gossip record under the extension key
//! [`TRAFFIC_EXT_KEY`], so every node can build the mesh-wide view ([`crate::obs::mesh_view`]).
//!
//! Counts are cumulative since the node started; p50 and p99 come from a log-bucket
//! histogram (bucket upper bounds grow by [`BUCKET_FACTOR`], so a quantile is within 25 %).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The record extension key of the summary.
pub const TRAFFIC_EXT_KEY: &str = "traffic";
/// Most pairs in one gossiped summary (the busiest are kept).
pub const TRAFFIC_ENTRIES_MAX: usize = 32;
/// Largest encoded summary, in bytes (checked before decoding; the record limit is 16 KiB).
pub const TRAFFIC_SUMMARY_BYTES_MAX: usize = 3 * 1024;
/// Longest agent or capability name carried in a summary.
pub const TRAFFIC_NAME_LEN_MAX: usize = 64;
/// Most pairs tracked locally; past it, new pairs are folded into one `other` pair.
pub const TRAFFIC_TABLE_MAX: usize = 1024;
/// How often a changed summary is published to gossip.
pub const TRAFFIC_PUBLISH_INTERVAL: Duration = Duration::from_secs(2);
/// Slowest recent calls kept.
pub const SLOW_CALLS_MAX: usize = 10;
/// How long a slow call stays in the list, in ms.
pub const SLOW_CALLS_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Histogram buckets per pair.
pub const BUCKETS: usize = 64;
/// Upper bound of the first bucket, in ms.
pub const BUCKET_MIN_MS: f64 = 0.1;
/// Growth of bucket bounds.
pub const BUCKET_FACTOR: f64 = 1.25;
/// Summary format version.
pub const SUMMARY_VERSION: u8 = 1;

/// One pair of a gossiped summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairSummary {
    /// The agent called.
    pub target_agent: String,
    /// The capability called.
    pub capability: String,
    /// Calls made.
    pub count: u64,
    /// Calls that failed (error code or 5xx).
    pub errors: u64,
    /// Median latency, in ms.
    pub p50_ms: f32,
    /// 99th percentile latency, in ms.
    pub p99_ms: f32,
}

/// What a node gossips about its outbound calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrafficSummary {
    /// [`SUMMARY_VERSION`].
    pub version: u8,
    /// The busiest pairs, at most [`TRAFFIC_ENTRIES_MAX`].
    pub pairs: Vec<PairSummary>,
}

/// Why a gossiped summary was refused. Nothing changes; the summary is ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SummaryError {
    /// Larger than [`TRAFFIC_SUMMARY_BYTES_MAX`] (checked before decoding).
    #[error("summary of {0} bytes exceeds {TRAFFIC_SUMMARY_BYTES_MAX}")]
    TooLarge(usize),
    /// Not a valid encoding.
    #[error("malformed summary: {0}")]
    Decode(String),
    /// A decoded field breaks a limit, or the version is unknown.
    #[error("summary field {0} out of bounds")]
    Limit(&'static str),
}

impl TrafficSummary {
    /// Encodes, keeping the busiest pairs that fit [`TRAFFIC_ENTRIES_MAX`] and
    /// [`TRAFFIC_SUMMARY_BYTES_MAX`].
    pub fn encode(&self) -> Vec<u8> {
        self.encode_within(TRAFFIC_SUMMARY_BYTES_MAX)
    }

    /// Like [`TrafficSummary::encode`], but at most `limit` bytes (never more than
    /// [`TRAFFIC_SUMMARY_BYTES_MAX`]); the busiest pairs are kept.
    pub fn encode_within(&self, limit: usize) -> Vec<u8> {
        let limit = limit.min(TRAFFIC_SUMMARY_BYTES_MAX);
        let mut s = self.clone();
        s.pairs.sort_by_key(|p| std::cmp::Reverse(p.count));
        s.pairs.truncate(TRAFFIC_ENTRIES_MAX);
        loop {
            let bytes = postcard::to_stdvec(&s).unwrap_or_default();
            if bytes.len() <= limit || s.pairs.is_empty() {
                return bytes;
            }
            s.pairs.pop();
        }
    }

    /// Decodes and checks a summary; the size is checked first.
    pub fn decode(bytes: &[u8]) -> Result<TrafficSummary, SummaryError> {
        if bytes.len() > TRAFFIC_SUMMARY_BYTES_MAX {
            return Err(SummaryError::TooLarge(bytes.len()));
        }
        let s: TrafficSummary =
            postcard::from_bytes(bytes).map_err(|e| SummaryError::Decode(e.to_string()))?;
        if s.version != SUMMARY_VERSION {
            return Err(SummaryError::Limit("version"));
        }
        if s.pairs.len() > TRAFFIC_ENTRIES_MAX {
            return Err(SummaryError::Limit("pairs"));
        }
        let bad_name = |n: &str| n.is_empty() || n.len() > TRAFFIC_NAME_LEN_MAX;
        for p in &s.pairs {
            if bad_name(&p.target_agent) || bad_name(&p.capability) {
                return Err(SummaryError::Limit("name"));
            }
            if p.errors > p.count || !p.p50_ms.is_finite() || !p.p99_ms.is_finite() {
                return Err(SummaryError::Limit("figures"));
            }
        }
        Ok(s)
    }
}

/// A slow call seen by this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowCall {
    /// The agent called.
    pub target_agent: String,
    /// The capability.
    pub capability: String,
    /// Latency, in ms.
    pub latency_ms: f64,
    /// Outcome label.
    pub outcome: String,
    /// When, in ms since the UNIX epoch.
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone)]
struct PairStats {
    count: u64,
    errors: u64,
    buckets: [u32; BUCKETS],
}

impl Default for PairStats {
    fn default() -> Self {
        PairStats {
            count: 0,
            errors: 0,
            buckets: [0; BUCKETS],
        }
    }
}

/// The bucket of a latency.
pub fn bucket_of(ms: f64) -> usize {
    // NaN and tiny values land in the first bucket.
    if ms.is_nan() || ms <= BUCKET_MIN_MS {
        return 0;
    }
    let i = ((ms / BUCKET_MIN_MS).ln() / BUCKET_FACTOR.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in ms.
pub fn bucket_upper_ms(i: usize) -> f64 {
    BUCKET_MIN_MS * BUCKET_FACTOR.powi(i as i32)
}

impl PairStats {
    fn quantile_ms(&self, q: f64) -> f32 {
        let total: u64 = self.buckets.iter().map(|&b| b as u64).sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &b) in self.buckets.iter().enumerate() {
            seen += b as u64;
            if seen >= rank {
                return bucket_upper_ms(i) as f32;
            }
        }
        bucket_upper_ms(BUCKETS - 1) as f32
    }
}

#[derive(Debug, Default)]
struct Table {
    pairs: HashMap<(String, String), PairStats>,
    slow: Vec<SlowCall>,
    changed: bool,
}

/// This node's outbound traffic, shared by the runtime (writer) and the API (reader).
#[derive(Debug, Default)]
pub struct TrafficTable {
    t: Mutex<Table>,
    /// The recent failed and refused calls.
    pub failures: crate::obs::failures::FailureLog,
}

fn name(s: &str) -> String {
    crate::net::call_proto::truncate(s, TRAFFIC_NAME_LEN_MAX)
}

impl TrafficTable {
    /// Records one finished call.
    pub fn record(
        &self,
        target_agent: &str,
        capability: &str,
        ok: bool,
        latency_ms: f64,
        outcome: &str,
        now_unix_ms: u64,
    ) {
        let mut t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (name(target_agent), name(capability));
        if !t.pairs.contains_key(&key) && t.pairs.len() >= TRAFFIC_TABLE_MAX {
            key = (
                crate::obs::metrics::OTHER_LABEL.into(),
                crate::obs::metrics::OTHER_LABEL.into(),
            );
        }
        let s = t.pairs.entry(key.clone()).or_default();
        s.count += 1;
        if !ok {
            s.errors += 1;
        }
        let b = &mut s.buckets[bucket_of(latency_ms)];
        *b = b.saturating_add(1);
        t.changed = true;
        let slow = SlowCall {
            target_agent: key.0,
            capability: key.1,
            latency_ms: (latency_ms * 10.0).round() / 10.0,
            outcome: outcome.to_string(),
            at_unix_ms: now_unix_ms,
        };
        insert_slow(&mut t.slow, slow, now_unix_ms);
    }

    /// The current summary (every pair; [`TrafficSummary::encode`] bounds it).
    pub fn summary(&self) -> TrafficSummary {
        let t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        let mut pairs: Vec<PairSummary> = t
            .pairs
            .iter()
            .map(|((target, cap), s)| PairSummary {
                target_agent: target.clone(),
                capability: cap.clone(),
                count: s.count,
                errors: s.errors,
                p50_ms: s.quantile_ms(0.5),
                p99_ms: s.quantile_ms(0.99),
            })
            .collect();
        pairs.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.target_agent.cmp(&b.target_agent))
        });
        TrafficSummary {
            version: SUMMARY_VERSION,
            pairs,
        }
    }

    /// The encoded summary (at most `limit` bytes) if anything changed since the last call.
    pub fn take_changed(&self, limit: usize) -> Option<Vec<u8>> {
        {
            let mut t = self.t.lock().unwrap_or_else(|p| p.into_inner());
            if !t.changed {
                return None;
            }
            t.changed = false;
        }
        Some(self.summary().encode_within(limit))
    }

    /// The slowest calls of the last [`SLOW_CALLS_WINDOW_MS`], slowest first.
    pub fn slowest(&self, now_unix_ms: u64) -> Vec<SlowCall> {
        let t = self.t.lock().unwrap_or_else(|p| p.into_inner());
        t.slow
            .iter()
            .filter(|s| now_unix_ms.saturating_sub(s.at_unix_ms) <= SLOW_CALLS_WINDOW_MS)
            .cloned()
            .collect()
    }
}

fn insert_slow(list: &mut Vec<SlowCall>, call: SlowCall, now: u64) {
    list.retain(|s| now.saturating_sub(s.at_unix_ms) <= SLOW_CALLS_WINDOW_MS);
    if list.len() >= SLOW_CALLS_MAX {
        match list.last() {
            Some(l) if l.latency_ms >= call.latency_ms => return,
            _ => {
                list.pop();
            }
        }
    }
    let pos = list
        .iter()
        .position(|s| s.latency_ms < call.latency_ms)
        .unwrap_or(list.len());
    list.insert(pos, call);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_errors_and_quantiles() {
        let t = TrafficTable::default();
        for i in 0..100 {
            let ms = if i < 98 { 10.0 } else { 500.0 };
            t.record("b", "x.y", i % 10 != 0, ms, "ok", 1_000);
        }
        let s = t.summary();
        assert_eq!(s.pairs.len(), 1);
        let p = &s.pairs[0];
        assert_eq!((p.count, p.errors), (100, 10));
        assert!(p.p50_ms >= 10.0 && p.p50_ms < 12.5, "{p:?}");
        assert!(p.p99_ms >= 500.0 && p.p99_ms < 625.0, "{p:?}");
        assert!(t.take_changed(TRAFFIC_SUMMARY_BYTES_MAX).is_some());
        assert!(
            t.take_changed(TRAFFIC_SUMMARY_BYTES_MAX).is_none(),
            "unchanged tables publish nothing"
        );
    }

    #[test]
    fn summary_is_bounded_and_keeps_the_busiest() {
        let t = TrafficTable::default();
        for i in 0..200u64 {
            for _ in 0..=i {
                t.record(
                    &format!("agent-{i:03}-{}", "x".repeat(50)),
                    "cap",
                    true,
                    1.0,
                    "ok",
                    0,
                );
            }
        }
        let bytes = t.summary().encode();
        assert!(bytes.len() <= TRAFFIC_SUMMARY_BYTES_MAX);
        let small = t.summary().encode_within(300);
        assert!(small.len() <= 300);
        assert!(s_len(&small) < s_len(&bytes));
        let s = TrafficSummary::decode(&bytes).unwrap();
        assert!(!s.pairs.is_empty() && s.pairs.len() <= TRAFFIC_ENTRIES_MAX);
        assert_eq!(s.pairs[0].count, 200, "the busiest pair comes first");
    }

    fn s_len(bytes: &[u8]) -> usize {
        TrafficSummary::decode(bytes).unwrap().pairs.len()
    }

    #[test]
    fn bad_summaries_are_refused() {
        let big = vec![0u8; TRAFFIC_SUMMARY_BYTES_MAX + 1];
        assert_eq!(
            TrafficSummary::decode(&big),
            Err(SummaryError::TooLarge(big.len()))
        );
        let mut s = TrafficSummary {
            version: SUMMARY_VERSION,
            pairs: vec![PairSummary {
                target_agent: "b".into(),
                capability: "c".into(),
                count: 1,
                errors: 2,
                p50_ms: 1.0,
                p99_ms: 1.0,
            }],
        };
        let raw = postcard::to_stdvec(&s).unwrap();
        assert_eq!(
            TrafficSummary::decode(&raw),
            Err(SummaryError::Limit("figures"))
        );
        s.version = 9;
        let raw = postcard::to_stdvec(&s).unwrap();
        assert_eq!(
            TrafficSummary::decode(&raw),
            Err(SummaryError::Limit("version"))
        );
    }

    #[test]
    fn slowest_calls_are_kept_in_order_and_expire() {
        let t = TrafficTable::default();
        for i in 0..30 {
            t.record("b", "c", true, i as f64, "ok", 1_000);
        }
        let s = t.slowest(1_000);
        assert_eq!(s.len(), SLOW_CALLS_MAX);
        assert_eq!(s[0].latency_ms, 29.0);
        assert!(t.slowest(1_000 + SLOW_CALLS_WINDOW_MS + 1).is_empty());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = TrafficSummary::decode(&bytes);
        }

        #[test]
        fn bucket_bounds_contain_the_value(ms in 0.0f64..100_000.0) {
            let i = bucket_of(ms);
            prop_assert!(ms <= bucket_upper_ms(i) + 1e-9 || i == BUCKETS - 1);
            if i > 0 {
                prop_assert!(ms > bucket_upper_ms(i - 1) - 1e-9);
            }
        }
    }
}
