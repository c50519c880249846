//! Node identities: a `NodeId` is exactly the libp2p `PeerId` of the same ed25519 key.

use agentmesh_crypto::{CryptoError, Keypair, NodeId, ParseNodeIdError};
use ed25519_dalek::VerifyingKey;
use proptest::prelude::*;
use std::str::FromStr;

fn key(seed: u8) -> Keypair {
    Keypair::from_secret([seed; 32])
}

/// The first 32-byte string (y = 2, 3, ...) that does not decode as an ed25519 point.
fn not_a_point() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| VerifyingKey::from_bytes(b).is_err())
        .expect("some small y is off the curve")
}

/// Wraps 32 key bytes as the identity-multihash peer id libp2p uses for ed25519 keys.
fn ed25519_peer_id_bytes(key: &[u8; 32]) -> Vec<u8> {
    let mut b = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    b.extend_from_slice(key);
    b
}

#[test]
fn node_id_prints_as_the_libp2p_peer_id_of_the_same_key() {
    for seed in [0u8, 1, 7, 42, 255] {
        let kp = key(seed);
        let libp2p_peer = kp.to_libp2p().public().to_peer_id();
        let id = kp.node_id();
        assert_eq!(id.to_string(), libp2p_peer.to_string(), "seed {seed}");
        assert_eq!(id.to_peer_id().unwrap(), libp2p_peer);
        assert!(
            id.to_string().starts_with("12D3KooW"),
            "ed25519 peer ids start 12D3KooW"
        );
    }
}

#[test]
fn node_id_matches_a_libp2p_key_built_independently() {
    // Build the libp2p key from the secret directly, not through Keypair::to_libp2p.
    let kp = key(9);
    let mut secret = kp.secret_bytes();
    let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret).unwrap();
    let lk = libp2p_identity::ed25519::Keypair::from(sk);
    assert_eq!(lk.public().to_bytes(), *kp.node_id().as_bytes());
    let peer = libp2p_identity::PublicKey::from(lk.public()).to_peer_id();
    assert_eq!(kp.node_id().to_string(), peer.to_base58());
}

#[test]
fn from_peer_id_round_trips() {
    for seed in [3u8, 4, 5] {
        let id = key(seed).node_id();
        let peer = id.to_peer_id().unwrap();
        assert_eq!(NodeId::from_peer_id(&peer).unwrap(), id);
        assert_eq!(NodeId::from_str(&id.to_string()).unwrap(), id);
        assert_eq!(NodeId::from_str(&peer.to_base58()).unwrap(), id);
    }
}

#[test]
fn distinct_keys_have_distinct_ids() {
    assert_ne!(key(1).node_id(), key(2).node_id());
    assert_ne!(key(1).node_id().to_string(), key(2).node_id().to_string());
}

