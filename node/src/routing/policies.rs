//! Routing policies over observed numbers: what this node measured itself (latency, success,
//! in-flight) plus the load each callee reported on its last answer. Self-reported quality in
//! gossip records is never used, so a lying agent cannot buy traffic.
//!
//! [`rank`] is pure: candidate views, the request's hints, the settings, a round-robin cursor
//! and an RNG in; an ordered list with a reason per candidate out. The
//! [`Scoreboard`](crate::routing::scoreboard::Scoreboard) keeps the observations per (agent,
//! capability) on caller-supplied time.
//!
//! Order of the decision, each step explaining what it removed:
//! 1. breakers: every candidate ejected → `circuit_open` (the caller applies the capability's
//!    fallback); more than `panic_threshold` ejected → panic mode, ejection ignored (Envoy);
//!    otherwise ejected candidates are dropped;
//! 2. quality tiers on the observed success rate (old outcomes weigh less): the `prefer` tier
//!    if anyone is in it, else `fallback`, else down to `floor`. Degrade, never blackhole: if a
//!    tier would leave out more than `panic_threshold` of the candidates, everyone above the
//!    floor is used; if nobody is above the floor, everyone is (degraded mode). Agents left out
//!    get [`TIER_PROBE_PER_MILLE`] of the calls as probes, so a recovered agent returns;
//! 3. capacity: agents at their reported concurrency limit go last while anyone has room;
//! 4. complexity: `high` → experts with spare capacity, else experienced with spare capacity,
//!    else experts and experienced anyway; `low` → the cost policy (cheapest competent agent);
//! 5. preference (`x-mesh-prefer`): the pinned agent first if it survived 1–4, else the
//!    default policy and a fallback reason for `x-mesh-prefer-fallback`;
//! 6. the policy orders the rest.

use crate::contract::{CallError, Complexity, ErrorCode};
use crate::resilience::breaker::BreakerState;
use crate::routing::locality::{tiers, LocalityMode, Place};
use agentmesh_gossip::record::Proficiency;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::routing::scoreboard::{
    PeakEwma, PeerStats, Scoreboard, FAILURE_LATENCY_MS, PEAK_EWMA_DECAY_MS,
    QUALITY_WINDOW_CALLS_MAX, QUALITY_WINDOW_MS, SCOREBOARD_PEERS_MAX,
};

/// Up to this many candidates, `latency` scores every one and takes the best; above it, power
/// of two choices among the best quarter (so a crowd of equal agents is not herded onto one).
pub const LATENCY_SCAN_MAX: usize = 8;
/// Share of calls (per mille) that `latency` sends to a random other candidate first, so the
/// estimates of agents it does not favour stay fresh.
pub const EXPLORE_PER_MILLE: u32 = 30;
/// Share of calls (per mille) that go first to an agent left out by the quality tiers (breaker
/// admitting): its probe call, so an agent that recovered can prove it.
pub const TIER_PROBE_PER_MILLE: u32 = 20;

/// The routing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Rotate through the candidates.
    RoundRobin,
    /// Uniformly random (a baseline for benchmarks).
    Random,
    /// Power of two choices on in-flight calls (local count plus the callee's reported load).
    LeastLoaded,
    /// The fastest agents: peak-EWMA latency × (in flight + 1), best of all candidates when
    /// there are few, power of two choices over the best quarter when many, with a small
    /// exploration share. The default.
    Latency,
    /// The cheapest candidate that meets the quality tiers.
    Cost,
    /// The best observed success rate.
    Quality,
    /// The pinned agent (`x-mesh-prefer`), else the default policy.
    Preference,
}

/// Every policy name, for error messages and docs.
pub const POLICY_NAMES: &str =
    "round_robin | random | least_loaded | latency | cost | quality | preference";

impl PolicyName {
    /// Parses a policy name.
    pub fn parse(s: &str) -> Result<PolicyName, CallError> {
        Ok(match s {
            "round_robin" => PolicyName::RoundRobin,
            "random" => PolicyName::Random,
            "least_loaded" | "least_in_flight" => PolicyName::LeastLoaded,
            "latency" => PolicyName::Latency,
            "cost" => PolicyName::Cost,
            "quality" => PolicyName::Quality,
            "preference" | "prefer" => PolicyName::Preference,
            other => {
                return Err(CallError::bad_field(
                    "policy",
                    format!("unknown policy {other:?}: expected {POLICY_NAMES}"),
                ))
            }
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyName::RoundRobin => "round_robin",
            PolicyName::Random => "random",
            PolicyName::LeastLoaded => "least_loaded",
            PolicyName::Latency => "latency",
            PolicyName::Cost => "cost",
            PolicyName::Quality => "quality",
            PolicyName::Preference => "preference",
        }
    }
}

/// Quality tiers on the observed success rate (`[defaults.quality]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityTiers {
    /// Preferred tier: candidates at or above it are used when any exist.
    pub prefer: f64,
    /// Fallback tier.
    pub fallback: f64,
    /// Never route below this.
    pub floor: f64,
    /// Calls observed before an agent's rate is judged (unjudged agents count as preferred).
    pub min_calls: u32,
}

impl Default for QualityTiers {
    fn default() -> Self {
        QualityTiers {
            prefer: 0.95,
            fallback: 0.90,
            floor: 0.70,
            min_calls: 5,
        }
    }
}

