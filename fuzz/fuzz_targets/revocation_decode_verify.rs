//! Decodes a `SignedRevocation` from arbitrary bytes and verifies it against a fixed root.

#![no_main]

use agentmesh_crypto::{Keypair, SignedRevocation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The mesh root of the test vectors (secret seed = 32 bytes of 0x01).
    let root = Keypair::from_secret([1; 32]).node_id();
    let Ok(rev) = SignedRevocation::from_bytes(data) else {
        return;
    };
    assert_eq!(rev.to_bytes(), data);
    let mesh_id = rev
        .0
        .decode_unverified()
        .map(|r| r.mesh_id)
        .unwrap_or_default();
    if let Ok(verified) = rev.verify(&root, &mesh_id) {
        assert_eq!(rev.0.signer, root);
        assert_eq!(verified.mesh_id, mesh_id);
    }
});
