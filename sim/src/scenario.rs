//! Scenarios and the figures they report.

use agentmesh_crypto::NodeId;
use agentmesh_gossip::state::Millis;
use agentmesh_gossip::{Config, Event, MemberState, Version};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::adversary::Adversary;
use crate::world::{Action, NetModel, Observer, World, EPOCH_MS};

/// Probability that the `restart` scenario's network delivers a message twice.
pub const RESTART_DUPLICATE: f64 = 0.05;

/// Scenario names the CLI accepts.
pub const SCENARIOS: &[&str] = &[
    "steady",
    "update",
    "crash",
    "loss",
    "stall",
    "partition-heal",
    "restart",
    "churn",
    "join",
    "byzantine",
];

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Nodes.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Scenario name.
    pub scenario: String,
    /// Message loss probability.
    pub loss: f64,
    /// Simulated duration in seconds.
    pub duration_s: u64,
    /// Print progress on stderr.
    pub progress: bool,
    /// `lan` or `wan` gossip profile.
    pub profile: String,
    /// Gossip config overrides, `key=value` (for trade-off curves).
    pub overrides: Vec<String>,
}

/// Applies one `key=value` override to a gossip config.
pub fn apply_override(cfg: &mut Config, kv: &str) -> Result<(), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("override {kv:?}: expected key=value"))?;
    let bad = |_| format!("override {k}: bad value {v:?}");
    match k {
        "suspicion_alpha" => cfg.suspicion_alpha = v.parse().map_err(bad)?,
        "suspicion_beta" => cfg.suspicion_beta = v.parse().map_err(|_| format!("bad {v}"))?,
        "protocol_period_ms" => {
            cfg.protocol_period_ms = v.parse().map_err(|_| format!("bad {v}"))?
        }
        "probe_timeout_ms" => cfg.probe_timeout_ms = v.parse().map_err(|_| format!("bad {v}"))?,
        "eager_peers" => cfg.eager_peers = v.parse().map_err(|_| format!("bad {v}"))?,
        "eager_peers_min" => cfg.eager_peers_min = v.parse().map_err(|_| format!("bad {v}"))?,
        "lazy_peers" => cfg.lazy_peers = v.parse().map_err(|_| format!("bad {v}"))?,
        "graft_timeout_ms" => cfg.graft_timeout_ms = v.parse().map_err(|_| format!("bad {v}"))?,
        "gossip_interval_ms" => {
            cfg.gossip_interval_ms = v.parse().map_err(|_| format!("bad {v}"))?
        }
        "gossip_fanout" => cfg.gossip_fanout = v.parse().map_err(|_| format!("bad {v}"))?,
        "retransmit_mult" => cfg.retransmit_mult = v.parse().map_err(|_| format!("bad {v}"))?,
        "indirect_probes" => cfg.indirect_probes = v.parse().map_err(|_| format!("bad {v}"))?,
        "suspicion_confirmations_k" => {
            cfg.suspicion_confirmations_k = v.parse().map_err(|_| format!("bad {v}"))?
        }
        "lhm_max" => cfg.lhm_max = v.parse().map_err(|_| format!("bad {v}"))?,
        _ => return Err(format!("unknown override key {k:?}")),
    }
    Ok(())
}

