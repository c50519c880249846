//! Membership anti-entropy: a member that missed another's announcement still learns of it.
//! Found by the chaos soak (`scripts/chaos`): a node restarted after kill -9 rejoined, but its
//! join's state sync was lost, and it never learnt one live member: that member kept probing
//! it, and it kept answering without ever asking who that was.

mod util;

use agentmesh_gossip::{Input, MemberState, Message};
use util::Net;

/// Virtual time allowed to catch up: a few push-pull intervals.
const CATCH_UP_MS: u64 = 30_000;

#[test]
fn a_restarted_node_whose_join_sync_was_lost_learns_every_member() {
    let mut net = Net::new(5, 11);
    net.converge();
    net.restart(4);
    // The seed's answer to the join (its whole view) never arrives.
    let joined_at = net.now;
    net.drop_if = Some(Box::new(move |now, _, to, m| {
        to == 4 && now < joined_at + 1_000 && matches!(m, Message::Sync { .. })
    }));
    net.join(4, 0);
    let took = net.drive_until(CATCH_UP_MS, "restarted node 4 sees everyone", |n| {
        (0..4).all(|j| n.nodes[4].state_of(&n.ids[j]) == Some(MemberState::Alive))
            && n.all_see(4, MemberState::Alive)
    });
    // Everyone probes node 4 within a protocol period or two; each probe now makes it ask.
    assert!(took <= 5_000, "caught up in {took} ms");
    net.drive_until(CATCH_UP_MS, "records converge", |n| n.converged());
}

#[test]
fn digests_are_bounded_by_the_window_and_answered_with_what_is_newer() {
    let mut net = Net::with_config(6, 13, |c| c.push_pull_digest_max = 3);
    net.converge();
    // A digest claiming node 2 at incarnation 0: node 0 holds it newer and must push it.
    let id2 = net.ids[2];
    let me = net.ids[5];
    let inc5 = net.nodes[5].incarnation();
    let msg = Message::Digest {
        entries: vec![(me, inc5), (id2, 0)],
        wants: vec![],
        reply: true,
    };
    // Straight into node 0 (not through the harness queue), to read what it answers.
    let now = net.now;
    net.nodes[0].handle(Input::Message { from: me, msg }, now);
    let mut sync_members = 0;
    let mut digest_len = None;
    while let Some((to, m)) = net.nodes[0].poll_message() {
        if to != me {
            continue;
        }
        match m {
            Message::Sync { members } => {
                sync_members += members.len();
                assert!(members.iter().any(|m| m.signer == id2));
            }
            Message::Digest { entries, reply, .. } => {
                assert!(!reply, "an answer never asks for another");
                digest_len = Some(entries.len());
            }
            _ => {}
        }
    }
    assert_eq!(sync_members, 1, "only the newer identity is pushed");
    assert_eq!(digest_len, Some(3), "the answer is one window long");
}
