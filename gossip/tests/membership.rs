//! SWIM membership end to end on the virtual network: join, suspicion and refutation, crash
//! detection within the Lifeguard bound, graceful leave.

mod util;

use agentmesh_gossip::suspicion::suspicion_bounds;
use agentmesh_gossip::{Event, MemberState};
use util::Net;

#[test]
fn five_nodes_joining_through_one_seed_see_each_other_alive_with_records() {
    let mut net = Net::new(5, 1);
    let took = net.converge();
    // One seed, push-pull sync, then records by pull: well under a few protocol periods.
    assert!(took <= 3_000, "convergence took {took} ms");
    for i in 0..5 {
        let members = net.nodes[i].members();
        assert_eq!(members.len(), 5, "node {i} sees {} members", members.len());
        for j in (0..5).filter(|&j| j != i) {
            let rec = net.nodes[i].record(&net.ids[j]).expect("record held");
            let name = rec.agent.as_ref().map(|a| a.name.clone());
            assert_eq!(
                name,
                Some(format!("agent-{j}")),
                "node {i} holds {j}'s record"
            );
            assert!(
                net.saw(i, &Event::Joined(net.ids[j])),
                "node {i}: Joined({j})"
            );
        }
    }
}

#[test]
fn a_cut_off_node_restored_before_its_suspicion_timeout_refutes_and_never_dies() {
    // A long suspicion window (min 5 s, max 15 s at this size) so the node is restored well
    // before anyone may declare it dead.
    let mut net = Net::with_config(5, 2, |c| c.suspicion_alpha = 5.0);
    net.converge();
    let victim = 4;
    let id = net.ids[victim];
    let inc_before = net.nodes[victim].incarnation();
    let (min_ms, _) = suspicion_bounds(&net.cfg, 5);

    net.isolated.insert(victim);
    let suspected_after = net.drive_until(10_000, "someone suspects the victim", |n| {
        (0..4).any(|i| n.nodes[i].state_of(&id) == Some(MemberState::Suspect))
    });
    assert!(
        suspected_after <= 5_000,
        "suspected after {suspected_after} ms"
    );
    net.isolated.clear();

    let refuted = net.drive_until(min_ms, "victim alive everywhere again", |n| {
        n.all_see(victim, MemberState::Alive)
    });
    assert!(refuted < min_ms, "refutation took {refuted} ms");
    let inc_after = net.nodes[victim].incarnation();
    assert!(
        inc_after > inc_before,
        "incarnation {inc_before} -> {inc_after}"
    );
    assert!(net.nodes[victim].stats().refutations >= 1);
    // Everyone converges on the refuting incarnation, and nobody ever declared it dead. The
    // victim's own suspicions, raised while it was cut off, clear once it probes those members
    // again (within two probe rounds).
    net.drive_until(10_000, "views converge", |n| n.converged());
    for i in 0..4 {
        let view = net.nodes[i].members();
        let v = view.iter().find(|m| m.node_id == id).expect("known");
        assert_eq!(v.state, MemberState::Alive, "node {i}");
        assert_eq!(v.incarnation, net.nodes[victim].incarnation(), "node {i}");
        assert!(
            !net.saw(i, &Event::Dead(id)),
            "node {i} declared the victim dead"
        );
    }
    assert!(net.converged(), "{}", net.describe());
}

#[test]
fn a_suspect_is_told_first_and_refutes_from_one_ping() {
    let mut net = Net::new(3, 3);
    net.converge();
    // A Suspect update about node 2 at its current incarnation, delivered straight to it.
    let id = net.ids[2];
    let inc = net.nodes[2].incarnation();
    let suspect = agentmesh_gossip::Update::Suspect {
        node: id,
        incarnation: inc,
        from: net.ids[0],
    };
    net.inject(
        0,
        2,
        agentmesh_gossip::Message::Gossip {
            updates: vec![suspect],
        },
    );
    assert!(
        net.nodes[2].incarnation() > inc,
        "suspect bumps its own incarnation"
    );
    assert_eq!(net.nodes[2].state_of(&id), Some(MemberState::Alive));
}

#[test]
fn a_crashed_node_is_dead_everywhere_within_the_lifeguard_bound() {
    for seed in [4, 5, 6] {
        let mut net = Net::new(5, seed);
        net.converge();
        let victim = 2;
        let id = net.ids[victim];
        net.stopped.insert(victim);
        let (_, max_ms) = suspicion_bounds(&net.cfg, 5);
        let period = net.cfg.protocol_period_ms;
        // Someone probes it within a round of 4 periods (each live node probes every member
        // once per shuffled round), the probe fails within one period, the suspicion spreads
        // within a period and every node's own timer runs at most `max_ms`.
        let bound = 4 * period + period + period + max_ms;
        let took = net.drive_until(bound, "victim dead everywhere", |n| {
            n.all_see(victim, MemberState::Dead)
        });
        assert!(
            took <= bound,
            "seed {seed}: detection {took} ms > {bound} ms"
        );
        for i in net.live() {
            assert!(net.saw(i, &Event::Suspect(id)) || net.saw(i, &Event::Dead(id)));
            assert!(!net.nodes[i]
                .find(&Default::default())
                .iter()
                .any(|m| m.node_id == id));
        }
        // The survivors stay healthy among themselves.
        net.run_for(5_000);
        assert!(net.converged(), "seed {seed}: survivors lost each other");
    }
}

#[test]
fn a_graceful_leave_is_seen_as_left_everywhere_quickly_and_never_as_dead() {
    let mut net = Net::new(5, 7);
    net.converge();
    let leaver = 3;
    let id = net.ids[leaver];
    net.input(leaver, agentmesh_gossip::Input::Leave);
    assert_eq!(net.nodes[leaver].state_of(&id), Some(MemberState::Left));
    // The leave is signed and sent at once; then the process exits.
    let took = net.drive_until(1_000, "left everywhere", |n| {
        n.all_see(leaver, MemberState::Left)
    });
    assert!(took <= 200, "leave took {took} ms to reach everyone");
    net.stopped.insert(leaver);
    net.run_for(20_000);
    for i in net.live() {
        assert_eq!(
            net.nodes[i].state_of(&id),
            Some(MemberState::Left),
            "node {i}"
        );
        assert!(net.saw(i, &Event::Left(id)), "node {i}: Left event");
        assert!(
            !net.saw(i, &Event::Dead(id)),
            "node {i}: a leaver must not be declared dead"
        );
    }
}
