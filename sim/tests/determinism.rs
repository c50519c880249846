//! One seed, one run, byte for byte; and the figures move with the seed.

use agentmesh_sim::{run, Params};

fn params(scenario: &str, seed: u64) -> Params {
    Params {
        nodes: 120,
        seed,
        scenario: scenario.into(),
        loss: 0.05,
        duration_s: 10,
        progress: false,
        profile: "lan".into(),
        overrides: vec![],
    }
}

#[test]
fn same_seed_gives_identical_output() {
    for scenario in ["update", "crash", "byzantine"] {
        let a = serde_json::to_string(&run(&params(scenario, 7)).unwrap()).unwrap();
        let b = serde_json::to_string(&run(&params(scenario, 7)).unwrap()).unwrap();
        assert_eq!(a, b, "{scenario}: two runs of seed 7 differ");
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let a = run(&params("update", 1)).unwrap();
    let b = run(&params("update", 2)).unwrap();
    assert_ne!(a.steps, b.steps, "seed must drive the run");
}

#[test]
fn idle_traffic_per_node_is_flat_in_cluster_size() {
    let bytes = |n: usize| {
        let mut p = params("steady", 3);
        p.loss = 0.0;
        p.nodes = n;
        p.duration_s = 15;
        run(&p).unwrap().bytes_per_node_per_s
    };
    let (small, large) = (bytes(50), bytes(500));
    assert!(small > 0.0, "idle nodes still probe");
    assert!(
        large <= small * 1.5,
        "idle bytes grow with N: {small} B/s at 50 nodes, {large} B/s at 500"
    );
}

#[test]
fn unknown_scenario_is_a_clear_error() {
    let err = run(&params("nope", 1)).unwrap_err();
    assert!(err.contains("steady"), "error lists valid names: {err}");
}