impl QualityTiers {
    /// Checks `0 ≤ floor ≤ fallback ≤ prefer ≤ 1`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(0.0..=1.0).contains(&self.prefer) {
            return Err(("prefer", "must be in [0, 1]".into()));
        }
        if !(0.0..=self.prefer).contains(&self.fallback) {
            return Err(("fallback", "must be in [0, prefer]".into()));
        }
        if !(0.0..=self.fallback).contains(&self.floor) {
            return Err(("floor", "must be in [0, fallback]".into()));
        }
        if self.min_calls as usize > QUALITY_WINDOW_CALLS_MAX {
            return Err((
                "min_calls",
                format!("must be 0 to {QUALITY_WINDOW_CALLS_MAX}"),
            ));
        }
        Ok(())
    }
}

/// What the ranking knows about one candidate.
#[derive(Debug, Clone)]
pub struct View {
    /// Node id as text (shared with the routing memo: no copy per call).
    pub node: std::sync::Arc<str>,
    /// Short node id as text.
    pub node_short: std::sync::Arc<str>,
    /// Agent name.
    pub agent: String,
    /// Declared proficiency for the capability.
    pub proficiency: Proficiency,
    /// Declared cost per call.
    pub cost: f64,
    /// Calls from here in flight to it.
    pub in_flight: u32,
    /// In-flight count the callee reported on its last answer.
    pub reported_in_flight: u32,
    /// Concurrency limit the callee reported (0: unknown).
    pub reported_max: u32,
    /// Observed peak-EWMA latency, ms.
    pub latency_ms: Option<f64>,
    /// Observed success rate in the window.
    pub success_rate: Option<f64>,
    /// Outcomes in the window.
    pub calls: u32,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Whether the breaker would admit a call now.
    pub admits: bool,
    /// Where it runs, as seen from here (labels and measured RTT).
    pub place: Place,
}

impl View {
    fn load(&self) -> u32 {
        self.in_flight.saturating_add(self.reported_in_flight)
    }

    /// At its concurrency limit: the larger of our in-flight count and its own (which already
    /// counts ours as of its report; adding them would call it full at half its limit).
    fn at_capacity(&self) -> bool {
        self.reported_max > 0 && self.in_flight.max(self.reported_in_flight) >= self.reported_max
    }

    fn latency_score(&self) -> f64 {
        match self.latency_ms {
            Some(l) => l * (self.in_flight as f64 + 1.0),
            // Not observed yet: first in line while nothing is in flight to it, so a new agent
            // is explored at once but not flooded before its first answer.
            None => self.in_flight as f64 * FAILURE_LATENCY_MS,
        }
    }

    fn matches(&self, pin: &str) -> bool {
        self.agent == pin || &*self.node == pin || &*self.node_short == pin
    }
}

/// The request's routing hints.
#[derive(Debug, Clone, Default)]
pub struct Ask<'a> {
    /// Policy asked for (None: the capability's default).
    pub policy: Option<PolicyName>,
    /// Pinned agent name or node id.
    pub prefer: Option<&'a str>,
    /// Complexity hint.
    pub complexity: Option<Complexity>,
    /// Locality asked for (None: the capability's setting).
    pub locality: Option<LocalityMode>,
}

/// The outcome of [`rank`].
#[derive(Debug, Clone)]
pub struct Ranking {
    /// Indices into the views, best first; only these may be called.
    pub order: Vec<usize>,
    /// A reason per view (same index), ranked or not.
    pub reasons: Vec<String>,
    /// The policy that ordered the list.
    pub policy: PolicyName,
    /// Why the pinned agent was not used, when one was asked for.
    pub prefer_fallback: Option<String>,
    /// True when panic mode ignored ejection.
    pub panic: bool,
}

/// The settings [`rank`] needs.
#[derive(Debug, Clone, Copy)]
pub struct RankConfig<'a> {
    /// The capability's default policy.
    pub default_policy: PolicyName,
    /// Quality tiers.
    pub tiers: &'a QualityTiers,
    /// Panic threshold (fraction of ejected candidates above which ejection is ignored).
    pub panic_threshold: f64,
    /// The capability's locality preference.
    pub locality: LocalityMode,
}

