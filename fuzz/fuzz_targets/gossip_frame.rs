//! Gossip frames: `wire::decode` must refuse any bytes with a typed error, never a panic, and
//! whatever decodes must round-trip and be safe to hand to a live state machine.

#![no_main]

use agentmesh_crypto::{Keypair, NodeId};
use agentmesh_gossip::wire::{decode, encode};
use agentmesh_gossip::{Admission, Config, Gossip, Input, NodeRecord};
use libfuzzer_sys::fuzz_target;

/// A plausible UNIX time in ms.
const NOW_MS: u64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let cfg = Config::lan(Admission::Open);
    let limit = cfg.frame_bytes_max;
    let Ok(msg) = decode(data, limit) else {
        return;
    };
    assert!(data.len() <= limit, "an oversize frame decoded");
    assert_eq!(decode(&encode(&msg), usize::MAX).as_ref(), Ok(&msg));

    // Open admission, so records that verify are accepted and go deeper into the state machine.
    let key = Keypair::from_secret([7; 32]);
    let me = key.node_id();
    let mut g = Gossip::new(cfg, key, vec![], NodeRecord::new(me), 1, NOW_MS).expect("valid node");
    let peer = NodeId([9; 32]);
    g.handle(
        Input::Frame {
            from: peer,
            bytes: data.to_vec(),
        },
        NOW_MS,
    );
    g.handle(Input::Message { from: peer, msg }, NOW_MS + 1);
    g.handle(Input::Tick, g.next_timeout().max(NOW_MS + 1));
    while g.poll_output().is_some() {}
});
