//! Decodes a `SignedCert` from arbitrary bytes and verifies it against a fixed root.
//! Nothing may panic; anything that verifies must be a certificate the root really signed.

#![no_main]

use agentmesh_crypto::{Keypair, SignedCert};
use libfuzzer_sys::fuzz_target;

/// Fixed clock: within the validity window of most certificates a fuzzer could build.
const NOW_UNIX_S: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    // The mesh root of the test vectors (secret seed = 32 bytes of 0x01).
    let root = Keypair::from_secret([1; 32]).node_id();
    let Ok(cert) = SignedCert::from_bytes(data) else {
        return;
    };
    // Re-encoding a decoded value gives back exactly the input: one value, one encoding.
    assert_eq!(cert.to_bytes(), data);
    if let Ok(claimed) = cert.claimed() {
        if let Ok(verified) = cert.verify(&root, &claimed.mesh_id, &claimed.node_id, NOW_UNIX_S) {
            // Only the root can produce this; the fuzzer cannot forge it.
            assert_eq!(cert.0.signer, root);
            assert_eq!(verified, claimed);
        }
    }
});
