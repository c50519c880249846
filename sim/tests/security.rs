//! Security scenarios: revocation reaches everyone; forgeries, replays, Sybils and role claims
//! change no honest view.

use agentmesh_sim::security::{attacks, revoke};

#[test]
fn revocation_reaches_every_node_and_sticks() {
    for seed in [1, 2] {
        let r = revoke(200, seed, 0.0, 8);
        assert_eq!(r.applied, r.expected, "{r:?}");
        assert_eq!(r.still_holding, 0, "{r:?}");
        assert_eq!(r.readmitted, 0, "{r:?}");
        assert!(r.time_to_revoke_ms_max.is_some(), "{r:?}");
    }
    // With 10 % loss it still converges.
    let r = revoke(200, 3, 0.10, 10);
    assert_eq!(r.applied, r.expected, "{r:?}");
}

#[test]
fn attacks_change_no_honest_view() {
    for seed in [1, 2] {
        let r = attacks(100, seed, 300);
        assert_eq!(r.forged_accepted, 0, "{r:?}");
        assert!(r.forger_score_after < r.forger_score_before, "{r:?}");
        assert_eq!(r.replays_changed, 0, "{r:?}");
        assert_eq!(r.sybil_views_changed, 0, "{r:?}");
        assert_eq!(r.role_claims_accepted, 0, "{r:?}");
    }
}
