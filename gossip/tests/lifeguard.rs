//! Lifeguard suspicion timeouts as tables: bounds scale with log10(N), the timeout starts at
//! its maximum, shrinks with independent confirmations and never goes below the minimum.

use agentmesh_crypto::NodeId;
use agentmesh_gossip::suspicion::{suspicion_bounds, suspicion_timeout, Suspicion};
use agentmesh_gossip::{Admission, Config};

#[test]
fn bounds_scale_with_log_of_cluster_size() {
    // Fixed multipliers, so the table does not move when the profiles are tuned:
    // min = α · log10(max(n, 10)) · period, max = β · min.
    let lan = Config {
        suspicion_alpha: 1.0,
        suspicion_beta: 3.0,
        protocol_period_ms: 1_000,
        ..Config::lan(Admission::Open)
    };
    let wan = Config {
        suspicion_alpha: 2.0,
        suspicion_beta: 3.0,
        protocol_period_ms: 2_000,
        ..Config::wan(Admission::Open)
    };
    // (profile, n, (min_ms, max_ms)); small clusters count as 10 members.
    let table = [
        ("lan", &lan, 1, (1_000, 3_000)),
        ("lan", &lan, 5, (1_000, 3_000)),
        ("lan", &lan, 10, (1_000, 3_000)),
        ("lan", &lan, 100, (2_000, 6_000)),
        ("lan", &lan, 1_000, (3_000, 9_000)),
        ("lan", &lan, 10_000, (4_000, 12_000)),
        ("wan", &wan, 10, (4_000, 12_000)),
        ("wan", &wan, 1_000, (12_000, 36_000)),
    ];
    for (profile, cfg, n, want) in table {
        assert_eq!(suspicion_bounds(cfg, n), want, "{profile} n={n}");
    }
    // Whatever the tuning, the shipped WAN profile waits longer than the LAN one.
    for n in [10, 1_000] {
        let l = suspicion_bounds(&Config::lan(Admission::Open), n);
        let w = suspicion_bounds(&Config::wan(Admission::Open), n);
        assert!(w.0 > l.0 && w.1 > l.1, "n={n}: wan {w:?} vs lan {l:?}");
        assert!(l.0 < l.1, "n={n}: min {} must be below max {}", l.0, l.1);
    }
}

#[test]
fn timeout_starts_at_max_shrinks_with_confirmations_and_stops_at_min() {
    // (min, max, confirmations c, expected k, timeout)
    let table = [
        (1_000, 3_000, 0, 3, 3_000), // no confirmation: the maximum
        (1_000, 3_000, 1, 3, 2_000), // ln2/ln4 = 1/2 of the way down
        (1_000, 3_000, 2, 3, 1_415), // ln3/ln4 ≈ 0.79
        (1_000, 3_000, 3, 3, 1_000), // k confirmations: the minimum
        (1_000, 3_000, 9, 3, 1_000), // never below the minimum
        (1_000, 3_000, 0, 0, 1_000), // k = 0 (tiny cluster): the minimum at once
        (1_000, 3_000, 5, 0, 1_000),
        (2_000, 2_000, 0, 3, 2_000), // min = max: constant
    ];
    for (min, max, c, k, want) in table {
        assert_eq!(
            suspicion_timeout(min, max, c, k),
            want,
            "min={min} max={max} c={c} k={k}"
        );
    }
}

#[test]
fn a_suspicion_deadline_only_counts_independent_confirmations() {
    let cfg = Config::lan(Admission::Open);
    let (min, max) = suspicion_bounds(&cfg, 100);
    let start = 50_000;
    let mut s = Suspicion::new(&cfg, 100, NodeId([1; 32]), start);
    assert_eq!(s.deadline(), start + max);
    // The same accuser twice is one accusation.
    assert!(!s.confirm(NodeId([1; 32])));
    assert_eq!(s.deadline(), start + max);
    let mut last = s.deadline();
    for i in 2..=4u8 {
        assert!(s.confirm(NodeId([i; 32])));
        assert!(
            s.deadline() < last,
            "confirmation {i} did not shorten the timeout"
        );
        last = s.deadline();
    }
    assert_eq!(
        s.deadline(),
        start + min,
        "k = 3 confirmations reach the minimum"
    );
    assert!(s.confirm(NodeId([9; 32])));
    assert_eq!(s.deadline(), start + min);
}

#[test]
fn in_a_three_node_cluster_one_confirmation_is_all_there_can_be() {
    // memberlist: k is capped at n − 2, so a small cluster is not stuck at the maximum.
    let cfg = Config::lan(Admission::Open);
    let (min, max) = suspicion_bounds(&cfg, 3);
    let mut s = Suspicion::new(&cfg, 3, NodeId([1; 32]), 0);
    assert_eq!(s.deadline(), max);
    s.confirm(NodeId([2; 32]));
    assert_eq!(s.deadline(), min);
}
