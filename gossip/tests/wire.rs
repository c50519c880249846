//! Wire decoding: sizes before decoding, the version byte, trailing bytes and list limits are
//! all typed errors; and the state machine penalises the sender of a bad frame.

use agentmesh_crypto::NodeId;
use agentmesh_gossip::wire::{
    decode, encode, encoded_len, IHAVE_ENTRIES_MAX, PULL_RECORDS_MAX, UPDATES_PER_MESSAGE_MAX,
    WIRE_VERSION,
};
use agentmesh_gossip::{Message, Update, Version, WireError};

const LIMIT: usize = 64 * 1024;

fn suspect(i: usize) -> Update {
    Update::Suspect {
        node: NodeId([i as u8; 32]),
        incarnation: i as u64,
        from: NodeId([1; 32]),
    }
}

fn entries(n: usize) -> Vec<(NodeId, Version)> {
    (0..n)
        .map(|i| {
            (
                NodeId([i as u8; 32]),
                Version {
                    incarnation: 1,
                    seq: i as u64,
                },
            )
        })
        .collect()
}

fn ids(n: usize) -> Vec<NodeId> {
    (0..n).map(|i| NodeId([i as u8; 32])).collect()
}

#[test]
fn frame_level_errors_are_typed() {
    let ping = encode(&Message::Ping {
        seq: 1,
        updates: vec![],
    });
    let mut trailing = ping.clone();
    trailing.push(0);
    let mut wrong_version = ping.clone();
    wrong_version[0] = WIRE_VERSION + 1;
    let huge = vec![0xffu8; LIMIT + 1];
    // (case, bytes, expected)
    let cases: Vec<(&str, Vec<u8>, Result<(), WireError>)> = vec![
        ("valid", ping.clone(), Ok(())),
        ("empty", vec![], Err(WireError::Empty)),
        (
            "wrong version",
            wrong_version,
            Err(WireError::Version(WIRE_VERSION + 1)),
        ),
        // Garbage over the limit is refused as oversize: nothing was decoded.
        (
            "oversize",
            huge,
            Err(WireError::Oversize {
                len: LIMIT + 1,
                limit: LIMIT,
            }),
        ),
        (
            "version only",
            vec![WIRE_VERSION],
            Err(WireError::Decode(String::new())),
        ),
        (
            "trailing byte",
            trailing,
            Err(WireError::Decode(String::new())),
        ),
        (
            "unknown variant",
            vec![WIRE_VERSION, 200],
            Err(WireError::Decode(String::new())),
        ),
    ];
    for (what, bytes, want) in cases {
        let got = decode(&bytes, LIMIT).map(|_| ());
        match (&got, &want) {
            (Err(WireError::Decode(_)), Err(WireError::Decode(_))) => {}
            _ => assert_eq!(got, want, "{what}"),
        }
    }
    // The size limit is the caller's: the same valid frame is oversize under a tiny limit.
    assert_eq!(
        decode(&ping, 2),
        Err(WireError::Oversize {
            len: ping.len(),
            limit: 2
        })
    );
    assert_eq!(encoded_len(&Message::Prune), encode(&Message::Prune).len());
}

#[test]
fn list_limits_are_enforced_exactly_at_the_boundary() {
    // (message at the limit, the same one over it, kind)
    let cases: Vec<(Message, Message, &str)> = vec![
        (
            Message::Gossip {
                updates: (0..UPDATES_PER_MESSAGE_MAX).map(suspect).collect(),
            },
            Message::Gossip {
                updates: (0..=UPDATES_PER_MESSAGE_MAX).map(suspect).collect(),
            },
            "gossip",
        ),
        (
            Message::Ping {
                seq: 1,
                updates: (0..UPDATES_PER_MESSAGE_MAX).map(suspect).collect(),
            },
            Message::Ping {
                seq: 1,
                updates: (0..=UPDATES_PER_MESSAGE_MAX).map(suspect).collect(),
            },
            "ping",
        ),
        (
            Message::IHave {
                entries: entries(IHAVE_ENTRIES_MAX),
            },
            Message::IHave {
                entries: entries(IHAVE_ENTRIES_MAX + 1),
            },
            "ihave",
        ),
        (
            Message::Graft {
                entries: entries(IHAVE_ENTRIES_MAX),
            },
            Message::Graft {
                entries: entries(IHAVE_ENTRIES_MAX + 1),
            },
            "graft",
        ),
        (
            Message::Pull {
                req: 1,
                ids: ids(PULL_RECORDS_MAX),
            },
            Message::Pull {
                req: 1,
                ids: ids(PULL_RECORDS_MAX + 1),
            },
            "pull",
        ),
    ];
    for (at, over, kind) in cases {
        assert_eq!(decode(&encode(&at), LIMIT), Ok(at), "{kind} at the limit");
        assert_eq!(
            decode(&encode(&over), LIMIT),
            Err(WireError::Limit(kind)),
            "{kind} over"
        );
    }
}