/// Orders `views` for a call. Errors: `circuit_open` when every candidate is ejected (the
/// caller applies the capability's fallback), `no_eligible_agent` when everyone is below the
/// quality floor or there is nobody, `bad_request` for `preference` without a pin.
pub fn rank<R: Rng>(
    views: &[View],
    ask: &Ask<'_>,
    cfg: RankConfig<'_>,
    cursor: u64,
    rng: &mut R,
) -> Result<Ranking, CallError> {
    let mut reasons = vec![String::new(); views.len()];
    if views.is_empty() {
        return Err(CallError::new(
            ErrorCode::NoEligibleAgent,
            "no candidate to rank",
        ));
    }
    // 1. Breakers.
    let all: Vec<usize> = (0..views.len()).collect();
    let ejected: Vec<usize> = all.iter().copied().filter(|&i| !views[i].admits).collect();
    if ejected.len() == views.len() {
        return Err(CallError::new(
            ErrorCode::CircuitOpen,
            format!(
                "all {} candidate(s) have an open circuit breaker",
                views.len()
            ),
        ));
    }
    let share = ejected.len() as f64 / views.len() as f64;
    let panic = !ejected.is_empty() && share > cfg.panic_threshold;
    let mut set: Vec<usize> = if panic {
        all.clone()
    } else {
        for &i in &ejected {
            reasons[i] = format!("ineligible: breaker {}", views[i].breaker.name());
        }
        all.iter().copied().filter(|&i| views[i].admits).collect()
    };
    // 2. Quality tiers: prefer good agents, never blackhole.
    let before_tiers = set.clone();
    let degraded;
    (set, degraded) = apply_tiers(views, set, cfg, share, &mut reasons);
    let left_out: Vec<usize> = before_tiers
        .iter()
        .copied()
        .filter(|i| !set.contains(i) && views[*i].admits)
        .collect();
    // 2b. Capacity: agents at their concurrency limit go last, while anyone has room.
    let full: Vec<usize> = set
        .iter()
        .copied()
        .filter(|&i| views[i].at_capacity())
        .collect();
    if full.len() < set.len() {
        set.retain(|i| !full.contains(i));
    }
    // 3. Complexity.
    let mut policy = ask.policy.unwrap_or(cfg.default_policy);
    match ask.complexity {
        Some(Complexity::High) => set = by_expertise(views, set, &mut reasons),
        Some(Complexity::Low) => policy = PolicyName::Cost,
        None => {}
    }
    // 4. Preference.
    let mut prefer_fallback = None;
    let mut pinned = None;
    if policy == PolicyName::Preference {
        if ask.prefer.is_none() {
            return Err(CallError::bad_field(
                "policy",
                "policy preference needs x-mesh-prefer (or ?prefer=)",
            ));
        }
        policy = match cfg.default_policy {
            PolicyName::Preference => PolicyName::RoundRobin,
            p => p,
        };
    }
    if let Some(pin) = ask.prefer {
        match views.iter().position(|v| v.matches(pin)) {
            Some(i) if set.contains(&i) => pinned = Some(i),
            Some(i) => {
                prefer_fallback = Some(format!(
                    "preferred agent {pin} not eligible ({}); used policy {}",
                    reasons[i].trim_start_matches("ineligible: "),
                    policy.name()
                ))
            }
            None => {
                prefer_fallback = Some(format!(
                    "preferred agent {pin} does not offer this capability here; used policy {}",
                    policy.name()
                ))
            }
        }
    }
    // 5. Locality, then the policy within each tier: the nearest tier anyone eligible is in
    // goes first, farther tiers after it (so retries and spill-over still reach them).
    let mode = ask.locality.unwrap_or(cfg.locality);
    let mut order = by_locality(
        mode,
        views,
        &set,
        |group, reasons| order_by(policy, views, group, cursor, rng, reasons),
        &mut reasons,
    );
    for &i in &full {
        if !order.contains(&i) {
            order.push(i);
        }
        reasons[i] = format!(
            "at capacity ({} of {} in flight): last resort",
            views[i].in_flight.max(views[i].reported_in_flight),
            views[i].reported_max
        );
    }
    // Probes stay within the tier the call goes to, so they never take a call out of the zone.
    let place_tier = tiers(mode, &views.iter().map(|v| v.place).collect::<Vec<_>>());
    let first_tier = order.first().map_or(u8::MAX, |&f| place_tier[f]);
    let left_out: Vec<usize> = left_out
        .into_iter()
        .filter(|&i| place_tier[i] <= first_tier)
        .collect();
    if !left_out.is_empty() && pinned.is_none() && rng.gen_range(0..1000) < TIER_PROBE_PER_MILLE {
        let p = left_out[rng.gen_range(0..left_out.len())];
        order.retain(|&i| i != p);
        order.insert(0, p);
        reasons[p].push_str("; probe call: left out by the quality tiers, proving itself again");
    }
    // A half-open breaker gets its probe at once, ahead of the policy and the tiers (it admits
    // only `half_open_probes` at a time), so a recovered agent closes its breaker within one
    // open period instead of waiting for a probe share of the calls.
    let half_open = |i: usize| {
        views[i].breaker == BreakerState::HalfOpen && views[i].admits && !views[i].at_capacity()
    };
    let probe = (order.iter().chain(&left_out))
        .copied()
        .find(|&i| half_open(i));
    if let (Some(p), None) = (probe, pinned) {
        order.retain(|&i| i != p);
        order.insert(0, p);
    }
    if let Some(d) = degraded {
        for &i in &order {
            reasons[i].push_str(&format!("; {d}"));
        }
    }
    if let Some(p) = pinned {
        order.retain(|&i| i != p);
        order.insert(0, p);
        reasons[p] = "preferred by the caller (x-mesh-prefer)".into();
    }
    for &i in &order {
        if panic && !views[i].admits {
            reasons[i].push_str(&format!(
                "; breaker {} ignored: panic mode, {:.0} % of candidates ejected (> {:.0} %)",
                views[i].breaker.name(),
                share * 100.0,
                cfg.panic_threshold * 100.0
            ));
        } else if views[i].breaker == BreakerState::HalfOpen {
            reasons[i].push_str("; half-open: probe call");
        }
    }
    Ok(Ranking {
        order,
        reasons,
        policy,
        prefer_fallback,
        panic,
    })
}

/// Orders `set` tier by tier under the locality `mode` (nearest first), each tier by `order`;
/// notes in the reasons which tier a candidate is in and when the nearest tier is empty
/// (spill-over).
fn by_locality(
    mode: LocalityMode,
    views: &[View],
    set: &[usize],
    mut order: impl FnMut(&[usize], &mut [String]) -> Vec<usize>,
    reasons: &mut [String],
) -> Vec<usize> {
    let places: Vec<Place> = set.iter().map(|&i| views[i].place).collect();
    let tier = tiers(mode, &places);
    let (Some(&near), Some(&far)) = (tier.iter().min(), tier.iter().max()) else {
        return order(set, reasons);
    };
    if far == 0 {
        // Everyone is as near as can be (or locality is off): nothing to explain.
        return order(set, reasons);
    }
    let mut out = Vec::with_capacity(set.len());
    for t in near..=far {
        let group: Vec<usize> = set
            .iter()
            .zip(&tier)
            .filter(|(_, &ti)| ti == t)
            .map(|(&i, _)| i)
            .collect();
        if group.is_empty() {
            continue;
        }
        let ordered = order(&group, reasons);
        for &i in &ordered {
            let p = views[i].place.proximity.name();
            if t == near && near > 0 {
                reasons[i].push_str(&format!(
                    "; locality {}: spill-over to {p}, no nearer agent can take the call",
                    mode.name()
                ));
            } else if t > near {
                reasons[i].push_str(&format!(
                    "; locality {}: {p}, after the nearer agents",
                    mode.name()
                ));
            } else {
                reasons[i].push_str(&format!("; locality {}: nearest", mode.name()));
            }
        }
        out.extend(ordered);
    }
    out
}

