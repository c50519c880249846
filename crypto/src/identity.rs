//! Node identity: an ed25519 keypair whose [`NodeId`] equals the libp2p `PeerId` of the key.

use crate::error::CryptoError;
use crate::sign::{sign_with, verify_with, Context, Signature};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A node's identity: the 32-byte ed25519 public key. It prints (and parses) as the libp2p
/// `PeerId` of that key, so the mutual-TLS handshake of libp2p proves it.
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
        // An ed25519 PeerId is an identity multihash over the protobuf-encoded public key:
        // 0x00 0x24 | 0x08 0x01 0x12 0x20 | 32 key bytes.
        let bytes = peer.to_bytes();
        match bytes.as_slice() {
            [0x00, 0x24, 0x08, 0x01, 0x12, 0x20, key @ ..] if key.len() == 32 => {
                let mut out = [0u8; 32];
                out.copy_from_slice(key);
                // A peer id is only a hash wrapper: it does not prove the bytes are a curve
                // point. Refuse them here so that every parsed NodeId prints back as itself.
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_peer_id() {
            Ok(p) => write!(f, "{p}"),
            Err(_) => write!(f, "invalid:{}", hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer = libp2p_identity::PeerId::from_str(s)
            .map_err(|_| CryptoError::InvalidNodeId(s.to_string()))?;
        NodeId::from_peer_id(&peer)
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