/// The one JSON object a run prints.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Scenario.
    pub scenario: String,
    /// Loss probability.
    pub loss: f64,
    /// Simulated seconds.
    pub duration_s: u64,
    /// Record updates tracked.
    pub updates: usize,
    /// Updates that did not reach every live node by the end.
    pub updates_unconverged: usize,
    /// Median time from a record change until every live node holds it.
    pub convergence_ms_p50: Option<u64>,
    /// 99th percentile of the same.
    pub convergence_ms_p99: Option<u64>,
    /// Worst case of the same.
    pub convergence_ms_max: Option<u64>,
    /// Record copies a node receives per update, on average (1.0 is ideal).
    pub duplicates_per_update: Option<f64>,
    /// Worst time from a join or leave until every live node knows it (converged ones only;
    /// the others are counted in `membership_unconverged`).
    pub membership_convergence_ms_max: Option<u64>,
    /// Joins and leaves that did not reach every live node by the end.
    pub membership_unconverged: usize,
    /// Worst time from a join until every live node knows it.
    pub join_convergence_ms_max: Option<u64>,
    /// Worst time from a graceful leave until every live node knows it.
    pub leave_convergence_ms_max: Option<u64>,
    /// Median time from a crash until every live node marks it dead.
    pub detection_ms_p50: Option<u64>,
    /// 99th percentile of the same.
    pub detection_ms_p99: Option<u64>,
    /// Crashes not detected by every live node by the end.
    pub undetected: usize,
    /// Live nodes marked dead by at least one live node at the end.
    pub false_dead: usize,
    /// Dead declarations, during the run, about nodes that never crashed, stalled or left.
    pub dead_declarations_of_healthy: u64,
    /// Dead declarations, during the run, about nodes that stalled but never crashed or left
    /// (refuted when the stall ends, so not counted in `false_dead`, but each one is a live
    /// node some member held dead for a while).
    pub dead_declarations_of_stalled: u64,
    /// Time for a cold joiner to hold every live member and record (join scenario).
    pub cold_join_ms: Option<u64>,
    /// Time after a heal until every live node sees every other alive (partition-heal).
    pub heal_ms: Option<u64>,
    /// Bytes sent per node per second over the measured window.
    pub bytes_per_node_per_s: f64,
    /// Messages sent per node per second over the measured window.
    pub msgs_per_node_per_s: f64,
    /// Adversaries whose score is below the ignore threshold at most honest nodes they hit.
    pub adversaries_ignored: Option<String>,
    /// Invariant violations (each is a bug; the seed reproduces it).
    pub invariant_violations: usize,
    /// First few violations, for debugging.
    pub violation_examples: Vec<String>,
    /// Simulator events processed.
    pub steps: u64,
}

struct Track {
    t0: Millis,
    subject: usize,
    seen_at: Vec<Millis>,
    /// Nodes live when it happened: only they are expected to see it (later joiners learn
    /// the current state, not the event).
    observers: Vec<bool>,
}

impl Track {
    fn new(w: &World, subject: usize) -> Self {
        let n = w.nodes.len();
        let mut observers = vec![false; n];
        for i in w.live() {
            observers[i] = i != subject;
        }
        Track {
            t0: w.now,
            subject,
            seen_at: vec![0; n],
            observers,
        }
    }
    fn mark(&mut self, i: usize, t: Millis) {
        if self.seen_at[i] == 0 {
            self.seen_at[i] = t;
        }
    }
    /// Time until every node in `live` (but the subject) saw it, or None if one has not.
    fn done_ms(&self, live: &[usize]) -> Option<u64> {
        let mut worst = self.t0;
        for &i in live {
            if i == self.subject || !self.observers[i] {
                continue;
            }
            match self.seen_at[i] {
                0 => return None,
                t => worst = worst.max(t),
            }
        }
        Some(worst - self.t0)
    }
}

#[derive(Default)]
struct Metrics {
    updates: BTreeMap<(usize, Version), Track>,
    joins: BTreeMap<usize, Track>,
    leaves: BTreeMap<usize, Track>,
    crashes: BTreeMap<usize, Track>,
    dead_of_healthy: u64,
    dead_of_stalled: u64,
}

impl Observer for Metrics {
    fn event(&mut self, w: &World, at: usize, ev: &Event, t: Millis) {
        if w.nodes[at].adversary.is_some() {
            return;
        }
        let idx = |id: &NodeId| w.index.get(id).copied();
        match ev {
            Event::Updated(o) => {
                let Some(o) = idx(o) else { return };
                let Some(v) = w.nodes[at]
                    .g
                    .as_ref()
                    .and_then(|g| g.record_version(&w.nodes[o].id))
                else {
                    return;
                };
                for ((_, tv), tr) in self.updates.range_mut((o, Version::default())..=(o, v)) {
                    if *tv <= v {
                        tr.mark(at, t);
                    }
                }
            }
            Event::Joined(x) | Event::Alive(x) => {
                if let Some(tr) = idx(x).and_then(|x| self.joins.get_mut(&x)) {
                    tr.mark(at, t);
                }
            }
            Event::Left(x) => {
                if let Some(tr) = idx(x).and_then(|x| self.leaves.get_mut(&x)) {
                    tr.mark(at, t);
                }
            }
            Event::Dead(x) => {
                let Some(x) = idx(x) else { return };
                if let Some(tr) = self.crashes.get_mut(&x) {
                    tr.mark(at, t);
                }
                if let Some(tr) = self.leaves.get_mut(&x) {
                    tr.mark(at, t);
                }
                if w.nodes[x].adversary.is_none() {
                    if !w.nodes[x].faulty {
                        self.dead_of_healthy += 1;
                    } else if w.nodes[x].stalled && !self.crashes.contains_key(&x) {
                        self.dead_of_stalled += 1;
                    }
                }
            }
            _ => {}
        }
    }
}

