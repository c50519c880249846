//! Node identities: a `NodeId` is exactly the libp2p `PeerId` of the same ed25519 key.

use agentmesh_crypto::{CryptoError, Keypair, NodeId};
use ed25519_dalek::VerifyingKey;
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
fn from_str_refuses_garbage() {
    for s in [
        "",
        "not a peer id",
        "12D3KooW",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
    ] {
        assert!(
            matches!(NodeId::from_str(s), Err(CryptoError::InvalidNodeId(_))),
            "{s:?} must be refused"
        );
    }
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
    assert!(NodeId::from_str(&peer.to_base58()).is_err());
    // The same framing around a real key is accepted: the refusal is about the point.
    let good = *key(8).node_id().as_bytes();
    let peer = libp2p_identity::PeerId::from_bytes(&ed25519_peer_id_bytes(&good)).unwrap();
    assert_eq!(NodeId::from_peer_id(&peer).unwrap(), NodeId(good));
}

#[test]
fn invalid_point_node_id_displays_as_invalid_and_has_no_peer_id() {
    let id = NodeId(not_a_point());
    assert_eq!(id.to_peer_id(), Err(CryptoError::InvalidPublicKey));
    assert_eq!(id.to_string(), format!("invalid:{}", hex::encode(id.0)));
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
