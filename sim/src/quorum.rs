//! The byzantine quorum simulation: `n = 3f+1` voters, `f` of them byzantine (random answers,
//! colluding on one wrong answer, silent, or equivocating), votes signed and tallied by the
//! same code the node runs ([`agentmesh_vote`]), delivered in a seeded random order with
//! seeded latencies, tallied as they arrive until decided, hopeless or past the deadline.
//!
//! Checked per run: a wrong value is never decided; with at most `f` silent voters and time
//! enough for every vote, the truth is decided.

use agentmesh_crypto::Keypair;
use agentmesh_vote::{tally, Ballot, Threshold, Vote};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeSet;

/// How the byzantine voters behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Each answers a random wrong value.
    Random,
    /// All answer the same wrong value.
    Collude,
    /// None answers.
    Silent,
    /// Each signs the truth and a lie for the same call (both reach the caller).
    Equivocate,
}

/// Every behaviour, in table order.
pub const BEHAVIOURS: [Behaviour; 4] = [
    Behaviour::Random,
    Behaviour::Collude,
    Behaviour::Silent,
    Behaviour::Equivocate,
];

/// One row of the result table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Faults tolerated (`n = 3f+1`).
    pub f: u32,
    /// Byzantine voters actually present.
    pub byzantine: u32,
    /// Their behaviour.
    pub behaviour: Behaviour,
    /// Runs (one per seed).
    pub runs: u32,
    /// Runs that decided the truth.
    pub decided_truth: u32,
    /// Runs that decided a wrong value (must be 0).
    pub decided_wrong: u32,
    /// Runs that ended `needs_review`.
    pub needs_review: u32,
    /// Equivocations proven.
    pub equivocations: u32,
    /// Median time to the outcome, in simulated ms.
    pub outcome_ms_p50: u64,
}

const TRUTH: [u8; 32] = [1; 32];
/// The digest of the simulated question every voter signs.
const SUBJECT: [u8; 32] = [3; 32];
/// Deadline of one simulated quorum, in ms (every vote lands in 10–50 ms).
pub const DEADLINE_MS: u64 = 1_000;

/// Runs one quorum for `seed`; returns (decided value, equivocations, outcome time in ms).
pub fn run_one(
    keys: &[Keypair],
    f: u32,
    byzantine: u32,
    behaviour: Behaviour,
    seed: u64,
) -> (Option<[u8; 32]>, usize, u64) {
    let n = keys.len() as u32;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let call_id: [u8; 16] = rng.gen();
    let required = Threshold::Byzantine { f }.required(n).unwrap_or(u32::MAX);
    let voters: BTreeSet<_> = keys.iter().map(Keypair::node_id).collect();
    // Which voters are byzantine: a random subset of size `byzantine`.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let bad: BTreeSet<usize> = order[..byzantine as usize].iter().copied().collect();
    let collude: [u8; 32] = [2; 32];
    // (arrival ms, ballot)
    let mut arrivals: Vec<(u64, Ballot)> = Vec::new();
    let sign = |k: &Keypair, h: [u8; 32]| Ballot {
        vote: Vote {
            call_id,
            subject: SUBJECT,
            answer_hash: h,
            node_id: k.node_id(),
            epoch: 1,
            signed_at: 0,
        }
        .sign(k),
        value: h,
    };
    for (i, k) in keys.iter().enumerate() {
        let at = rng.gen_range(10..=50);
        if !bad.contains(&i) {
            arrivals.push((at, sign(k, TRUTH)));
            continue;
        }
        match behaviour {
            Behaviour::Random => {
                let mut h: [u8; 32] = rng.gen();
                h[0] |= 0x80; // never the truth
                arrivals.push((at, sign(k, h)));
            }
            Behaviour::Collude => arrivals.push((at, sign(k, collude))),
            Behaviour::Silent => {}
            Behaviour::Equivocate => {
                arrivals.push((at, sign(k, TRUTH)));
                arrivals.push((rng.gen_range(10..=50), sign(k, collude)));
            }
        }
    }
    arrivals.sort_by_key(|(t, b)| (*t, b.vote.vote.node_id));
    let mut seen = Vec::new();
    let mut outcome = None;
    let mut equivocations = 0;
    let mut at_ms = DEADLINE_MS;
    let total_voters_pending = |seen: &[Ballot]| {
        let answered: BTreeSet<_> = seen.iter().map(|b| b.vote.vote.node_id).collect();
        n - answered.len() as u32
    };
    for (t, b) in arrivals {
        if t > DEADLINE_MS {
            break;
        }
        seen.push(b);
        let tl = tally(&call_id, &SUBJECT, &voters, required, &seen);
        equivocations = tl.equivocations.len();
        if tl.decided.is_some() || !tl.can_still_decide(total_voters_pending(&seen)) {
            outcome = tl.decided;
            at_ms = t;
            break;
        }
    }
    (outcome, equivocations, at_ms)
}

/// Runs every behaviour for `f` in `fs` over `seeds` seeds, with `f` byzantine voters (and,
/// for collusion, also `f+1`: beyond the tolerance, safety must still hold).
pub fn table(fs: &[u32], seeds: u64, first_seed: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for &f in fs {
        let n = 3 * f + 1;
        let keys: Vec<Keypair> = (0..n)
            .map(|i| Keypair::from_secret([(i as u8).wrapping_add(1); 32]))
            .collect();
        let mut cases: Vec<(u32, Behaviour)> = BEHAVIOURS.iter().map(|b| (f, *b)).collect();
        cases.push((f + 1, Behaviour::Collude));
        for (byz, behaviour) in cases {
            let mut row = Row {
                f,
                byzantine: byz,
                behaviour,
                runs: 0,
                decided_truth: 0,
                decided_wrong: 0,
                needs_review: 0,
                equivocations: 0,
                outcome_ms_p50: 0,
            };
            let mut times = Vec::new();
            for s in 0..seeds {
                let (d, eq, t) = run_one(&keys, f, byz, behaviour, first_seed + s);
                row.runs += 1;
                row.equivocations += eq as u32;
                times.push(t);
                match d {
                    Some(v) if v == TRUTH => row.decided_truth += 1,
                    Some(_) => row.decided_wrong += 1,
                    None => row.needs_review += 1,
                }
            }
            times.sort_unstable();
            row.outcome_ms_p50 = times.get(times.len() / 2).copied().unwrap_or(0);
            rows.push(row);
        }
    }
    rows
}

/// The table as text, one row per line (fits 100 columns).
pub fn render(rows: &[Row]) -> String {
    let mut out =
        String::from("  f   n  byz  behaviour    runs  truth  WRONG  review  equivoc  p50 ms\n");
    for r in rows {
        out.push_str(&format!(
            "{:>3} {:>3} {:>4}  {:<11} {:>5} {:>6} {:>6} {:>7} {:>8} {:>7}\n",
            r.f,
            3 * r.f + 1,
            r.byzantine,
            format!("{:?}", r.behaviour).to_lowercase(),
            r.runs,
            r.decided_truth,
            r.decided_wrong,
            r.needs_review,
            r.equivocations,
            r.outcome_ms_p50
        ));
    }
    out
}
