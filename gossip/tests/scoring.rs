//! Peer scoring: penalties add up, a peer below the threshold is ignored, the score is keyed
//! by node id (so it survives reconnects and rejoins), and it recovers over time.

mod util;

use agentmesh_gossip::wire::{encode, WIRE_VERSION};
use agentmesh_gossip::{Input, Message};
use util::Net;

/// A frame that passes the size and version checks but does not decode.
fn garbage() -> Vec<u8> {
    vec![WIRE_VERSION, 0xff, 0xff, 0xff]
}

fn frame(net: &mut Net, from: usize, to: usize, bytes: Vec<u8>) {
    let from = net.ids[from];
    net.input(to, Input::Frame { from, bytes });
}

#[test]
fn penalties_accumulate_by_cost() {
    let mut net = Net::new(2, 21);
    net.converge();
    let limit = net.cfg.frame_bytes_max;
    // (frame, reason, cost)
    let cases: [(Vec<u8>, &str, i32); 3] = [
        (garbage(), "decode_error", 20),
        (vec![0u8; limit + 1], "oversize", 20),
        (vec![WIRE_VERSION + 1, 0], "decode_error", 20),
    ];
    let mut expected = 0;
    for (bytes, reason, cost) in cases {
        frame(&mut net, 1, 0, bytes);
        expected -= cost;
        assert_eq!(net.nodes[0].score(&net.ids[1]), expected, "{reason}");
        assert_eq!(net.penalties(0, 1).last().map(String::as_str), Some(reason));
    }
    assert_eq!(net.nodes[0].stats().penalties, 3);
    // The victim's view of the peer is unaffected by the peer's score alone.
    assert_eq!(net.nodes[0].score(&net.ids[0]), 0);
}

#[test]
fn below_the_threshold_a_peer_is_ignored_even_after_it_rejoins() {
    let mut net = Net::new(2, 22);
    net.converge();
    let threshold = net.cfg.score_ignore_below;
    let mut sent = 0;
    while net.nodes[0].score(&net.ids[1]) >= threshold {
        frame(&mut net, 1, 0, garbage());
        sent += 1;
        assert!(sent < 100, "score never fell below {threshold}");
    }
    let score = net.nodes[0].score(&net.ids[1]);
    let ignored = net.nodes[0].stats().ignored;
    let penalties = net.nodes[0].stats().penalties;

    // A valid ping gets no answer; a bad frame costs nothing more (it is not even decoded).
    let sent = net.nodes[0].stats().msgs_out;
    net.inject(
        1,
        0,
        Message::Ping {
            seq: 77,
            updates: vec![],
        },
    );
    assert_eq!(
        net.nodes[0].stats().msgs_out,
        sent,
        "an ignored peer got an answer"
    );
    frame(&mut net, 1, 0, garbage());
    // Reconnecting and joining again is the same node id: still ignored.
    let member = net.nodes[1].local_member();
    let record = net.nodes[1].local_signed_record();
    net.inject(1, 0, Message::Join { member, record });
    frame(
        &mut net,
        1,
        0,
        encode(&Message::Ping {
            seq: 78,
            updates: vec![],
        }),
    );

    assert_eq!(net.nodes[0].stats().ignored, ignored + 4);
    assert_eq!(net.nodes[0].stats().penalties, penalties);
    assert_eq!(
        net.nodes[0].score(&net.ids[1]),
        score,
        "score changed while ignored"
    );
}

#[test]
fn scores_recover_each_protocol_period_until_the_peer_is_heard_again() {
    // Three nodes: node 0 ignores node 1's acks, so its probes of node 1 succeed only
    // through node 2; with two nodes node 0 would slow its own clock (Lifeguard) instead.
    let mut net = Net::new(3, 23);
    net.converge();
    for _ in 0..6 {
        frame(&mut net, 1, 0, garbage()); // -120: ignored
    }
    let start = net.nodes[0].score(&net.ids[1]);
    assert_eq!(start, -120);
    let per = net.cfg.score_recovery_per_period;
    let periods = 10;
    net.run_for(periods * net.cfg.protocol_period_ms);
    let now = net.nodes[0].score(&net.ids[1]);
    let gained = (now - start) as u64;
    // One recovery per probe start; the first may be up to one period away.
    assert!(
        (periods - 1..=periods + 1).contains(&(gained / per as u64)),
        "recovered {gained} points in {periods} periods"
    );
    net.drive_until(60_000, "peer heard again", |n| {
        n.nodes[0].score(&n.ids[1]) >= n.cfg.score_ignore_below
    });
    // Heard again: a ping is answered.
    let (sent, ignored) = (net.nodes[0].stats().msgs_out, net.nodes[0].stats().ignored);
    net.inject(
        1,
        0,
        Message::Ping {
            seq: 5,
            updates: vec![],
        },
    );
    assert_eq!(
        net.nodes[0].stats().msgs_out,
        sent + 1,
        "the ping was not answered"
    );
    assert_eq!(net.nodes[0].stats().ignored, ignored);
    // Recovery stops at zero; well-behaved peers are never in credit.
    net.run_for(200 * net.cfg.protocol_period_ms);
    assert_eq!(net.nodes[0].score(&net.ids[1]), 0);
}

#[test]
fn the_join_race_is_not_penalised() {
    // A newcomer that learnt our identity before we learnt its record pulls our own record
    // and asks us to probe for it: neither is misbehaviour (a 50-node start logged
    // `peer penalized reason=non_member` for exactly these).
    let mut net = Net::new(2, 24);
    net.converge();
    let key = net.fresh_key();
    let newcomer = net.spawn(key, agentmesh_gossip::NodeRecord::new(net.ids[0]));
    let sent = net.nodes[0].stats().msgs_out;
    net.inject(
        newcomer,
        0,
        Message::Pull {
            req: 1,
            ids: vec![net.ids[0]],
        },
    );
    net.inject(
        newcomer,
        0,
        Message::PingReq {
            seq: 1,
            target: net.ids[1],
            updates: vec![],
        },
    );
    assert!(net.penalties(0, newcomer).is_empty());
    assert!(
        net.nodes[0].stats().msgs_out > sent,
        "our own record and a digest are answered"
    );
    assert_eq!(net.nodes[0].stats().early_dropped, 1);
}

#[test]
fn a_non_member_that_is_not_joining_is_penalised() {
    let mut net = Net::new(2, 24);
    net.converge();
    let key = net.fresh_key();
    let stranger = net.spawn(key, agentmesh_gossip::NodeRecord::new(net.ids[0]));
    let sent = net.nodes[0].stats().msgs_out;
    net.inject(
        stranger,
        0,
        Message::Pull {
            req: 1,
            ids: vec![net.ids[1]],
        },
    );
    net.inject(
        stranger,
        0,
        Message::Graft {
            entries: vec![(net.ids[1], Default::default())],
        },
    );
    assert_eq!(net.penalties(0, stranger), ["non_member", "non_member"]);
    assert_eq!(
        net.nodes[0].stats().msgs_out,
        sent,
        "a stranger was sent records"
    );
}
