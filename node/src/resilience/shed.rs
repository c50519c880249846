//! Load shedding by caller priority. A node caps the in-flight work of its agent at the agent's
//! `max_concurrency`; below that cap, lower-priority callers hit lower thresholds, so when the
//! node fills up it sheds experimental traffic first and critical traffic last. The caller's
//! priority comes from its gossiped node record (signed by its origin), never from the call.

pub use crate::contract::names::priority_name;
use crate::contract::{CallError, ErrorCode};
use agentmesh_gossip::record::Priority;
use serde::{Deserialize, Serialize};

/// Load shedding by caller priority (per node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SheddingConfig {
    /// Experimental callers are refused once in-flight work reaches this share of capacity.
    pub experimental_pct: u32,
    /// Standard callers are refused once in-flight work reaches this share of capacity.
    pub standard_pct: u32,
}

impl Default for SheddingConfig {
    fn default() -> Self {
        SheddingConfig {
            experimental_pct: 50,
            standard_pct: 80,
        }
    }
}

/// The in-flight count at which a caller of `priority` is shed, for capacity `max`.
pub fn limit(priority: Priority, max: u32, cfg: &SheddingConfig) -> u32 {
    let pct = match priority {
        Priority::Experimental => cfg.experimental_pct,
        Priority::Standard => cfg.standard_pct,
        Priority::Critical => 100,
    };
    ((max as u64 * pct as u64).div_ceil(100)).max(1) as u32
}

/// Admits a call from a caller of `priority` with `in_flight` calls already running, or sheds
/// it with `overloaded`.
pub fn admit(
    priority: Priority,
    in_flight: u32,
    max: u32,
    cfg: &SheddingConfig,
) -> Result<(), CallError> {
    let l = limit(priority, max, cfg);
    if in_flight >= l {
        return Err(CallError::new(
            ErrorCode::Overloaded,
            format!(
                "shed: {} callers are refused at {l} of {max} calls in flight",
                priority_name(priority)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (priority, in flight, capacity, admitted?).
    #[test]
    fn shedding_order_table() {
        use Priority::*;
        let cfg = SheddingConfig::default(); // 50 % / 80 % / 100 %
        let cases = [
            (Experimental, 4, 10, true),
            (Experimental, 5, 10, false),
            (Standard, 5, 10, true),
            (Standard, 7, 10, true),
            (Standard, 8, 10, false),
            (Critical, 8, 10, true),
            (Critical, 9, 10, true),
            (Critical, 10, 10, false),
            (Experimental, 0, 1, true), // a tiny node still serves someone
            (Experimental, 1, 1, false),
            (Critical, 0, 1, true),
        ];
        for (p, inf, max, ok) in cases {
            assert_eq!(admit(p, inf, max, &cfg).is_ok(), ok, "{p:?} {inf}/{max}");
        }
        // Monotone: whenever a higher priority is shed, every lower one is too.
        for max in 1..50 {
            for inf in 0..=max {
                let e = admit(Experimental, inf, max, &cfg).is_ok();
                let s = admit(Standard, inf, max, &cfg).is_ok();
                let c = admit(Critical, inf, max, &cfg).is_ok();
                assert!(e <= s && s <= c, "{inf}/{max}");
            }
        }
    }
}
