//! Mesh configuration as a specification: the routing and resilience settings of `node.toml`.
//!
//! ```toml
//! [defaults]                       # every capability, unless overridden
//! policy = "latency"               # the default; round_robin | random | least_loaded | cost | quality | preference (or prefer)
//! locality = "zone"                # the default: caller's zone, then region, then anywhere; region | rtt | off
//! hop_limit = 8
//! [defaults.deadline]
//! default_ms = 30000
//! reserve_pct = 10                 # each hop keeps back max(10 %, reserve_min_ms)
//! reserve_min_ms = 5
//! min_ms = 10                      # less than this left: deadline_exceeded, not sent
//! [defaults.retry]
//! max_retries = 3                  # retries after the first attempt (max_attempts = n: n - 1)
//! retry_on = ["timeout", "unreachable", "overloaded", "5xx", "429"]
//! attempt_timeout_p99_multiple = 5 # an attempt's own timeout: 5 × observed p99 (0: none) …
//! attempt_timeout_min_ms = 2000    # … never below this
//! backoff_base_ms = 10
//! backoff_max_ms = 500
//! budget_ratio = 0.2               # retries ≤ 20 % of calls …
//! budget_min_per_s = 10            # … plus this floor
//! [defaults.breaker]
//! failure_rate = 0.5
//! min_calls = 5
//! window_calls = 20
//! open_ms = 2000                   # doubles per consecutive open, jittered, up to open_ms_max
//! panic_threshold = 0.5            # > 50 % ejected: ignore ejection (Envoy panic mode)
//! [defaults.quality]
//! prefer = 0.95
//! fallback = 0.90
//! floor = 0.70
//! [defaults.shedding]              # per node, so only here
//! experimental_pct = 50            # experimental callers shed above 50 % of capacity
//! standard_pct = 80                # standard above 80 %; critical only at 100 %
//!
//! [capability."inventory.query"]   # any key of [defaults] but shedding
//! policy = "cost"
//! fallback = "inventory.batch"     # every breaker open: call this capability instead
//! [capability."inventory.query".retry]
//! max_attempts = 2
//! ```
//!
//! A capability section is merged key by key over `[defaults]`, which is merged over the
//! built-in defaults; then the result is validated. Errors name the section, the key and the
//! valid values.

use crate::net::call_proto::CHAIN_LEN_MAX;
use crate::resilience::breaker::BreakerConfig;
use crate::resilience::retry::{DeadlineConfig, RetryConfig};
use crate::routing::locality::{LocalityMode, LOCALITY_MODES};
use crate::routing::policies::{PolicyName, QualityTiers, POLICY_NAMES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most `[capability."…"]` sections.
pub const CAPABILITY_SECTIONS_MAX: usize = 1024;
/// Default hop limit of a call chain.
pub const HOP_LIMIT_DEFAULT: u32 = 8;

pub use crate::resilience::adaptive::AdaptiveConfig;
pub use crate::resilience::hedge::HedgingConfig;

pub use crate::resilience::shed::SheddingConfig;

/// The effective settings of one capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilitySettings {
    /// Default policy.
    pub policy: PolicyName,
    /// Locality preference: the caller's zone first, then region (see `routing/locality.rs`).
    pub locality: LocalityMode,
    /// Capability called when every candidate's breaker is open.
    pub fallback: Option<String>,
    /// Most hops in a call chain.
    pub hop_limit: u32,
    /// Deadlines.
    pub deadline: DeadlineConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// Breakers.
    pub breaker: BreakerConfig,
    /// Quality tiers.
    pub quality: QualityTiers,
    /// Hedging.
    pub hedging: HedgingConfig,
    /// Adaptive concurrency limit per agent.
    pub adaptive: AdaptiveConfig,
}

impl Default for CapabilitySettings {
    fn default() -> Self {
        CapabilitySettings {
            // The fastest agents by default (Linkerd's default too): see ARCHITECTURE.md.
            policy: PolicyName::Latency,
            // Keeps calls in the caller's zone while it has labels; a no-op without them.
            locality: LocalityMode::Zone,
            fallback: None,
            hop_limit: HOP_LIMIT_DEFAULT,
            deadline: DeadlineConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            quality: QualityTiers::default(),
            hedging: HedgingConfig::default(),
            adaptive: AdaptiveConfig::default(),
        }
    }
}

