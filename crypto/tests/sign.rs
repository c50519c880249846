//! Domain-separated signing, strict verification and signed envelopes.

use agentmesh_crypto::{domain_message, Context, CryptoError, Keypair, NodeId, Signature, Signed};
use ed25519_dalek::Verifier;

const BUILT_IN: [Context; 7] = [
    Context::NodeRecord,
    Context::AdmissionCert,
    Context::Revocation,
    Context::Vote,
    Context::AuditCheckpoint,
    Context::AuditGenesis,
    Context::Policy,
];

/// The identity point of edwards25519 (order 1), compressed.
const IDENTITY_POINT: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 1;
    b
};

/// The point (0, -1) of order 2: y = p - 1, compressed.
const ORDER_TWO_POINT: [u8; 32] = {
    let mut b = [0xff; 32];
    b[0] = 0xec;
    b[31] = 0x7f;
    b
};

/// The group order L of the ed25519 base point, little-endian.
const GROUP_ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn key(seed: u8) -> Keypair {
    Keypair::from_secret([seed; 32])
}

/// Returns the signature with S replaced by S + L: the same value mod L (a lax verifier's
/// arithmetic is unchanged) but a non-canonical encoding that `verify_strict` must refuse.
fn with_s_plus_l(sig: &Signature) -> Signature {
    let mut out = sig.0;
    let mut carry = 0u16;
    for (i, l) in GROUP_ORDER_L.iter().enumerate() {
        let sum = u16::from(out[32 + i]) + u16::from(*l) + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L < 2^253 always fits in 32 bytes");
    Signature(out)
}

#[test]
fn domain_message_is_prefix_label_nul_message() {
    assert_eq!(
        domain_message(Context::NodeRecord, b"abc"),
        b"agentmesh/v1/node-record\0abc".to_vec()
    );
    assert_eq!(
        domain_message(Context::AuditCheckpoint, b""),
        b"agentmesh/v1/audit-checkpoint\0".to_vec()
    );
    assert_eq!(
        domain_message(Context::Custom("test"), b"x"),
        b"agentmesh/v1/custom/test\0x".to_vec()
    );
}

#[test]
fn built_in_labels_are_distinct_and_have_no_separator() {
    for (i, a) in BUILT_IN.iter().enumerate() {
        assert!(!a.label().contains('/') && !a.label().contains('\0'));
        for b in &BUILT_IN[i + 1..] {
            assert_ne!(a.label(), b.label());
        }
    }
}

#[test]
fn a_signature_verifies_only_in_its_own_context() {
    let kp = key(1);
    let id = kp.node_id();
    let msg = b"the same bytes in every context";
    let contexts: Vec<Context> = BUILT_IN
        .iter()
        .copied()
        .chain([Context::Custom("ext-a"), Context::Custom("ext-b")])
        .collect();
    for signed_in in &contexts {
        let sig = kp.sign(*signed_in, msg);
        for checked_in in &contexts {
            let verdict = id.verify(*checked_in, msg, &sig);
            if signed_in == checked_in {
                assert_eq!(verdict, Ok(()), "{signed_in:?}");
            } else {
                assert_eq!(
                    verdict,
                    Err(CryptoError::BadSignature),
                    "signed in {signed_in:?}, checked in {checked_in:?}"
                );
            }
        }
    }
}

#[test]
fn a_custom_context_cannot_impersonate_a_built_in_one() {
    let kp = key(2);
    for ctx in BUILT_IN {
        let forged = kp.sign(Context::Custom(ctx.label()), b"m");
        assert_eq!(
            kp.node_id().verify(ctx, b"m", &forged),
            Err(CryptoError::BadSignature),
            "Custom({:?}) must not sign as {ctx:?}",
            ctx.label()
        );
    }
}

#[test]
#[should_panic(expected = "NUL")]
fn a_custom_label_with_nul_is_a_programming_error() {
    let _ = domain_message(Context::Custom("a\0b"), b"");
}

#[test]
fn signature_is_plain_ed25519_over_the_domain_message() {
    // Another implementation only needs the prefix rule and standard ed25519.
    let kp = key(3);
    let sig = kp.sign(Context::Vote, b"ballot");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(kp.node_id().as_bytes()).unwrap();
    let dalek_sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify_strict(&domain_message(Context::Vote, b"ballot"), &dalek_sig)
        .unwrap();
    assert!(vk.verify_strict(b"ballot", &dalek_sig).is_err());
}

#[test]
fn any_changed_message_byte_fails() {
    let kp = key(4);
    let msg = b"0123456789".to_vec();
    let sig = kp.sign(Context::Policy, &msg);
    for i in 0..msg.len() * 8 {
        let mut m = msg.clone();
        m[i / 8] ^= 1 << (i % 8);
        assert_eq!(
            kp.node_id().verify(Context::Policy, &m, &sig),
            Err(CryptoError::BadSignature)
        );
    }
    let mut longer = msg.clone();
    longer.push(0);
    assert!(kp.node_id().verify(Context::Policy, &longer, &sig).is_err());
    assert!(kp
        .node_id()
        .verify(Context::Policy, &msg[..9], &sig)
        .is_err());
}

#[test]
fn weak_keys_are_refused_even_where_lax_verification_accepts() {
    // With A = identity, R = identity and S = 0, the lax equation [S]B = R + [k]A holds for
    // every message. Plain `verify` accepts it; we must not.
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&IDENTITY_POINT);
    let sig = Signature(forged);
    let msg = domain_message(Context::AdmissionCert, b"anything at all");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&IDENTITY_POINT).unwrap();
    assert!(
        vk.verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
            .is_ok(),
        "premise: lax verification accepts the forgery"
    );
    let weak = NodeId(IDENTITY_POINT);
    assert_eq!(
        weak.verify(Context::AdmissionCert, b"anything at all", &sig),
        Err(CryptoError::WeakKey)
    );
    let env: Signed<Vec<u8>> = Signed::from_parts(weak, b"anything".to_vec(), sig);
    assert_eq!(
        env.verify(Context::AdmissionCert),
        Err(CryptoError::WeakKey)
    );
}

