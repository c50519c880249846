//! Suspicions count only when signed by their accuser: a lying member cannot forge other
//! members' confirmations, and one liar alone cannot get a live member declared dead.

mod util;

use agentmesh_crypto::Signed;
use agentmesh_gossip::member::{Accusation, ACCUSATION_CONTEXT};
use agentmesh_gossip::{Event, MemberState, Message, Update};
use std::sync::Arc;
use util::Net;

fn accuse(net: &Net, by: usize, victim: usize, dead: bool) -> Update {
    let body = Accusation {
        node: net.ids[victim],
        incarnation: net.nodes[victim].incarnation(),
        dead,
    };
    Update::Accuse(Arc::new(Signed::sign(
        &net.keys[by],
        ACCUSATION_CONTEXT,
        &body,
    )))
}

#[test]
fn unsigned_rumours_naming_other_accusers_count_for_nothing() {
    let mut net = Net::new(6, 11);
    net.converge();
    let (liar, hearer, victim) = (5, 0, 3);
    let inc = net.nodes[victim].incarnation();
    // Suspect and dead claims in the names of three honest members, straight from the liar.
    let updates = [1, 2, 4]
        .iter()
        .flat_map(|&a| {
            [
                Update::Suspect {
                    node: net.ids[victim],
                    incarnation: inc,
                    from: net.ids[a],
                },
                Update::Dead {
                    node: net.ids[victim],
                    incarnation: inc,
                    from: net.ids[a],
                },
            ]
        })
        .collect();
    net.inject(liar, hearer, Message::Gossip { updates });
    assert_eq!(
        net.nodes[hearer].state_of(&net.ids[victim]),
        Some(MemberState::Alive)
    );
    assert!(!net.saw(hearer, &Event::Suspect(net.ids[victim])));
}

#[test]
fn signed_accusations_count_once_per_accuser_and_a_forged_one_is_penalised() {
    let mut net = Net::new(6, 12);
    net.converge();
    let (hearer, victim) = (0, 3);
    let u = accuse(&net, 1, victim, false);
    net.inject(2, hearer, Message::Gossip { updates: vec![u] });
    assert_eq!(
        net.nodes[hearer].state_of(&net.ids[victim]),
        Some(MemberState::Suspect),
        "a relayed, signed accusation starts a suspicion"
    );
    // A bit-flipped accusation: rejected and the sender penalised.
    let Update::Accuse(a) = accuse(&net, 4, victim, true) else {
        unreachable!()
    };
    let mut bad = (*a).clone();
    let last = bad.payload.len() - 1;
    bad.payload[last] ^= 1;
    net.inject(
        2,
        hearer,
        Message::Gossip {
            updates: vec![Update::Accuse(Arc::new(bad))],
        },
    );
    assert!(!net.penalties(hearer, 2).is_empty(), "sender penalised");
}

#[test]
fn one_lying_member_cannot_get_a_live_member_declared_dead() {
    let mut net = Net::new(8, 13);
    net.converge();
    let (liar, victim) = (7, 3);
    // The liar accuses the victim, signed as itself, to everyone, again and again, suspect and
    // dead alike, always at the victim's current incarnation.
    let mut t = 0;
    while t < 20_000 {
        for to in (0..7).filter(|&j| j != victim) {
            let dead = (t / 500) % 2 == 0;
            let u = accuse(&net, liar, victim, dead);
            net.inject(liar, to, Message::Gossip { updates: vec![u] });
        }
        net.run_for(500);
        t += 500;
    }
    for i in (0..7).filter(|&i| i != victim) {
        assert!(
            !net.saw(i, &Event::Dead(net.ids[victim])),
            "node {i} declared the victim dead: {:?}",
            net.events[i]
                .iter()
                .filter(|(_, e)| matches!(e, Event::Dead(x) | Event::Suspect(x) | Event::Alive(x) if *x == net.ids[victim]))
                .collect::<Vec<_>>()
        );
    }
}