/// Whether a call pinned to `v` alone would be routed: its breaker admits calls and its
/// judged success rate is at or above the floor; else why not.
pub fn eligible_alone(v: &View, tiers: &QualityTiers) -> Result<(), String> {
    if !v.admits {
        return Err(format!("breaker {}", v.breaker.name()));
    }
    match judged_rate(v, tiers) {
        Some(r) if r < tiers.floor => Err(format!(
            "success rate {r:.2} below the quality floor {:.2}",
            tiers.floor
        )),
        _ => Ok(()),
    }
}

fn judged_rate(v: &View, tiers: &QualityTiers) -> Option<f64> {
    (v.calls >= tiers.min_calls.max(1))
        .then_some(v.success_rate)
        .flatten()
}

/// Keeps the best tier anyone reaches. Never empties the set: when nobody is above the
/// floor, or when the tiers would leave out more than the panic threshold of the candidates
/// (counting those the breakers ejected), everyone at or above the floor, or else everyone,
/// stays, with the reason in the second value (degraded mode).
fn apply_tiers(
    views: &[View],
    set: Vec<usize>,
    cfg: RankConfig<'_>,
    ejected_share: f64,
    reasons: &mut [String],
) -> (Vec<usize>, Option<String>) {
    let tiers = cfg.tiers;
    let rate = |i: usize| judged_rate(&views[i], tiers).unwrap_or(1.0);
    let n = views.len().max(1) as f64;
    let above_floor: Vec<usize> = set
        .iter()
        .copied()
        .filter(|&i| rate(i) >= tiers.floor)
        .collect();
    if above_floor.is_empty() {
        let why = format!(
            "degraded: every candidate is below the quality floor {:.2}; routed anyway",
            tiers.floor
        );
        return (set, Some(why));
    }
    for (bar, name) in [
        (tiers.prefer, "preferred"),
        (tiers.fallback, "fallback"),
        (tiers.floor, "floor"),
    ] {
        let keep: Vec<usize> = set.iter().copied().filter(|&i| rate(i) >= bar).collect();
        if keep.is_empty() {
            continue;
        }
        let out_share = ejected_share + (set.len() - keep.len()) as f64 / n;
        if keep.len() < set.len() && out_share > cfg.panic_threshold && bar > tiers.floor {
            let why = format!(
                "panic mode: the {name} tier would leave out {:.0} % of candidates (> {:.0} %); every one above the floor used",
                out_share * 100.0,
                cfg.panic_threshold * 100.0
            );
            mark_below(
                views,
                &set,
                &above_floor,
                tiers.floor,
                "floor",
                tiers,
                reasons,
            );
            return (above_floor, Some(why));
        }
        mark_below(views, &set, &keep, bar, name, tiers, reasons);
        return (keep, None);
    }
    (above_floor, None)
}

fn mark_below(
    views: &[View],
    set: &[usize],
    keep: &[usize],
    bar: f64,
    name: &str,
    tiers: &QualityTiers,
    reasons: &mut [String],
) {
    for &i in set.iter().filter(|i| !keep.contains(i)) {
        let r = judged_rate(&views[i], tiers).unwrap_or(1.0);
        reasons[i] = format!("ineligible: success rate {r:.2} below the {name} tier {bar:.2}");
    }
}

fn by_expertise(views: &[View], set: Vec<usize>, reasons: &mut [String]) -> Vec<usize> {
    let with = |p: Proficiency, spare: bool| -> Vec<usize> {
        set.iter()
            .copied()
            .filter(|&i| views[i].proficiency == p && (!spare || !views[i].at_capacity()))
            .collect()
    };
    let experts = with(Proficiency::Expert, true);
    let pick = if !experts.is_empty() {
        experts
    } else {
        let experienced = with(Proficiency::Experienced, true);
        if !experienced.is_empty() {
            experienced
        } else {
            let mut any = with(Proficiency::Expert, false);
            any.extend(with(Proficiency::Experienced, false));
            if any.is_empty() {
                set.clone()
            } else {
                any
            }
        }
    };
    for &i in set.iter().filter(|i| !pick.contains(i)) {
        let v = &views[i];
        reasons[i] = if v.proficiency == Proficiency::Expert {
            "not picked: expert at capacity (complexity high)".into()
        } else {
            format!(
                "not picked: {} for complexity high",
                proficiency_name(v.proficiency)
            )
        };
    }
    pick
}

fn proficiency_name(p: Proficiency) -> &'static str {
    match p {
        Proficiency::Novice => "novice",
        Proficiency::Experienced => "experienced",
        Proficiency::Expert => "expert",
    }
}