fn pct(v: &mut [u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    Some(v[i.min(v.len() - 1)])
}

/// Runs one scenario and returns its report.
pub fn run(p: &Params) -> Result<Report, String> {
    if !SCENARIOS.contains(&p.scenario.as_str()) {
        return Err(format!(
            "unknown scenario {:?}: expected one of {}",
            p.scenario,
            SCENARIOS.join(", ")
        ));
    }
    if p.nodes < 3 {
        return Err("--nodes must be at least 3".into());
    }
    let base: fn(agentmesh_gossip::Admission) -> Config = match p.profile.as_str() {
        "wan" => Config::wan,
        "lan" => Config::lan,
        other => return Err(format!("unknown profile {other:?}: expected lan or wan")),
    };
    for kv in &p.overrides {
        apply_override(&mut base(agentmesh_gossip::Admission::Open), kv)?;
    }
    let overrides = p.overrides.clone();
    let cfg_fn = move |a| {
        let mut c = base(a);
        for kv in &overrides {
            let _ = apply_override(&mut c, kv);
        }
        c
    };
    let net = NetModel {
        loss: p.loss,
        // The restart scenario also duplicates messages, so both faults are exercised.
        duplicate: if p.scenario == "restart" {
            RESTART_DUPLICATE
        } else {
            0.0
        },
        ..NetModel::default()
    };
    let n = p.nodes;
    // Spare slots for joiners in churn and join scenarios.
    let spare = match p.scenario.as_str() {
        "churn" => n / 10 + 1,
        _ => 0,
    };
    let mut w = World::new(n + spare, p.seed, cfg_fn, net);
    let mut m = Metrics::default();
    let start_n = if p.scenario == "join" { n - 1 } else { n };
    w.start_converged(start_n);
    let end = EPOCH_MS + p.duration_s * 1000;
    let warm = EPOCH_MS + 2000;
    let mut plan: Vec<(Millis, Action)> = Vec::new();
    let rng_n = |w: &mut World, lo: u64, hi: u64| w.rng().gen_range(lo..hi.max(lo + 1));

    match p.scenario.as_str() {
        "steady" => {}
        "update" | "loss" | "byzantine" => {
            let every = if p.scenario == "update" { 100 } else { 250 };
            let mut t = warm;
            while t + 3000 < end {
                let i = w.rng().gen_range(0..n);
                plan.push((t, Action::UpdateRecord(i)));
                t += every;
            }
        }
        "crash" => {
            let k = (n / 100).max(1);
            let mut ids: Vec<usize> = (0..n).collect();
            ids.shuffle(w.rng());
            for &i in ids.iter().take(k) {
                let t = warm + rng_n(&mut w, 0, 2000);
                plan.push((t, Action::Crash(i)));
            }
        }
        "stall" => {
            let k = (n * 2 / 100).max(1);
            let mut ids: Vec<usize> = (0..n).collect();
            ids.shuffle(w.rng());
            let last = end.saturating_sub(15_000).max(warm + 1);
            for &i in ids.iter().take(k) {
                for _ in 0..2 {
                    let t = warm + rng_n(&mut w, 0, last - warm);
                    let d = rng_n(&mut w, 1000, 4000);
                    plan.push((t, Action::Stall(i, t + d)));
                }
            }
        }
        "partition-heal" => {
            let groups: Vec<u8> = (0..n).map(|i| u8::from(i * 5 >= n * 3)).collect();
            plan.push((warm, Action::Partition(groups)));
            plan.push((warm + 20_000, Action::Heal));
        }
        "churn" => {
            let per_s = (n / 200).max(1);
            let mut next_spare = n;
            let mut t = warm;
            let mut alive: Vec<usize> = (0..n).collect();
            while t + 10_000 < end {
                for k in 0..per_s {
                    if alive.len() > 3 {
                        let j = w.rng().gen_range(0..alive.len());
                        let i = alive.swap_remove(j);
                        let a = if k % 2 == 0 {
                            Action::Leave(i)
                        } else {
                            Action::Crash(i)
                        };
                        plan.push((t, a));
                    }
                    if next_spare < n + spare {
                        plan.push((t + 500, Action::Join(next_spare)));
                        alive.push(next_spare);
                        next_spare += 1;
                    }
                }
                t += 1000;
            }
        }
        "join" => plan.push((warm, Action::Join(n - 1))),
        "restart" => {
            // Record updates throughout; 1 % of nodes crash and come back 3-5 s later with a
            // fresh state machine (a new incarnation), rejoining through a live peer.
            let mut t = warm;
            while t + 3000 < end {
                let i = w.rng().gen_range(0..n);
                plan.push((t, Action::UpdateRecord(i)));
                t += 250;
            }
            let k = (n / 100).max(1);
            let mut ids: Vec<usize> = (0..n).collect();
            ids.shuffle(w.rng());
            for &i in ids.iter().take(k) {
                let t = warm + rng_n(&mut w, 0, 2000);
                plan.push((t, Action::Crash(i)));
                plan.push((t + rng_n(&mut w, 3000, 5000), Action::Restart(i)));
            }
        }
        _ => {}
    }
    if p.scenario == "byzantine" {
        let k = (n * 5 / 100).max(1);
        let kinds = [Adversary::Forger, Adversary::Replayer, Adversary::Liar];
        for (j, i) in (n - k..n).enumerate() {
            w.nodes[i].adversary = Some(kinds[j % kinds.len()]);
            plan.push((warm + j as u64 * 7, Action::Adversary(i)));
        }
    }
    plan.sort_by_key(|(t, _)| *t);

    let measure_from = warm;
    let mut bytes0 = 0;
    let mut msgs0 = 0;
    let mut measured = false;
    let mut heal_at: Option<Millis> = None;
    let mut heal_ms = None;
    let mut join_at: Option<Millis> = None;
    let mut cold_join_ms = None;
    let mut last_progress = EPOCH_MS;

    let mut plan = plan.into_iter().peekable();
    let mut t = EPOCH_MS;
    while t < end {
        let next_plan = plan.peek().map(|(pt, _)| *pt).unwrap_or(end);
        // Step at most 100 ms so polled measures (heal, cold join) have that resolution.
        let step_to = next_plan.min(t + 100).min(end);
        w.run_until(step_to, &mut m);
        t = step_to;
        if !measured && t >= measure_from {
            bytes0 = w.sum_stats(|s| s.bytes_out);
            msgs0 = w.sum_stats(|s| s.msgs_out);
            measured = true;
        }
        while plan.peek().is_some_and(|(pt, _)| *pt <= t) {
            let (_, a) = plan.next().expect("peeked");
            apply(&mut w, &mut m, a, &mut heal_at, &mut join_at);
        }
        if let (Some(h), None) = (heal_at, heal_ms) {
            if all_see_all(&w) {
                heal_ms = Some(t - h);
            }
        }
        if let (Some(j), None) = (join_at, cold_join_ms) {
            if full_view(&w, n - 1) {
                cold_join_ms = Some(t - j);
            }
        }
        if p.progress && t >= last_progress + 5000 {
            last_progress = t;
            eprintln!(
                "[sim] t={:>5.1}s steps={} live={}",
                (t - EPOCH_MS) as f64 / 1000.0,
                w.steps,
                w.live().len()
            );
        }
    }

    let live = w.live();
    let window_s = (end - measure_from) as f64 / 1000.0;
    let bytes = w.sum_stats(|s| s.bytes_out).saturating_sub(bytes0) as f64;
    let msgs = w.sum_stats(|s| s.msgs_out).saturating_sub(msgs0) as f64;
    let live_n = live.len().max(1) as f64;

    let mut conv: Vec<u64> = m
        .updates
        .values()
        .filter_map(|t| t.done_ms(&live))
        .collect();
    let unconverged = m.updates.len() - conv.len();
    let dup = if m.updates.is_empty() {
        None
    } else {
        let copies = w.sum_stats(|s| s.record_copies_in) as f64;
        let receivers = (m.updates.len() * (live.len().max(2) - 1)) as f64;
        Some((copies / receivers.max(1.0) * 100.0).round() / 100.0)
    };
    let membership: Vec<u64> = m
        .joins
        .values()
        .chain(m.leaves.values())
        .filter_map(|t| t.done_ms(&live))
        .collect();
    let mut det: Vec<u64> = m
        .crashes
        .values()
        .filter_map(|t| t.done_ms(&live))
        .collect();
    let undetected = m.crashes.len() - det.len();

    let adversaries_ignored = (p.scenario == "byzantine").then(|| {
        let adv: Vec<usize> = (0..w.nodes.len())
            .filter(|&i| w.nodes[i].adversary.is_some())
            .collect();
        let ignored = adv
            .iter()
            .filter(|&&a| {
                let id = w.nodes[a].id;
                let hit: Vec<i32> = live
                    .iter()
                    .filter_map(|&h| w.nodes[h].g.as_ref().map(|g| g.score(&id)))
                    .filter(|s| *s < 0)
                    .collect();
                let below = hit
                    .iter()
                    .filter(|s| **s < w.cfg.score_ignore_below)
                    .count();
                !hit.is_empty() && below * 2 >= hit.len()
            })
            .count();
        format!("{ignored}/{}", adv.len())
    });

    let mut violations = w.violations.clone();
    let falsely_dead = w.falsely_dead();
    for (&j, &k) in &falsely_dead {
        if k * 2 > live.len() {
            violations.push(format!(
                "live node {j} is dead to a majority ({k}) at the end"
            ));
        }
    }
    Ok(Report {
        nodes: n,
        seed: p.seed,
        scenario: p.scenario.clone(),
        loss: p.loss,
        duration_s: p.duration_s,
        updates: m.updates.len(),
        updates_unconverged: unconverged,
        convergence_ms_p50: pct(&mut conv, 0.5),
        convergence_ms_p99: pct(&mut conv, 0.99),
        convergence_ms_max: conv.iter().max().copied(),
        duplicates_per_update: dup,
        membership_convergence_ms_max: membership.iter().max().copied(),
        membership_unconverged: m.joins.len() + m.leaves.len() - membership.len(),
        join_convergence_ms_max: m.joins.values().filter_map(|t| t.done_ms(&live)).max(),
        leave_convergence_ms_max: m.leaves.values().filter_map(|t| t.done_ms(&live)).max(),
        detection_ms_p50: pct(&mut det, 0.5),
        detection_ms_p99: pct(&mut det, 0.99),
        undetected,
        false_dead: falsely_dead.len(),
        dead_declarations_of_healthy: m.dead_of_healthy,
        dead_declarations_of_stalled: m.dead_of_stalled,
        cold_join_ms,
        heal_ms,
        bytes_per_node_per_s: (bytes / live_n / window_s).round(),
        msgs_per_node_per_s: (msgs / live_n / window_s * 10.0).round() / 10.0,
        adversaries_ignored,
        invariant_violations: violations.len(),
        violation_examples: violations.into_iter().take(5).collect(),
        steps: w.steps,
    })
}

fn apply(
    w: &mut World,
    m: &mut Metrics,
    a: Action,
    heal_at: &mut Option<Millis>,
    join_at: &mut Option<Millis>,
) {
    let now = w.now;
    match &a {
        Action::Crash(i) if w.is_up(*i) && !m.leaves.contains_key(i) => {
            m.crashes.insert(*i, Track::new(w, *i));
        }
        Action::Leave(i) => {
            m.leaves.insert(*i, Track::new(w, *i));
        }
        Action::Join(i) | Action::Restart(i) => {
            m.joins.insert(*i, Track::new(w, *i));
            if join_at.is_none() {
                *join_at = Some(now);
            }
        }
        Action::Heal => *heal_at = Some(now),
        _ => {}
    }
    let is_update = matches!(a, Action::UpdateRecord(_));
    let target = if let Action::UpdateRecord(i) = a {
        Some(i)
    } else {
        None
    };
    w.act(a, m);
    if let (true, Some(i)) = (is_update, target) {
        if let Some(v) = w.nodes[i].g.as_ref().map(|g| g.local_record().version()) {
            m.updates.insert((i, v), Track::new(w, i));
        }
    }
}

fn all_see_all(w: &World) -> bool {
    let live = w.live();
    live.iter().all(|&i| {
        let g = w.nodes[i].g.as_ref().expect("live");
        live.iter()
            .all(|&j| i == j || g.state_of(&w.nodes[j].id) == Some(MemberState::Alive))
    })
}

fn full_view(w: &World, joiner: usize) -> bool {
    let Some(g) = w.nodes[joiner].g.as_ref() else {
        return false;
    };
    w.live().iter().all(|&j| {
        if j == joiner {
            return true;
        }
        let id = w.nodes[j].id;
        let want = w.nodes[j].g.as_ref().map(|o| o.local_record().version());
        g.state_of(&id) == Some(MemberState::Alive) && g.record_version(&id) == want
    })
}