#[test]
fn from_str_refuses_text_of_the_wrong_shape() {
    use ParseNodeIdError::*;
    let good = key(1).node_id().to_string();
    let b58 = |b: &[u8]| bs58::encode(b).into_string();
    let mut wrong_type = ed25519_peer_id_bytes(&[7; 32]);
    wrong_type[3] = 0x02; // KeyType::Secp256k1 with 32 bytes
    let mut wrong_len_byte = ed25519_peer_id_bytes(&[7; 32]);
    wrong_len_byte[1] = 0x25;
    let mut sha = vec![0x12, 0x20]; // sha256 multihash, as RSA peer ids are
    sha.extend_from_slice(&[0xab; 32]);
    let mut secp = vec![0x00, 0x25, 0x08, 0x02, 0x12, 0x21, 0x02];
    secp.extend_from_slice(&[0x11; 32]);
    let cases: Vec<(String, ParseNodeIdError)> = vec![
        (String::new(), Length(0)),
        ("not a peer id".into(), Base58),
        ("12D3KooW".into(), Length(6)),
        (format!(" {good}"), Base58),
        (format!("{good}\n"), Base58),
        (good.replacen('W', "0", 1), Base58), // 0 is not in the alphabet
        (good.replacen('W', "l", 1), Base58), // nor l
        (format!("1{good}"), Length(39)),     // a leading 1 is one more zero byte
        (good[..good.len() - 1].to_string(), Length(37)),
        ("x".repeat(65), TooLong(65)),
        (b58(&wrong_type), Prefix),
        (b58(&wrong_len_byte), Prefix),
        (b58(&sha), Length(34)),
        (b58(&secp), Length(39)),
        (
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N".into(),
            Length(34),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(NodeId::from_str(&text), Err(want), "{text:?}");
    }
    // Through `?` into a CryptoError, as node code does.
    let e: CryptoError = NodeId::from_str("12D3KooW").unwrap_err().into();
    assert!(matches!(e, CryptoError::InvalidNodeId(_)));
}

#[test]
fn from_peer_id_refuses_non_ed25519_peer_ids() {
    // sha256 multihash (how RSA peer ids look).
    let mut sha = vec![0x12, 0x20];
    sha.extend_from_slice(&[0xab; 32]);
    let peer = libp2p_identity::PeerId::from_bytes(&sha).unwrap();
    assert!(matches!(
        NodeId::from_peer_id(&peer),
        Err(CryptoError::InvalidNodeId(_))
    ));
    // Identity multihash of a secp256k1 protobuf key (KeyType = 2, 33 bytes).
    let mut secp = vec![0x00, 0x25, 0x08, 0x02, 0x12, 0x21, 0x02];
    secp.extend_from_slice(&[0x11; 32]);
    let peer = libp2p_identity::PeerId::from_bytes(&secp).unwrap();
    assert!(matches!(
        NodeId::from_peer_id(&peer),
        Err(CryptoError::InvalidNodeId(_))
    ));
}

#[test]
fn from_peer_id_refuses_key_bytes_that_are_not_a_point() {
    let bad = not_a_point();
    let peer = libp2p_identity::PeerId::from_bytes(&ed25519_peer_id_bytes(&bad)).unwrap();
    assert!(matches!(
        NodeId::from_peer_id(&peer),
        Err(CryptoError::InvalidNodeId(_))
    ));
    // The same framing around a real key is accepted: the refusal is about the point.
    let good = *key(8).node_id().as_bytes();
    let peer = libp2p_identity::PeerId::from_bytes(&ed25519_peer_id_bytes(&good)).unwrap();
    assert_eq!(NodeId::from_peer_id(&peer).unwrap(), NodeId(good));
}

#[test]
fn text_does_not_check_the_point_but_to_peer_id_does() {
    // Printing and parsing never decompress, so bytes off the curve print as peer id text and
    // parse back; whatever needs a usable key (to_peer_id, signatures) still refuses them.
    let id = NodeId(not_a_point());
    let peer = libp2p_identity::PeerId::from_bytes(&ed25519_peer_id_bytes(&id.0)).unwrap();
    assert_eq!(id.to_string(), peer.to_base58());
    assert_eq!(NodeId::from_str(&id.to_string()), Ok(id));
    assert_eq!(id.to_peer_id(), Err(CryptoError::InvalidPublicKey));
    let sig = key(1).sign(agentmesh_crypto::Context::Vote, b"m");
    assert!(id
        .verify(agentmesh_crypto::Context::Vote, b"m", &sig)
        .is_err());
}

#[test]
fn the_fixed_prefix_is_what_libp2p_encodes() {
    // Identity multihash (0x00, 36 bytes) over the protobuf key libp2p encodes itself.
    let kp = key(11);
    let pk = kp.to_libp2p().public();
    let proto = pk.encode_protobuf();
    assert_eq!(proto.len(), 36);
    assert_eq!(&proto[..4], &[0x08, 0x01, 0x12, 0x20]);
    assert_eq!(&proto[4..], kp.node_id().as_bytes());
    let peer = pk.to_peer_id().to_bytes();
    assert_eq!(peer, ed25519_peer_id_bytes(kp.node_id().as_bytes()));
}

proptest! {
    /// For random keys the text equals libp2p's `PeerId` text (which decompresses the point)
    /// and parses back to the same id.
    #[test]
    fn display_matches_libp2p_and_round_trips(secret in any::<[u8; 32]>()) {
        let kp = Keypair::from_secret(secret);
        let id = kp.node_id();
        let libp2p_text = kp.to_libp2p().public().to_peer_id().to_string();
        prop_assert_eq!(id.to_string(), libp2p_text.clone());
        prop_assert_eq!(id.to_peer_id().unwrap().to_base58(), libp2p_text.clone());
        prop_assert_eq!(NodeId::from_str(&libp2p_text), Ok(id));
        let peer = libp2p_identity::PeerId::from_str(&id.to_string()).unwrap();
        prop_assert_eq!(NodeId::from_peer_id(&peer).unwrap(), id);
    }

    /// Any 32 bytes, point or not, print as libp2p would frame them and parse back.
    #[test]
    fn any_bytes_round_trip(bytes in any::<[u8; 32]>()) {
        let id = NodeId(bytes);
        let peer = libp2p_identity::PeerId::from_bytes(&ed25519_peer_id_bytes(&bytes)).unwrap();
        prop_assert_eq!(id.to_string(), peer.to_base58());
        prop_assert_eq!(NodeId::from_str(&id.to_string()), Ok(id));
    }
}

#[test]
fn short_is_the_tail_of_the_peer_id() {
    let id = key(6).node_id();
    let full = id.to_string();
    assert_eq!(id.short().len(), 8);
    assert!(full.ends_with(&id.short()));
    assert!(format!("{id:?}").contains(&id.short()));
}

#[test]
fn secret_round_trips_and_keys_are_deterministic() {
    let kp = key(10);
    let again = Keypair::from_secret(kp.secret_bytes());
    assert_eq!(again.node_id(), kp.node_id());
    // Ed25519 signing is deterministic: same key, same message, same signature.
    let ctx = agentmesh_crypto::Context::Vote;
    assert_eq!(kp.sign(ctx, b"m"), again.sign(ctx, b"m"));
}

#[test]
fn generate_uses_only_the_given_rng() {
    use rand_chacha::rand_core::SeedableRng;
    let a = Keypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
    let b = Keypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1));
    let c = Keypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2));
    assert_eq!(a.node_id(), b.node_id());
    assert_ne!(a.node_id(), c.node_id());
}
