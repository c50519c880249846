//! `/agentmesh/admit/1` frames: a hello and a verdict must decode or be refused with a typed
//! error, never panic; a decoded hello is judged by an enforcing table without panicking, and
//! only a certificate signed by the table's root can admit.

#![no_main]

use agentmesh_crypto::Keypair;
use agentmesh_node::security::admission::{decode_hello, decode_verdict, AdmissionMode, AdmissionTable};
use libfuzzer_sys::fuzz_target;

const NOW_S: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let _ = decode_verdict(data);
    let Ok(hello) = decode_hello(data) else {
        return;
    };
    let root = Keypair::from_secret([1; 32]);
    let table = AdmissionTable::new(AdmissionMode::Enforced {
        root: root.node_id(),
        mesh_id: "m".into(),
    });
    let presenter = Keypair::from_secret([2; 32]).node_id();
    if table.verify(&hello, &presenter, NOW_S).is_ok() {
        // The fuzzer cannot forge the root's signature: an admission means a real bug.
        panic!("a fuzzed hello was admitted");
    }
});