/// Power of two choices: two distinct random picks, the lower score wins; the rest follow by
/// score. With one candidate it is simply first.
fn p2c<R: Rng>(set: &[usize], score: impl Fn(usize) -> f64, rng: &mut R) -> Vec<usize> {
    let mut rest: Vec<usize> = set.to_vec();
    rest.sort_by(|a, b| score(*a).total_cmp(&score(*b)).then(a.cmp(b)));
    if set.len() < 2 {
        return rest;
    }
    let a = rng.gen_range(0..set.len());
    let mut b = rng.gen_range(0..set.len() - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (set[a], set[b]);
    let win = if score(b) < score(a) { b } else { a };
    rest.retain(|&i| i != win);
    rest.insert(0, win);
    rest
}

/// The `latency` order: with at most [`LATENCY_SCAN_MAX`] candidates, by score (the best
/// first); with more, power of two choices among the best quarter, the rest by score.
fn best_latency<R: Rng>(views: &[View], set: &[usize], rng: &mut R) -> Vec<usize> {
    let score = |i: usize| views[i].latency_score();
    let mut order: Vec<usize> = set.to_vec();
    order.sort_by(|a, b| score(*a).total_cmp(&score(*b)).then(a.cmp(b)));
    if order.len() <= LATENCY_SCAN_MAX {
        return order;
    }
    let k = (order.len() / 4).max(2);
    let head = p2c(&order[..k], score, rng);
    order.splice(..k, head);
    order
}

fn order_by<R: Rng>(
    policy: PolicyName,
    views: &[View],
    set: &[usize],
    cursor: u64,
    rng: &mut R,
    reasons: &mut [String],
) -> Vec<usize> {
    let mut order: Vec<usize> = set.to_vec();
    match policy {
        PolicyName::RoundRobin | PolicyName::Preference => {
            let n = order.len().max(1);
            order.rotate_left((cursor % n as u64) as usize);
            for (pos, &i) in order.iter().enumerate() {
                reasons[i] = format!("round-robin position {}", pos + 1);
            }
        }
        PolicyName::Random => {
            order.shuffle(rng);
            for &i in &order {
                reasons[i] = "random order".into();
            }
        }
        PolicyName::LeastLoaded => {
            order = p2c(set, |i| views[i].load() as f64, rng);
            for &i in &order {
                let v = &views[i];
                reasons[i] = format!(
                    "load {} ({} in flight from here + {} reported by the callee)",
                    v.load(),
                    v.in_flight,
                    v.reported_in_flight
                );
            }
        }
        PolicyName::Latency => {
            order = best_latency(views, set, rng);
            for &i in &order {
                let v = &views[i];
                reasons[i] = match v.latency_ms {
                    Some(l) => format!(
                        "peak-EWMA {l:.1} ms × ({} in flight + 1) = {:.1}",
                        v.in_flight,
                        v.latency_score()
                    ),
                    None => "no latency observed yet (explored first)".into(),
                };
            }
            if order.len() > 1 && rng.gen_range(0..1000) < EXPLORE_PER_MILLE {
                let j = rng.gen_range(1..order.len());
                let e = order.remove(j);
                order.insert(0, e);
                reasons[e].push_str("; exploration call (keeps its estimate fresh)");
            }
        }
        PolicyName::Cost => {
            order.sort_by(|a, b| {
                views[*a]
                    .cost
                    .total_cmp(&views[*b].cost)
                    .then(
                        views[*a]
                            .latency_score()
                            .total_cmp(&views[*b].latency_score()),
                    )
                    .then(a.cmp(b))
            });
            for &i in &order {
                reasons[i] = format!("cost {:.3} (meets the quality tiers)", views[i].cost);
            }
        }
        PolicyName::Quality => {
            let rate = |i: usize| views[i].success_rate.unwrap_or(1.0);
            order.sort_by(|a, b| {
                rate(*b)
                    .total_cmp(&rate(*a))
                    .then(
                        views[*a]
                            .latency_score()
                            .total_cmp(&views[*b].latency_score()),
                    )
                    .then(a.cmp(b))
            });
            for &i in &order {
                reasons[i] = match views[i].success_rate {
                    Some(r) => format!("success rate {r:.3} over {} calls", views[i].calls),
                    None => "no calls observed yet".into(),
                };
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    fn v(agent: &str) -> View {
        View {
            node: format!("node-{agent}").into(),
            node_short: agent.into(),
            agent: agent.into(),
            proficiency: Proficiency::Experienced,
            cost: 1.0,
            in_flight: 0,
            reported_in_flight: 0,
            reported_max: 0,
            latency_ms: None,
            success_rate: None,
            calls: 0,
            breaker: BreakerState::Closed,
            admits: true,
            place: Place::default(),
        }
    }

    fn lat(agent: &str, ms: f64) -> View {
        View {
            latency_ms: Some(ms),
            ..v(agent)
        }
    }

    fn rate(agent: &str, r: f64, calls: u32) -> View {
        View {
            success_rate: Some(r),
            calls,
            ..v(agent)
        }
    }

    fn open(agent: &str) -> View {
        View {
            breaker: BreakerState::Open,
            admits: false,
            ..v(agent)
        }
    }

    fn cfg(tiers: &QualityTiers) -> RankConfig<'_> {
        RankConfig {
            default_policy: PolicyName::RoundRobin,
            tiers,
            panic_threshold: 0.5,
            locality: LocalityMode::Zone,
        }
    }

    fn first(views: &[View], ask: &Ask<'_>, seed: u64) -> Result<String, ErrorCode> {
        let tiers = QualityTiers::default();
        let mut rng = StdRng::seed_from_u64(seed);
        rank(views, ask, cfg(&tiers), 0, &mut rng)
            .map(|r| views[r.order[0]].agent.clone())
            .map_err(|e| e.code)
    }

    fn ask(policy: PolicyName) -> Ask<'static> {
        Ask {
            policy: Some(policy),
            ..Ask::default()
        }
    }

    /// (case, views, ask, first pick or error), deterministic cases only.
    #[test]
    fn selection_table() {
        use PolicyName::*;
        let cheap = |a: &str, c: f64| View { cost: c, ..v(a) };
        let prof = |a: &str, p: Proficiency, load: u32, max: u32| View {
            proficiency: p,
            reported_in_flight: load,
            reported_max: max,
            ..v(a)
        };
        type Case = (
            &'static str,
            Vec<View>,
            Ask<'static>,
            Result<&'static str, ErrorCode>,
        );
        let cases: Vec<Case> = vec![
            (
                "round robin at cursor 0",
                vec![v("a"), v("b")],
                ask(RoundRobin),
                Ok("a"),
            ),
            (
                "cost picks the cheapest",
                vec![cheap("a", 3.0), cheap("b", 0.5), cheap("c", 1.0)],
                ask(Cost),
                Ok("b"),
            ),
            (
                "a half-open breaker gets its probe first, even below the tiers",
                vec![
                    lat("a", 5.0),
                    View {
                        breaker: BreakerState::HalfOpen,
                        latency_ms: Some(1000.0),
                        ..rate("b", 0.3, 10)
                    },
                    lat("c", 5.0),
                ],
                ask(Latency),
                Ok("b"),
            ),
            (
                "cost skips the cheapest below the preferred tier",
                vec![
                    View {
                        cost: 0.1,
                        ..rate("a", 0.80, 50)
                    },
                    View {
                        cost: 2.0,
                        ..rate("b", 0.99, 50)
                    },
                ],
                ask(Cost),
                Ok("b"),
            ),
            (
                "fallback tier when nobody is preferred",
                vec![rate("a", 0.92, 50), rate("b", 0.75, 50)],
                ask(Quality),
                Ok("a"),
            ),
            (
                "floor tier when nobody reaches fallback",
                vec![rate("a", 0.72, 50), rate("b", 0.5, 50)],
                ask(RoundRobin),
                Ok("a"),
            ),
            (
                "everyone below the floor: degraded, never blackholed",
                vec![rate("a", 0.6, 50), rate("b", 0.5, 50)],
                ask(RoundRobin),
                Ok("a"),
            ),
            (
                "tier panic: the fallback tier would leave out 2 of 3, so all above the floor (not a)",
                vec![rate("a", 0.5, 50), rate("b", 0.8, 50), rate("c", 0.9, 50)],
                ask(RoundRobin),
                Ok("b"),
            ),
            (
                "below the floor is left out while someone is above it",
                vec![rate("a", 0.5, 50), rate("c", 0.9, 50)],
                ask(RoundRobin),
                Ok("c"),
            ),
            (
                "a sole flaky agent still gets its calls",
                vec![rate("a", 0.6, 5)],
                ask(Latency),
                Ok("a"),
            ),
            (
                "at capacity goes last while another has room",
                vec![
                    View {
                        reported_in_flight: 4,
                        reported_max: 4,
                        ..lat("fast", 1.0)
                    },
                    lat("slow", 50.0),
                ],
                ask(Latency),
                Ok("slow"),
            ),
            (
                "prefer is accepted as the policy name too",
                vec![v("a"), v("b")],
                Ask {
                    prefer: Some("b"),
                    ..ask(PolicyName::parse("prefer").unwrap())
                },
                Ok("b"),
            ),
            (
                "too few calls to judge counts as preferred",
                vec![rate("a", 0.0, 2), rate("b", 0.99, 50)],
                ask(RoundRobin),
                Ok("a"),
            ),
            (
                "quality picks the best rate",
                vec![rate("a", 0.96, 50), rate("b", 1.0, 50), rate("c", 0.97, 50)],
                ask(Quality),
                Ok("b"),
            ),
            (
                "open breaker is skipped",
                vec![open("a"), v("b"), v("c")],
                ask(RoundRobin),
                Ok("b"),
            ),
            (
                "all open is circuit_open",
                vec![open("a"), open("b")],
                ask(RoundRobin),
                Err(ErrorCode::CircuitOpen),
            ),
            (
                "panic mode: 2 of 3 ejected > 50 %, ejection ignored",
                vec![open("a"), open("b"), v("c")],
                ask(RoundRobin),
                Ok("a"),
            ),
            (
                "complexity high goes to the expert",
                vec![
                    prof("a", Proficiency::Experienced, 0, 4),
                    prof("b", Proficiency::Expert, 0, 4),
                ],
                Ask {
                    complexity: Some(Complexity::High),
                    ..ask(RoundRobin)
                },
                Ok("b"),
            ),
            (
                "expert at capacity: experienced",
                vec![
                    prof("n", Proficiency::Novice, 0, 4),
                    prof("b", Proficiency::Expert, 4, 4),
                    prof("a", Proficiency::Experienced, 1, 4),
                ],
                Ask {
                    complexity: Some(Complexity::High),
                    ..ask(RoundRobin)
                },
                Ok("a"),
            ),
            (
                "everyone at capacity: the expert anyway",
                vec![
                    prof("a", Proficiency::Experienced, 4, 4),
                    prof("b", Proficiency::Expert, 4, 4),
                ],
                Ask {
                    complexity: Some(Complexity::High),
                    ..ask(RoundRobin)
                },
                Ok("b"), // experts first, then experienced
            ),
            (
                "complexity low: cheapest competent",
                vec![
                    cheap("a", 2.0),
                    View {
                        cost: 0.1,
                        ..rate("b", 0.5, 50)
                    },
                    cheap("c", 1.0),
                ],
                Ask {
                    complexity: Some(Complexity::Low),
                    ..ask(Latency)
                },
                Ok("c"),
            ),
            (
                "prefer pins an eligible agent",
                vec![v("a"), v("b")],
                Ask {
                    prefer: Some("b"),
                    ..ask(RoundRobin)
                },
                Ok("b"),
            ),
            (
                "prefer by short node id",
                vec![v("a"), v("b")],
                Ask {
                    prefer: Some("node-b"),
                    ..ask(RoundRobin)
                },
                Ok("b"),
            ),
            (
                "prefer an open breaker: falls back",
                vec![v("a"), open("b"), v("c")],
                Ask {
                    prefer: Some("b"),
                    ..ask(RoundRobin)
                },
                Ok("a"),
            ),
            (
                "preference policy without a pin",
                vec![v("a")],
                ask(Preference),
                Err(ErrorCode::BadRequest),
            ),
        ];
        for (name, views, a, want) in cases {
            let got = first(&views, &a, 1);
            assert_eq!(got, want.map(str::to_string), "{name}");
        }
    }

    #[test]
    fn prefer_fallback_is_explained() {
        let tiers = QualityTiers::default();
        let mut rng = StdRng::seed_from_u64(1);
        let views = [v("a"), open("b"), v("c")];
        let a = Ask {
            prefer: Some("b"),
            ..ask(PolicyName::Cost)
        };
        let r = rank(&views, &a, cfg(&tiers), 0, &mut rng).unwrap();
        let why = r.prefer_fallback.unwrap();
        assert!(
            why.contains("breaker open") && why.contains("cost"),
            "{why}"
        );
        let a = Ask {
            prefer: Some("zed"),
            ..ask(PolicyName::Cost)
        };
        let r = rank(&views, &a, cfg(&tiers), 0, &mut rng).unwrap();
        assert!(r.prefer_fallback.unwrap().contains("does not offer"));
        let a = Ask {
            prefer: Some("a"),
            ..ask(PolicyName::Cost)
        };
        assert!(rank(&views, &a, cfg(&tiers), 0, &mut rng)
            .unwrap()
            .prefer_fallback
            .is_none());
    }

    /// P2C (least_loaded) never picks the worst of several, and picks the best most often.
    #[test]
    fn power_of_two_choices_properties() {
        let views = vec![
            View {
                in_flight: 0,
                reported_in_flight: 1,
                ..v("fast")
            },
            View {
                in_flight: 3,
                ..v("mid")
            },
            View {
                in_flight: 2,
                reported_in_flight: 7,
                ..v("slow")
            },
        ];
        let mut counts: HashMap<String, u32> = HashMap::new();
        for seed in 0..600 {
            *counts
                .entry(first(&views, &ask(PolicyName::LeastLoaded), seed).unwrap())
                .or_default() += 1;
        }
        assert_eq!(counts.get("slow"), None, "{counts:?}");
        assert!(counts["fast"] > counts["mid"], "{counts:?}");
    }

    /// `latency` takes the fastest, explores the others a little, and never herds a crowd of
    /// equal agents onto one.
    #[test]
    fn latency_converges_and_explores() {
        let views = vec![lat("mid", 20.0), lat("fast", 5.0), lat("slow", 50.0)];
        let mut counts: HashMap<String, u32> = HashMap::new();
        for seed in 0..2000 {
            *counts
                .entry(first(&views, &ask(PolicyName::Latency), seed).unwrap())
                .or_default() += 1;
        }
        assert!(counts["fast"] >= 1900, "{counts:?}");
        assert!(
            counts["slow"] > 0 && counts["mid"] > 0,
            "explored: {counts:?}"
        );
        // Many equal agents: P2C over the best quarter spreads the first pick.
        let crowd: Vec<View> = (0..16).map(|i| lat(&format!("a{i:02}"), 10.0)).collect();
        let mut picked = std::collections::HashSet::new();
        for seed in 0..200 {
            picked.insert(first(&crowd, &ask(PolicyName::Latency), seed).unwrap());
        }
        assert!(picked.len() >= 4, "{picked:?}");
    }

    #[test]
    fn latency_counts_in_flight() {
        // Equal latency: the one with calls in flight loses (but for exploration).
        let views = [
            lat("a", 10.0),
            View {
                in_flight: 5,
                ..lat("b", 10.0)
            },
        ];
        let a = (0..200)
            .filter(|&seed| first(&views, &ask(PolicyName::Latency), seed).unwrap() == "a")
            .count();
        assert!(a >= 180, "{a}");
        // An unobserved agent is tried once, not flooded before its first answer.
        let views = [
            lat("a", 10.0),
            View {
                in_flight: 1,
                ..v("new")
            },
        ];
        let a = (0..200)
            .filter(|&seed| first(&views, &ask(PolicyName::Latency), seed).unwrap() == "a")
            .count();
        assert!(a >= 180, "{a}");
    }

    /// Agents left out by the tiers get a small share of probe calls.
    #[test]
    fn left_out_agents_are_probed() {
        let views = vec![
            rate("good", 1.0, 50),
            rate("meh", 0.8, 50),
            rate("ok", 0.99, 50),
        ];
        let mut counts: HashMap<String, u32> = HashMap::new();
        for seed in 0..2000 {
            *counts
                .entry(first(&views, &ask(PolicyName::RoundRobin), seed).unwrap())
                .or_default() += 1;
        }
        let meh = counts.get("meh").copied().unwrap_or(0);
        assert!((10..=100).contains(&meh), "{counts:?}");
    }

    #[test]
    fn round_robin_rotates_with_the_cursor() {
        let tiers = QualityTiers::default();
        let views = [v("a"), v("b"), v("c")];
        let mut rng = StdRng::seed_from_u64(1);
        let picks: Vec<String> = (0..4)
            .map(|c| {
                let r = rank(
                    &views,
                    &ask(PolicyName::RoundRobin),
                    cfg(&tiers),
                    c,
                    &mut rng,
                );
                views[r.unwrap().order[0]].agent.clone()
            })
            .collect();
        assert_eq!(picks, ["a", "b", "c", "a"]);
    }

    #[test]
    fn panic_threshold_one_disables_panic() {
        let tiers = QualityTiers::default();
        let mut rng = StdRng::seed_from_u64(1);
        let views = [open("a"), open("b"), v("c")];
        let c = RankConfig {
            panic_threshold: 1.0,
            ..cfg(&tiers)
        };
        let r = rank(&views, &ask(PolicyName::RoundRobin), c, 0, &mut rng).unwrap();
        assert_eq!(r.order, vec![2]);
        assert!(!r.panic);
        assert!(r.reasons[0].contains("breaker open"));
        let r = rank(
            &views,
            &ask(PolicyName::RoundRobin),
            cfg(&tiers),
            0,
            &mut rng,
        )
        .unwrap();
        assert!(r.panic && r.order.len() == 3, "{r:?}");
        assert!(r.reasons[0].contains("panic mode"), "{}", r.reasons[0]);
    }

    #[test]
    fn tiers_validate() {
        QualityTiers::default().validate().unwrap();
        let bad = QualityTiers {
            floor: 0.95,
            ..QualityTiers::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "floor");
        assert!(PolicyName::parse("fastest").is_err());
        assert_eq!(PolicyName::parse("prefer").unwrap(), PolicyName::Preference);
        for n in POLICY_NAMES.split(" | ") {
            assert_eq!(PolicyName::parse(n).unwrap().name(), n);
        }
    }

    fn at(agent: &str, proximity: crate::routing::locality::Proximity, ms: f64) -> View {
        View {
            place: Place {
                proximity,
                rtt_us: None,
            },
            ..lat(agent, ms)
        }
    }

    /// Locality keeps calls in the caller's zone whatever the policy, spills over when the
    /// zone's agents are ejected or full, keeps farther agents after the near ones (for
    /// retries), and yields to a pin and to `off`.
    #[test]
    fn locality_tiers_and_spill_over() {
        use crate::routing::locality::Proximity::*;
        let tiers = QualityTiers::default();
        let mut rng = StdRng::seed_from_u64(7);
        // The remote agent is ten times faster: locality still wins.
        let views = vec![
            at("far", Remote, 5.0),
            at("mid", Region, 20.0),
            at("near", Zone, 50.0),
        ];
        for policy in [
            PolicyName::Latency,
            PolicyName::RoundRobin,
            PolicyName::Random,
            PolicyName::Cost,
        ] {
            for cursor in 0..20 {
                let r = rank(&views, &ask(policy), cfg(&tiers), cursor, &mut rng).unwrap();
                assert_eq!(r.order, vec![2, 1, 0], "{policy:?}: {:?}", r.reasons);
            }
        }
        let r = rank(&views, &ask(PolicyName::Latency), cfg(&tiers), 0, &mut rng).unwrap();
        assert!(
            r.reasons[2].contains("locality zone: nearest"),
            "{}",
            r.reasons[2]
        );
        assert!(
            r.reasons[0].contains("after the nearer agents"),
            "{}",
            r.reasons[0]
        );
        // The zone's agent ejected by its breaker: spill over to the region.
        let mut ejected = views.clone();
        ejected[2].admits = false;
        ejected[2].breaker = BreakerState::Open;
        let c = RankConfig {
            panic_threshold: 1.0,
            ..cfg(&tiers)
        };
        let r = rank(&ejected, &ask(PolicyName::Latency), c, 0, &mut rng).unwrap();
        assert_eq!(r.order, vec![1, 0]);
        assert!(
            r.reasons[1].contains("spill-over to region"),
            "{}",
            r.reasons[1]
        );
        // The zone's agent at its concurrency limit: it goes last.
        let mut full = views.clone();
        full[2].reported_max = 4;
        full[2].reported_in_flight = 4;
        let r = rank(&full, &ask(PolicyName::Latency), cfg(&tiers), 0, &mut rng).unwrap();
        assert_eq!(r.order, vec![1, 0, 2]);
        // Region mode merges zone and region; off ignores places.
        let region = Ask {
            locality: Some(LocalityMode::Region),
            ..ask(PolicyName::Latency)
        };
        for _ in 0..50 {
            let r = rank(&views, &region, cfg(&tiers), 0, &mut rng).unwrap();
            assert_eq!(r.order[2], 0, "remote last in region mode");
        }
        let off = Ask {
            locality: Some(LocalityMode::Off),
            ..ask(PolicyName::Cost)
        };
        let mut cheap = views.clone();
        cheap[0].cost = 0.1;
        let r = rank(&cheap, &off, cfg(&tiers), 0, &mut rng).unwrap();
        assert_eq!(r.order[0], 0, "off: the cheapest, wherever it is");
        // A pin beats locality.
        let pin = Ask {
            prefer: Some("far"),
            ..ask(PolicyName::Latency)
        };
        let r = rank(&views, &pin, cfg(&tiers), 0, &mut rng).unwrap();
        assert_eq!(r.order[0], 0);
    }

    /// Exploration and probes stay inside the nearest tier: over many calls, none goes remote
    /// while the zone's agents are healthy.
    #[test]
    fn locality_exploration_stays_near() {
        use crate::routing::locality::Proximity::*;
        let tiers = QualityTiers::default();
        let mut rng = StdRng::seed_from_u64(11);
        let views = vec![
            at("a", Zone, 40.0),
            at("b", Zone, 10.0),
            at("c", Remote, 1.0),
            at("d", Remote, 1.0),
        ];
        let mut firsts = [0u32; 4];
        for cursor in 0..2000 {
            let r = rank(
                &views,
                &ask(PolicyName::Latency),
                cfg(&tiers),
                cursor,
                &mut rng,
            )
            .unwrap();
            firsts[r.order[0]] += 1;
        }
        assert_eq!(firsts[2] + firsts[3], 0, "{firsts:?}");
        assert!(
            firsts[0] > 0,
            "the slower near agent is still explored: {firsts:?}"
        );
    }
}
