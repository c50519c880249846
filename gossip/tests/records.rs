//! The record plane: updates propagate, versions only move forward, only the origin may sign
//! its record, and only admitted nodes become visible.

mod util;

use agentmesh_crypto::{Keypair, Signed};
use agentmesh_gossip::record::RECORD_CONTEXT;
use agentmesh_gossip::state::RecordUpdate;
use agentmesh_gossip::{
    AgentInfo, Capability, Event, Input, Message, NodeRecord, SignedRecord, Version,
};
use std::sync::Arc;
use util::{cert_signed_by, valid_window, Net, MESH_ID};

fn agent(name: &str) -> AgentInfo {
    AgentInfo {
        name: name.to_string(),
        capabilities: vec![Capability {
            name: "inventory.query".into(),
            proficiency: Default::default(),
            attributes: Default::default(),
            cost: 1.0,
            ..Default::default()
        }],
    }
}

fn update_agent(net: &mut Net, i: usize, name: &str) {
    net.input(i, Input::Update(RecordUpdate::Agent(Some(agent(name)))));
}

/// Node `i`'s record, re-signed by `signer` with `edit` applied.
fn forged(
    net: &Net,
    i: usize,
    signer: &Keypair,
    edit: impl FnOnce(&mut NodeRecord),
) -> Arc<SignedRecord> {
    let mut rec = net.nodes[i].local_record().clone();
    edit(&mut rec);
    Arc::new(Signed::sign(signer, RECORD_CONTEXT, &rec))
}

/// A change to a record before it is (re)signed.
type Edit = Box<dyn Fn(&mut NodeRecord)>;

fn everyone_holds(net: &Net, origin: usize, v: Version) -> bool {
    net.live()
        .into_iter()
        .filter(|&i| i != origin)
        .all(|i| net.nodes[i].record_version(&net.ids[origin]) == Some(v))
}

#[test]
fn a_record_update_reaches_every_node_quickly() {
    let mut net = Net::new(5, 11);
    net.converge();
    let before = net.nodes[2].local_record().version();
    update_agent(&mut net, 2, "renamed");
    let v = net.nodes[2].local_record().version();
    assert_eq!(v.incarnation, before.incarnation);
    assert_eq!(v.seq, before.seq + 1, "an update bumps seq");
    // Plumtree eager push: a few 5 ms hops, well under one anti-entropy interval.
    let took = net.drive_until(1_000, "update everywhere", |n| everyone_holds(n, 2, v));
    assert!(took <= 100, "propagation took {took} ms");
    for i in [0, 1, 3, 4] {
        let rec = net.nodes[i].record(&net.ids[2]).unwrap();
        assert_eq!(rec.agent.as_ref().unwrap().name, "renamed");
        assert!(
            net.saw(i, &Event::Updated(net.ids[2])),
            "node {i}: Updated event"
        );
    }
}

#[test]
fn equal_or_older_records_never_replace_newer_and_replays_change_nothing() {
    let mut net = Net::new(3, 12);
    net.converge();
    let old = net.nodes[2].local_signed_record();
    update_agent(&mut net, 2, "v2");
    let newest = net.nodes[2].local_signed_record();
    let v = net.nodes[2].local_record().version();
    net.drive_until(1_000, "v2 everywhere", |n| everyone_holds(n, 2, v));

    // (what is replayed, by whom)
    let cases: [(&str, Arc<SignedRecord>); 2] = [("older", old), ("equal", newest)];
    for (what, rec) in cases {
        for msg in [
            Message::Record {
                record: rec.clone(),
            },
            Message::PullResp {
                req: 999,
                records: vec![rec.clone()],
            },
        ] {
            let events_before = net.events[0].len();
            let new_before = net.nodes[0].stats().records_new;
            net.inject(1, 0, msg);
            assert_eq!(
                net.nodes[0].record_version(&net.ids[2]),
                Some(v),
                "{what} replay"
            );
            assert_eq!(
                net.nodes[0]
                    .record(&net.ids[2])
                    .unwrap()
                    .agent
                    .as_ref()
                    .unwrap()
                    .name,
                "v2"
            );
            assert_eq!(
                net.nodes[0].stats().records_new,
                new_before,
                "{what}: counted as new"
            );
            let evs = &net.events[0][events_before..];
            assert!(evs.is_empty(), "{what} replay emitted {evs:?}");
            // An honest relay repeating a valid record is not punished.
            assert_eq!(
                net.nodes[0].score(&net.ids[1]),
                0,
                "{what} replay penalised"
            );
        }
    }
}

