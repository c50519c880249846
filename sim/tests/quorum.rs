//! The byzantine quorum table as a test: across 300 seeds per row (the bin runs 1,000), no
//! wrong value is decided, and every run within tolerance decides the truth.

use agentmesh_sim::quorum::{render, table, Behaviour};

#[test]
fn no_wrong_decision_and_liveness_within_tolerance() {
    let rows = table(&[1, 2], 300, 1);
    eprintln!("{}", render(&rows));
    for r in &rows {
        assert_eq!(r.decided_wrong, 0, "{r:?}");
        if r.byzantine <= r.f {
            assert_eq!(r.decided_truth, r.runs, "{r:?}");
        } else {
            assert_eq!(
                r.needs_review, r.runs,
                "beyond f, collusion must stall: {r:?}"
            );
        }
        if r.behaviour == Behaviour::Equivocate {
            assert!(r.equivocations > 0, "{r:?}");
        }
    }
}

#[test]
fn same_seed_same_table() {
    let a = render(&table(&[1], 20, 7));
    let b = render(&table(&[1], 20, 7));
    assert_eq!(a, b);
}