#[test]
fn every_small_order_key_is_refused() {
    for point in [IDENTITY_POINT, ORDER_TWO_POINT] {
        let sig = key(5).sign(Context::Vote, b"m");
        assert_eq!(
            NodeId(point).verify(Context::Vote, b"m", &sig),
            Err(CryptoError::WeakKey),
            "{}",
            hex::encode(point)
        );
    }
}

#[test]
fn bytes_off_the_curve_are_an_invalid_key() {
    let bad = (2u8..=255)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .unwrap();
    let sig = key(5).sign(Context::Vote, b"m");
    assert_eq!(
        NodeId(bad).verify(Context::Vote, b"m", &sig),
        Err(CryptoError::InvalidPublicKey)
    );
}

#[test]
fn non_canonical_s_is_refused() {
    let kp = key(6);
    let sig = kp.sign(Context::NodeRecord, b"record");
    kp.node_id()
        .verify(Context::NodeRecord, b"record", &sig)
        .unwrap();
    let malleated = with_s_plus_l(&sig);
    assert_ne!(malleated, sig);
    assert!(
        malleated.0[63] < 0x20,
        "still below 2^253: only the L check catches it"
    );
    assert_eq!(
        kp.node_id()
            .verify(Context::NodeRecord, b"record", &malleated),
        Err(CryptoError::BadSignature)
    );
}

fn sample_envelope() -> Signed<Vec<u8>> {
    Signed::sign(&key(7), Context::NodeRecord, &b"payload bytes".to_vec())
}

#[test]
fn envelope_verifies_and_decodes() {
    let env = sample_envelope();
    assert_eq!(env.signer, key(7).node_id());
    assert_eq!(
        env.verify(Context::NodeRecord).unwrap(),
        b"payload bytes".to_vec()
    );
    assert_eq!(
        env.verify_by(&key(7).node_id(), Context::NodeRecord)
            .unwrap(),
        b"payload bytes".to_vec()
    );
    assert_eq!(
        env.verify_by(&key(8).node_id(), Context::NodeRecord),
        Err(CryptoError::BadSignature)
    );
    assert_eq!(env.verify(Context::Vote), Err(CryptoError::BadSignature));
}

#[test]
fn envelope_payload_bit_flips_fail() {
    let env = sample_envelope();
    for bit in 0..env.payload.len() * 8 {
        let mut t = env.clone();
        t.payload[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            t.verify(Context::NodeRecord),
            Err(CryptoError::BadSignature),
            "bit {bit}"
        );
    }
}