/// The whole resilience specification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MeshConfig {
    /// Effective defaults.
    pub defaults: CapabilitySettings,
    /// Effective settings of each configured capability.
    pub capabilities: BTreeMap<String, CapabilitySettings>,
    /// Load shedding (per node).
    pub shedding: SheddingConfig,
}

/// A config error inside the resilience sections: the dotted key and what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SpecError {
    /// Dotted key, e.g. `capability."inv.query".retry.max_attempts`.
    pub key: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

fn spec_err(key: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        key: key.into(),
        message: message.into(),
    }
}

impl MeshConfig {
    /// The effective settings for `capability`.
    pub fn for_capability(&self, capability: &str) -> &CapabilitySettings {
        self.capabilities.get(capability).unwrap_or(&self.defaults)
    }

    /// Builds and validates the specification from the `[defaults]` and `[capability.*]`
    /// tables of a config file.
    pub fn from_tables(
        defaults: Option<&toml::Table>,
        capabilities: &BTreeMap<String, toml::Table>,
    ) -> Result<MeshConfig, SpecError> {
        if capabilities.len() > CAPABILITY_SECTIONS_MAX {
            return Err(spec_err(
                "capability",
                format!("at most {CAPABILITY_SECTIONS_MAX} sections"),
            ));
        }
        let mut defaults = defaults.cloned().unwrap_or_default();
        let shedding = match defaults.remove("shedding") {
            None => SheddingConfig::default(),
            Some(v) => {
                let s: SheddingConfig = v
                    .try_into()
                    .map_err(|e: toml::de::Error| spec_err("defaults.shedding", e.message()))?;
                check_shedding(&s)?;
                s
            }
        };
        let defaults = attempts_to_retries("defaults", defaults)?;
        let base = builtin_table();
        let merged_defaults = merge(base, &defaults);
        let eff_defaults = settings("defaults", &merged_defaults)?;
        let mut caps = BTreeMap::new();
        for (name, table) in capabilities {
            let at = format!("capability.{name:?}");
            if !crate::contract::names::is_capability_name(name) {
                return Err(spec_err(
                    at,
                    "is not a capability name: 1 to 128 characters of [a-z0-9_.-]",
                ));
            }
            if table.contains_key("shedding") {
                return Err(spec_err(
                    format!("{at}.shedding"),
                    "shedding is per node: set it in [defaults.shedding]",
                ));
            }
            let table = attempts_to_retries(&at, table.clone())?;
            let s = settings(&at, &merge(merged_defaults.clone(), &table))?;
            if s.fallback.as_deref() == Some(name.as_str()) {
                return Err(spec_err(
                    format!("{at}.fallback"),
                    "must name another capability, not itself",
                ));
            }
            caps.insert(name.clone(), s);
        }
        Ok(MeshConfig {
            defaults: eff_defaults,
            capabilities: caps,
            shedding,
        })
    }
}

fn check_shedding(s: &SheddingConfig) -> Result<(), SpecError> {
    if !(1..=100).contains(&s.standard_pct) {
        return Err(spec_err(
            "defaults.shedding.standard_pct",
            "must be 1 to 100",
        ));
    }
    if s.experimental_pct == 0 || s.experimental_pct > s.standard_pct {
        return Err(spec_err(
            "defaults.shedding.experimental_pct",
            "must be 1 to standard_pct",
        ));
    }
    Ok(())
}

/// Reads the old `retry.max_attempts = n` (attempts, first included) as `max_retries = n - 1`,
/// so existing files keep their meaning.
fn attempts_to_retries(at: &str, mut t: toml::Table) -> Result<toml::Table, SpecError> {
    let Some(toml::Value::Table(retry)) = t.get_mut("retry") else {
        return Ok(t);
    };
    let Some(v) = retry.remove("max_attempts") else {
        return Ok(t);
    };
    let key = format!("{at}.retry.max_attempts");
    let max = crate::resilience::retry::RETRY_ATTEMPTS_MAX as i64;
    let n = match v {
        toml::Value::Integer(n) if (1..=max).contains(&n) => n,
        _ => return Err(spec_err(key, format!("must be 1 to {max}"))),
    };
    if retry.contains_key("max_retries") {
        return Err(spec_err(
            key,
            "set max_retries or max_attempts (= max_retries + 1), not both",
        ));
    }
    retry.insert("max_retries".into(), toml::Value::Integer(n - 1));
    Ok(t)
}

fn builtin_table() -> toml::Table {
    toml::Table::try_from(CapabilitySettings::default()).unwrap_or_default()
}