#[test]
fn a_higher_seq_signed_by_its_origin_replaces_and_an_older_incarnation_does_not() {
    let mut net = Net::new(3, 13);
    net.converge();
    let key = net.keys[2].clone();
    let v = net.nodes[2].local_record().version();
    // Table: (edit, accepted?)
    let cases: [(&str, Edit, bool); 3] = [
        (
            "older incarnation, huge seq",
            Box::new(move |r| {
                r.incarnation = v.incarnation - 1;
                r.seq = u64::MAX
            }),
            false,
        ),
        (
            "same version, other content",
            Box::new(|r| r.max_concurrency = 7),
            false,
        ),
        ("next seq", Box::new(|r| r.seq += 1), true),
    ];
    for (what, edit, accepted) in cases {
        let rec = forged(&net, 2, &key, edit);
        net.inject(
            1,
            0,
            Message::Record {
                record: rec.clone(),
            },
        );
        let held = net.nodes[0].record_version(&net.ids[2]).unwrap();
        let want = if accepted {
            rec.decode_unverified().unwrap().version()
        } else {
            v
        };
        assert_eq!(held, want, "{what}");
    }
}

#[test]
fn a_record_about_a_signed_by_b_is_rejected_and_b_loses_score() {
    let mut net = Net::new(3, 14);
    net.converge();
    let v = net.nodes[2].local_record().version();
    let b_key = net.keys[1].clone();
    // Node 1 signs a "newer" record claiming to be node 2's.
    let rec = forged(&net, 2, &b_key, |r| {
        r.seq += 5;
        r.agent = Some(agent("hijacked"))
    });
    net.inject(1, 0, Message::Record { record: rec });
    assert_eq!(
        net.nodes[0].record_version(&net.ids[2]),
        Some(v),
        "foreign record accepted"
    );
    assert_ne!(
        net.nodes[0]
            .record(&net.ids[2])
            .unwrap()
            .agent
            .as_ref()
            .unwrap()
            .name,
        "hijacked"
    );
    assert!(net.nodes[0].score(&net.ids[1]) < 0);
    assert_eq!(net.penalties(0, 1), ["foreign_record"]);
    // Node 1's own record is untouched: the forgery is not mistaken for node 1's record.
    assert_eq!(
        net.nodes[0].record_version(&net.ids[1]),
        Some(net.nodes[1].local_record().version())
    );
}

#[test]
fn a_bit_flipped_record_is_rejected_and_penalised() {
    let mut net = Net::new(3, 15);
    net.converge();
    let v = net.nodes[2].local_record().version();
    let key = net.keys[2].clone();
    let good = forged(&net, 2, &key, |r| r.seq += 1);
    // Flip one bit in the payload, then (separately) one in the signature.
    for (what, flip) in [("payload", 0usize), ("signature", 1)] {
        let mut bad = (*good).clone();
        if flip == 0 {
            let last = bad.payload.len() - 1;
            bad.payload[last] ^= 0x01;
        } else {
            bad.signature.0[10] ^= 0x80;
        }
        let score_before = net.nodes[0].score(&net.ids[1]);
        net.inject(
            1,
            0,
            Message::Record {
                record: Arc::new(bad),
            },
        );
        assert_eq!(
            net.nodes[0].record_version(&net.ids[2]),
            Some(v),
            "{what} flip accepted"
        );
        assert!(
            net.nodes[0].score(&net.ids[1]) < score_before,
            "{what}: no penalty"
        );
    }
    assert_eq!(net.penalties(0, 1), ["bad_signature", "bad_signature"]);
    // The genuine record still goes through afterwards.
    net.inject(2, 0, Message::Record { record: good });
    assert_eq!(
        net.nodes[0].record_version(&net.ids[2]).unwrap().seq,
        v.seq + 1
    );
}