#[test]
fn envelope_signature_bit_flips_fail() {
    let env = sample_envelope();
    for bit in 0..64 * 8 {
        let mut t = env.clone();
        t.signature.0[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            t.verify(Context::NodeRecord),
            Err(CryptoError::BadSignature),
            "bit {bit}"
        );
    }
}

#[test]
fn envelope_signer_bit_flips_fail() {
    let env = sample_envelope();
    for bit in 0..32 * 8 {
        let mut t = env.clone();
        t.signer.0[bit / 8] ^= 1 << (bit % 8);
        let verdict = t.verify(Context::NodeRecord);
        assert!(
            matches!(
                verdict,
                Err(CryptoError::BadSignature
                    | CryptoError::InvalidPublicKey
                    | CryptoError::WeakKey)
            ),
            "bit {bit}: {verdict:?}"
        );
    }
}

#[test]
fn envelope_signer_swap_fails() {
    let mut env = sample_envelope();
    env.signer = key(8).node_id();
    assert_eq!(
        env.verify(Context::NodeRecord),
        Err(CryptoError::BadSignature)
    );
}

#[test]
fn envelope_digest_tracks_every_field() {
    let env = sample_envelope();
    assert_eq!(env.digest(), env.clone().digest());
    let mut a = env.clone();
    a.payload.push(0);
    let mut b = env.clone();
    b.signature.0[0] ^= 1;
    let mut c = env.clone();
    c.signer = key(8).node_id();
    for other in [a, b, c] {
        assert_ne!(other.digest(), env.digest());
    }
}

#[test]
fn envelope_bytes_round_trip_and_refuse_trailing_bytes() {
    let env = sample_envelope();
    let bytes = env.to_bytes();
    let back = Signed::<Vec<u8>>::from_bytes(&bytes).unwrap();
    assert_eq!(back, env);
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Signed::<Vec<u8>>::from_bytes(&longer),
        Err(CryptoError::Decode(_))
    ));
    assert!(Signed::<Vec<u8>>::from_bytes(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn envelope_from_bytes_checks_size_first() {
    let limit = agentmesh_crypto::envelope::ENVELOPE_LEN_MAX;
    let big = vec![0u8; limit + 1];
    assert_eq!(
        Signed::<Vec<u8>>::from_bytes(&big),
        Err(CryptoError::TooLarge {
            len: limit + 1,
            limit
        })
    );
}

#[test]
fn payload_with_trailing_bytes_is_refused_even_if_signed() {
    // The signer appended a byte after the value: one value must have one encoding.
    let kp = key(9);
    let mut payload = postcard::to_allocvec(&42u64).unwrap();
    payload.push(0);
    let sig = kp.sign(Context::Vote, &payload);
    let env: Signed<u64> = Signed::from_parts(kp.node_id(), payload, sig);
    assert!(matches!(
        env.verify(Context::Vote),
        Err(CryptoError::Decode(_))
    ));
}

#[test]
fn envelope_decodes_only_after_the_signature_holds() {
    // An undecodable payload with a bad signature reports the signature, not the decoding.
    let env: Signed<String> =
        Signed::from_parts(key(9).node_id(), vec![0xff; 8], Signature([0; 64]));
    assert_eq!(env.verify(Context::Vote), Err(CryptoError::BadSignature));
}

#[test]
fn over_long_length_prefixes_are_refused() {
    // postcard itself reads `len | 0x80, 0x00` as `len`; our decoder must not, or a relay
    // could mint new wire bytes for the same envelope.
    let env = sample_envelope();
    let bytes = env.to_bytes();
    let len = env.payload.len();
    assert!(len < 0x80);
    assert_eq!(
        bytes[32] as usize, len,
        "payload length follows the 32 signer bytes"
    );
    let mut stretched = bytes[..32].to_vec();
    stretched.extend_from_slice(&[len as u8 | 0x80, 0x00]);
    stretched.extend_from_slice(&bytes[33..]);
    let lenient: Signed<Vec<u8>> = postcard::from_bytes(&stretched).unwrap();
    assert_eq!(
        lenient, env,
        "premise: postcard accepts the over-long varint"
    );
    assert_eq!(
        Signed::<Vec<u8>>::from_bytes(&stretched),
        Err(CryptoError::Decode("non-canonical encoding".to_string()))
    );
}