/// Merges `over` into `base`, recursing into tables so a section may set one key of a
/// sub-table.
fn merge(mut base: toml::Table, over: &toml::Table) -> toml::Table {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                let merged = merge(std::mem::take(b), o);
                *b = merged;
            }
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

fn field<T: serde::de::DeserializeOwned>(
    at: &str,
    t: &toml::Table,
    key: &str,
) -> Result<T, SpecError> {
    let v = t
        .get(key)
        .cloned()
        .ok_or_else(|| spec_err(format!("{at}.{key}"), "missing"))?;
    v.try_into()
        .map_err(|e: toml::de::Error| spec_err(format!("{at}.{key}"), e.message()))
}

fn settings(at: &str, t: &toml::Table) -> Result<CapabilitySettings, SpecError> {
    const KEYS: &[&str] = &[
        "policy",
        "locality",
        "fallback",
        "hop_limit",
        "deadline",
        "retry",
        "breaker",
        "quality",
        "hedging",
        "adaptive",
    ];
    if let Some(k) = t.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(spec_err(
            format!("{at}.{k}"),
            format!("unknown key; expected one of {}", KEYS.join(", ")),
        ));
    }
    let policy: String = field(at, t, "policy")?;
    let policy = PolicyName::parse(&policy)
        .map_err(|_| spec_err(format!("{at}.policy"), format!("expected {POLICY_NAMES}")))?;
    let locality: String = field(at, t, "locality")?;
    let locality = LocalityMode::parse(&locality).map_err(|_| {
        spec_err(
            format!("{at}.locality"),
            format!("expected {LOCALITY_MODES}"),
        )
    })?;
    let fallback: Option<String> = match t.get("fallback") {
        None => None,
        Some(_) => Some(field(at, t, "fallback")?),
    };
    if let Some(f) = &fallback {
        if !crate::contract::names::is_capability_name(f) {
            return Err(spec_err(
                format!("{at}.fallback"),
                "must be a capability name: 1 to 128 characters of [a-z0-9_.-]",
            ));
        }
    }
    let hop_limit: u32 = field(at, t, "hop_limit")?;
    if hop_limit == 0 || hop_limit as usize > CHAIN_LEN_MAX {
        return Err(spec_err(
            format!("{at}.hop_limit"),
            format!("must be 1 to {CHAIN_LEN_MAX}"),
        ));
    }
    let s = CapabilitySettings {
        policy,
        locality,
        fallback,
        hop_limit,
        deadline: field(at, t, "deadline")?,
        retry: field(at, t, "retry")?,
        breaker: field(at, t, "breaker")?,
        quality: field(at, t, "quality")?,
        hedging: field(at, t, "hedging")?,
        adaptive: field(at, t, "adaptive")?,
    };
    let sub = |name: &str, r: Result<(), (&'static str, String)>| {
        r.map_err(|(k, m)| spec_err(format!("{at}.{name}.{k}"), m))
    };
    sub("deadline", s.deadline.validate())?;
    sub("retry", s.retry.validate())?;
    sub("breaker", s.breaker.validate())?;
    sub("quality", s.quality.validate())?;
    sub("hedging", s.hedging.validate())?;
    s.adaptive
        .validate()
        .map_err(|(k, m)| spec_err(format!("{at}.adaptive.{k}"), m))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        defaults: Option<toml::Table>,
        #[serde(default)]
        capability: BTreeMap<String, toml::Table>,
    }

    fn load(text: &str) -> Result<MeshConfig, SpecError> {
        let f: File = toml::from_str(text).unwrap();
        MeshConfig::from_tables(f.defaults.as_ref(), &f.capability)
    }

    #[test]
    fn retries_by_default_and_retry_on() {
        let c = load("").unwrap();
        assert_eq!(
            c.defaults.policy,
            PolicyName::Latency,
            "best-agent routing by default"
        );
        assert_eq!(c.defaults.retry.max_retries, 3);
        assert_eq!(
            c.defaults.locality,
            LocalityMode::Zone,
            "zone-first by default"
        );
        let c = load("[capability.\"x\"]\nlocality = \"off\"").unwrap();
        assert_eq!(c.for_capability("x").locality, LocalityMode::Off);
        let c =
            load("[capability.\"pay\".retry]\nretry_on = [\"timeout\"]\nmax_retries = 1").unwrap();
        let r = &c.for_capability("pay").retry;
        assert_eq!(r.retry_on, vec![crate::resilience::retry::RetryOn::Timeout]);
        assert_eq!(r.max_attempts(), 2);
    }

    #[test]
    fn empty_is_builtin_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.defaults, CapabilitySettings::default());
        assert_eq!(c.for_capability("x"), &CapabilitySettings::default());
    }

    #[test]
    fn capability_overrides_merge_key_by_key() {
        let c = load(
            r#"
[defaults]
policy = "latency"
[defaults.retry]
max_attempts = 4
backoff_max_ms = 900
[capability."inv.query"]
policy = "cost"
fallback = "inv.batch"
[capability."inv.query".retry]
max_attempts = 2
"#,
        )
        .unwrap();
        assert_eq!(c.defaults.policy, PolicyName::Latency);
        let s = c.for_capability("inv.query");
        assert_eq!(s.policy, PolicyName::Cost);
        assert_eq!(s.fallback.as_deref(), Some("inv.batch"));
        assert_eq!(s.retry.max_attempts(), 2);
        assert_eq!(s.retry.max_retries, 1, "max_attempts = 2 is one retry");
        assert_eq!(c.defaults.retry.max_retries, 3);
        assert_eq!(
            s.retry.backoff_max_ms, 900,
            "inherited from [defaults.retry]"
        );
        assert_eq!(c.for_capability("other").policy, PolicyName::Latency);
    }

    /// (file, key the error must name, hint in the message).
    #[test]
    fn errors_name_key_and_valid_values() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[defaults]\npolicy = \"fastest\"",
                "defaults.policy",
                "round_robin",
            ),
            (
                "[capability.\"a\"]\nlocality = \"near\"",
                "capability.\"a\".locality",
                "zone | region | rtt | off",
            ),
            (
                "[defaults]\ncolour = 1",
                "defaults.colour",
                "expected one of",
            ),
            (
                "[defaults.retry]\nmax_attempts = 0",
                "defaults.retry.max_attempts",
                "1 to 10",
            ),
            (
                "[defaults.retry]\nmax_attempts = 2\nmax_retries = 1",
                "defaults.retry.max_attempts",
                "not both",
            ),
            (
                "[defaults.retry]\nmax_retries = 12",
                "defaults.retry.max_retries",
                "0 to 9",
            ),
            (
                "[defaults.retry]\nretry_on = [\"5xx\", \"sometimes\"]",
                "defaults.retry",
                "unknown variant",
            ),
            (
                "[defaults.retry]\nmax_atempts = 2",
                "defaults.retry",
                "unknown field",
            ),
            (
                "[defaults.breaker]\nfailure_rate = 2.0",
                "defaults.breaker.failure_rate",
                "(0, 1]",
            ),
            (
                "[defaults.quality]\nfloor = 0.99",
                "defaults.quality.floor",
                "fallback",
            ),
            (
                "[defaults.deadline]\nreserve_pct = 80",
                "defaults.deadline.reserve_pct",
                "0 to 50",
            ),
            (
                "[defaults.shedding]\nexperimental_pct = 90",
                "defaults.shedding.experimental_pct",
                "standard_pct",
            ),
            (
                "[capability.\"a\".shedding]\nstandard_pct = 90",
                "capability.\"a\".shedding",
                "per node",
            ),
            (
                "[capability.\"Bad Name\"]\npolicy = \"cost\"",
                "capability.\"Bad Name\"",
                "capability name",
            ),
            (
                "[capability.\"a\"]\nfallback = \"a\"",
                "capability.\"a\".fallback",
                "itself",
            ),
            (
                "[capability.\"a\"]\nhop_limit = 99",
                "capability.\"a\".hop_limit",
                "1 to 16",
            ),
            (
                "[capability.\"a\".hedging]\nenabled = true\nmax_hedges = 9",
                "capability.\"a\".hedging.max_hedges",
                "1 to 3",
            ),
            (
                "[capability.\"a\".adaptive]\nenabled = true\nbackoff_ratio = 1.5",
                "capability.\"a\".adaptive.backoff_ratio",
                "between 0 and 1",
            ),
            (
                "[capability.\"a\"]\npolicy = 3",
                "capability.\"a\".policy",
                "string",
            ),
        ];
        for (text, key, hint) in cases {
            let e = load(text).expect_err(key);
            assert_eq!(&e.key, key, "{text}: {e}");
            assert!(e.message.contains(hint), "{text}: {e}");
        }
    }
}
