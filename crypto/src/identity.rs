//! Node identity: an ed25519 keypair whose [`NodeId`] equals the libp2p `PeerId` of the key.

use crate::error::CryptoError;
use crate::sign::{sign_with, verify_with, Context, Signature};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What an ed25519 `PeerId` puts before the 32 key bytes: identity multihash (0x00) of 36
/// bytes (0x24) over the protobuf public key: field 1 `KeyType::Ed25519` (0x08 0x01), field 2
/// of 32 bytes (0x12 0x20). Fixed, so printing and parsing need no curve arithmetic.
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
/// Bytes in an ed25519 `PeerId`: prefix and key.
const PEER_ID_LEN: usize = PEER_ID_PREFIX.len() + 32;
/// Upper bound on its base58 text (38 bytes give 52 characters; extra room is harmless).
const PEER_ID_TEXT_MAX: usize = 64;

/// A node's identity: the 32-byte ed25519 public key. It prints (and parses) as the libp2p
/// `PeerId` of that key, so the mutual-TLS handshake of libp2p proves it. Printing and parsing
/// work on the bytes alone, without decompressing the point.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw ed25519 public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The libp2p `PeerId` of this key. Fails only for bytes that are not a valid point.
    pub fn to_peer_id(&self) -> Result<libp2p_identity::PeerId, CryptoError> {
        let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0)
            .map_err(|_| CryptoError::InvalidPublicKey)?;
        Ok(libp2p_identity::PublicKey::from(pk).to_peer_id())
    }

    /// Recovers the node id from a libp2p `PeerId` of an ed25519 key (identity multihash).
    /// Fails for peer ids of other key types and for key bytes that are not a curve point.
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Result<Self, CryptoError> {
        let bytes = peer.to_bytes();
        match bytes.strip_prefix(&PEER_ID_PREFIX[..]) {
            Some(key) if key.len() == 32 => {
                let mut out = [0u8; 32];
                out.copy_from_slice(key);
                // A peer id is only a hash wrapper: it does not prove the bytes are a curve
                // point. This path feeds the transport, which needs usable keys, so it checks.
                ed25519_dalek::VerifyingKey::from_bytes(&out)
                    .map_err(|_| CryptoError::InvalidNodeId(peer.to_base58()))?;
                Ok(NodeId(out))
            }
            _ => Err(CryptoError::InvalidNodeId(peer.to_base58())),
        }
    }

    /// Verifies `sig` over `msg` in `ctx` as made by this node's key.
    pub fn verify(&self, ctx: Context, msg: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        verify_with(&self.0, ctx, msg, sig)
    }

    /// A short, stable prefix for logs and tables (the last 8 characters of the peer id).
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    /// The libp2p `PeerId` text of this key, built from the bytes alone: no point
    /// decompression, so printing is cheap and works for any 32 bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = [0u8; PEER_ID_LEN];
        raw[..PEER_ID_PREFIX.len()].copy_from_slice(&PEER_ID_PREFIX);
        raw[PEER_ID_PREFIX.len()..].copy_from_slice(&self.0);
        let mut text = [0u8; PEER_ID_TEXT_MAX];
        let n = bs58::encode(&raw)
            .onto(&mut text[..])
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&text[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

/// Why text is not a node id (see [`NodeId`]'s `FromStr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseNodeIdError {
    /// The text is longer than any ed25519 peer id; refused before decoding.
    #[error("node id text is {0} characters, at most {PEER_ID_TEXT_MAX}")]
    TooLong(usize),
    /// The text is not base58btc.
    #[error("node id is not base58btc")]
    Base58,
    /// The text decodes to the wrong number of bytes (an ed25519 peer id has 38).
    #[error("node id decodes to {0} bytes, expected {PEER_ID_LEN}")]
    Length(usize),
    /// The bytes do not start as the peer id of an ed25519 key does.
    #[error("node id is not the peer id of an ed25519 key")]
    Prefix,
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;
    /// Parses the text [`Display`](fmt::Display) prints. Only the shape is checked, not that
    /// the bytes are a curve point: signature checks and [`NodeId::to_peer_id`] refuse those.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > PEER_ID_TEXT_MAX {
            return Err(ParseNodeIdError::TooLong(s.len()));
        }
        let raw = bs58::decode(s)
            .into_vec()
            .map_err(|_| ParseNodeIdError::Base58)?;
        if raw.len() != PEER_ID_LEN {
            return Err(ParseNodeIdError::Length(raw.len()));
        }
        let (prefix, key) = raw.split_at(PEER_ID_PREFIX.len());
        if prefix != PEER_ID_PREFIX {
            return Err(ParseNodeIdError::Prefix);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(key);
        Ok(NodeId(out))
    }
}

/// An ed25519 keypair: a node key or a mesh root key.
#[derive(Clone)]
pub struct Keypair {
    key: SigningKey,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({:?})", self.node_id())
    }
}

impl Keypair {
    /// Generates a key from a caller-owned RNG (no global RNG is read).
    pub fn generate<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        Keypair {
            key: SigningKey::generate(rng),
        }
    }

    /// Builds a keypair from its 32-byte secret seed.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Keypair {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The 32-byte secret seed. Handle with care.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key as a node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg` under the domain-separation context `ctx`.
    pub fn sign(&self, ctx: Context, msg: &[u8]) -> Signature {
        sign_with(&self.key, ctx, msg)
    }

    /// The same key as a libp2p keypair, for the transport's TLS identity.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut secret = self.key.to_bytes();
        let sk = libp2p_identity::ed25519::SecretKey::try_from_bytes(&mut secret)
            .expect("a 32-byte ed25519 secret is always valid");
        libp2p_identity::Keypair::from(libp2p_identity::ed25519::Keypair::from(sk))
    }
}
