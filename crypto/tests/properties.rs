//! Property tests for every decoder and verifier in the crate.

use agentmesh_crypto::{
    AdmissionCert, Context, CryptoError, Keypair, NodeId, Revocation, Signed, SignedCert,
    SignedRevocation,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// A structured payload with variable-length fields, so encodings have inner length prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    name: String,
    count: u64,
    blob: Vec<u8>,
    flag: Option<bool>,
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        ".{0,24}",
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<Option<bool>>(),
    )
        .prop_map(|(name, count, blob, flag)| Sample {
            name,
            count,
            blob,
            flag,
        })
}

fn context() -> impl Strategy<Value = Context> {
    prop::sample::select(vec![
        Context::NodeRecord,
        Context::AdmissionCert,
        Context::Revocation,
        Context::Vote,
        Context::AuditCheckpoint,
        Context::AuditGenesis,
        Context::Policy,
        Context::Custom("prop"),
    ])
}

fn root_id() -> NodeId {
    Keypair::from_secret([1; 32]).node_id()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn signed_round_trips_through_postcard(seed in any::<[u8; 32]>(), ctx in context(), value in sample()) {
        let key = Keypair::from_secret(seed);
        let env = Signed::sign(&key, ctx, &value);
        let bytes = postcard::to_allocvec(&env).unwrap();
        prop_assert_eq!(&bytes, &env.to_bytes());
        let back: Signed<Sample> = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, &env);
        let strict = Signed::<Sample>::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&strict, &env);
        prop_assert_eq!(back.verify(ctx).unwrap(), value.clone());
        prop_assert_eq!(back.verify_by(&key.node_id(), ctx).unwrap(), value);
    }

    #[test]
    fn any_single_bit_flip_fails_to_decode_or_to_verify(
        seed in any::<[u8; 32]>(),
        ctx in context(),
        value in sample(),
        bit in any::<prop::sample::Index>(),
    ) {
        let env = Signed::sign(&Keypair::from_secret(seed), ctx, &value);
        let mut bytes = env.to_bytes();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        // The lenient decoder (trailing bytes allowed) and the strict one must both hold.
        if let Ok(t) = postcard::from_bytes::<Signed<Sample>>(&bytes) {
            prop_assert!(t.verify(ctx).is_err(), "bit {} verified after flip", bit);
        }
        if let Ok(t) = Signed::<Sample>::from_bytes(&bytes) {
            prop_assert!(t.verify(ctx).is_err(), "bit {} verified after flip", bit);
        }
    }

    #[test]
    fn cert_bit_flips_never_verify(bit in any::<prop::sample::Index>()) {
        let root = Keypair::from_secret([1; 32]);
        let node = Keypair::from_secret([2; 32]).node_id();
        let cert = AdmissionCert {
            mesh_id: "m".into(),
            node_id: node,
            roles: vec!["a".into()],
            not_before: 0,
            not_after: 10,
        }
        .sign(&root)
        .unwrap();
        let mut bytes = cert.to_bytes();
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        if let Ok(t) = SignedCert::from_bytes(&bytes) {
            prop_assert!(t.verify(&root.node_id(), "m", &node, 5).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_cert_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(c) = postcard::from_bytes::<SignedCert>(&bytes) {
            let _ = c.claimed();
            let _ = c.verify(&root_id(), "m", &root_id(), 0);
        }
        if let Ok(c) = SignedCert::from_bytes(&bytes) {
            prop_assert_eq!(c.to_bytes(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_revocation_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = postcard::from_bytes::<SignedRevocation>(&bytes) {
            let _ = r.verify(&root_id(), "m");
        }
        if let Ok(r) = SignedRevocation::from_bytes(&bytes) {
            prop_assert_eq!(r.to_bytes(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(e) = postcard::from_bytes::<Signed<Vec<u8>>>(&bytes) {
            let _ = e.verify(Context::NodeRecord);
            let _ = e.digest();
        }
        if let Ok(e) = Signed::<Vec<u8>>::from_bytes(&bytes) {
            prop_assert_eq!(e.to_bytes(), bytes);
        }
    }

    /// Random bytes rarely get past the first field, so also mutate valid encodings.
    #[test]
    fn mutated_valid_encodings_never_panic(
        cut in any::<prop::sample::Index>(),
        noise in prop::collection::vec(any::<u8>(), 0..16),
        at in any::<prop::sample::Index>(),
    ) {
        let root = Keypair::from_secret([1; 32]);
        let rev = Revocation {
            mesh_id: "m".into(),
            node_id: root.node_id(),
            issued_at: 3,
            reason: "r".into(),
        }
        .sign(&root);
        let mut bytes = rev.to_bytes();
        let at = at.index(bytes.len());
        bytes.splice(at..at, noise);
        bytes.truncate(cut.index(bytes.len() + 1));
        if let Ok(r) = SignedRevocation::from_bytes(&bytes) {
            let _ = r.verify(&root.node_id(), "m");
        }
        if let Ok(c) = SignedCert::from_bytes(&bytes) {
            let _ = c.verify(&root.node_id(), "m", &root.node_id(), 0);
        }
    }

    #[test]
    fn signatures_never_cross_contexts(seed in any::<[u8; 32]>(), a in context(), b in context(), msg in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(a != b);
        let key = Keypair::from_secret(seed);
        let sig = key.sign(a, &msg);
        prop_assert_eq!(key.node_id().verify(a, &msg, &sig), Ok(()));
        prop_assert_eq!(key.node_id().verify(b, &msg, &sig), Err(CryptoError::BadSignature));
    }

    #[test]
    fn node_id_text_matches_libp2p_and_round_trips(seed in any::<[u8; 32]>()) {
        let key = Keypair::from_secret(seed);
        let id = key.node_id();
        let text = id.to_string();
        prop_assert_eq!(&text, &key.to_libp2p().public().to_peer_id().to_string());
        prop_assert_eq!(NodeId::from_str(&text).unwrap(), id);
    }
}
