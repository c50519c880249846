//! Root-signed policies spread by gossip: `verify_policy` must refuse any bytes with an error,
//! never panic, and never accept a policy the root did not sign.

#![no_main]

use agentmesh_crypto::Keypair;
use agentmesh_node::security::verify_policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = Keypair::from_secret([1; 32]).node_id();
    assert!(
        verify_policy(data, &root, "m").is_err(),
        "a fuzzed policy verified against a root whose key the fuzzer lacks"
    );
});
