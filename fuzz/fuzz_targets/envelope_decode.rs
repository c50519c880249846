//! Decodes a generic `Signed<T>` envelope from arbitrary bytes, then verifies it in every
//! context. Also exercises the lenient `postcard::from_bytes` path that callers might use.

#![no_main]

use agentmesh_crypto::{Context, Signed};
use libfuzzer_sys::fuzz_target;

const CONTEXTS: [Context; 6] = [
    Context::NodeRecord,
    Context::AdmissionCert,
    Context::Revocation,
    Context::Vote,
    Context::AuditCheckpoint,
    Context::Policy,
];

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Signed::<Vec<u8>>::from_bytes(data) {
        assert_eq!(env.to_bytes(), data);
        let _ = env.digest();
        // A signature holds in at most one context.
        let verified = CONTEXTS.iter().filter(|c| env.verify(**c).is_ok()).count();
        assert!(verified <= 1);
    }
    if let Ok(env) = postcard::from_bytes::<Signed<String>>(data) {
        let _ = env.verify(Context::NodeRecord);
    }
});