#[test]
fn a_node_without_a_valid_certificate_never_becomes_visible() {
    let (nb, na) = valid_window();
    let now_s = util::START_MS / 1000;
    // (case, cert for the newcomer given the harness root and its id)
    type MakeCert = fn(
        &Net,
        &Keypair,
        &agentmesh_crypto::NodeId,
        u64,
        u64,
        u64,
    ) -> Option<agentmesh_crypto::SignedCert>;
    let cases: [(&str, MakeCert); 6] = [
        ("no certificate", |_, _, _, _, _, _| None),
        ("wrong root", |_, other, id, nb, na, _| {
            Some(cert_signed_by(other, MESH_ID, id, nb, na))
        }),
        ("expired", |net, _, id, _, _, now| {
            Some(net.cert(id, now - 7200, now - 1))
        }),
        ("not yet valid", |net, _, id, _, _, now| {
            Some(net.cert(id, now + 60, now + 7200))
        }),
        ("other mesh", |net, _, id, nb, na, _| {
            Some(cert_signed_by(&net.root, "other-mesh", id, nb, na))
        }),
        ("issued to someone else", |net, other, _, nb, na, _| {
            Some(net.cert(&other.node_id(), nb, na))
        }),
    ];
    for (what, make) in cases {
        let mut net = Net::new(3, 16);
        net.converge();
        let key = net.fresh_key();
        let other = net.fresh_key();
        let mut rec = NodeRecord::new(key.node_id());
        rec.cert = make(&net, &other, &key.node_id(), nb, na, now_s);
        let x = net.spawn(key, rec);
        net.join(x, 0);
        net.run_for(10_000);
        for i in 0..3 {
            assert_eq!(
                net.nodes[i].state_of(&net.ids[x]),
                None,
                "{what}: node {i} admitted it"
            );
            assert!(
                net.nodes[i].record(&net.ids[x]).is_none(),
                "{what}: node {i} holds its record"
            );
            assert!(!net.saw(i, &Event::Joined(net.ids[x])), "{what}: node {i}");
        }
        assert!(
            net.nodes[0].score(&net.ids[x]) < 0,
            "{what}: seed did not penalise"
        );
        assert_eq!(
            net.penalties(0, x).first().map(String::as_str),
            Some("unadmitted"),
            "{what}"
        );
        net.stopped.insert(x);
        assert!(net.converged(), "{what}: the admitted nodes were disturbed");
    }
}

#[test]
fn a_late_joiner_catches_up_on_records_changed_before_it_came() {
    let mut net = Net::new(4, 17);
    // Nodes 0..3 form a mesh and change records; node 3 joins afterwards.
    for i in 1..3 {
        net.join(i, 0);
    }
    net.drive_until(5_000, "first three converge", |n| {
        (0..3).all(|i| {
            (0..3).filter(|&j| j != i).all(|j| {
                n.nodes[i].record_version(&n.ids[j]) == Some(n.nodes[j].local_record().version())
            })
        })
    });
    update_agent(&mut net, 1, "changed-early");
    net.run_for(1_000);
    net.join(3, 0);
    net.drive_until(5_000, "late joiner converged", |n| n.converged());
    let rec = net.nodes[3].record(&net.ids[1]).unwrap();
    assert_eq!(rec.agent.as_ref().unwrap().name, "changed-early");
}
