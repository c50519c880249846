//! Root-signed revocations. They spread by gossip; a revoked node is refused everywhere.

use crate::envelope::{check_len, decode_canonical, Signed};
use crate::error::CryptoError;
use crate::identity::{Keypair, NodeId};
use crate::sign::Context;
use serde::{Deserialize, Serialize};

/// Longest revocation reason, in bytes.
pub const REASON_LEN_MAX: usize = 256;
/// Largest encoded [`SignedRevocation`] that [`SignedRevocation::from_bytes`] will decode, in
/// bytes. Checked before decoding.
pub const REVOCATION_LEN_MAX: usize = 1024;

/// The body of a revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The mesh the revocation applies to.
    pub mesh_id: String,
    /// The revoked node.
    pub node_id: NodeId,
    /// When it was issued (unix seconds).
    pub issued_at: u64,
    /// Why, for operators.
    pub reason: String,
}

/// A root-signed revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocation(pub Signed<Revocation>);

impl Revocation {
    /// Signs this revocation with the mesh root key.
    pub fn sign(&self, root: &Keypair) -> SignedRevocation {
        SignedRevocation(Signed::sign(root, Context::Revocation, self))
    }
}

impl SignedRevocation {
    /// The postcard encoding of this revocation, as spread by gossip.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    /// Decodes a revocation of at most [`REVOCATION_LEN_MAX`] bytes (checked before decoding).
    /// Nothing is verified; call [`SignedRevocation::verify`] next. Only the canonical
    /// encoding is accepted, so `from_bytes(b)?.to_bytes() == b`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len(bytes, REVOCATION_LEN_MAX)?;
        decode_canonical(bytes)
    }

    /// Verifies that the mesh root signed this revocation for `mesh_id`. Every refusal
    /// (another signer, a bad signature, another mesh, an over-long reason) is reported as
    /// [`CryptoError::BadSignature`], except an undecodable payload ([`CryptoError::Decode`])
    /// and a root key that is itself invalid or weak.
    pub fn verify(&self, root: &NodeId, mesh_id: &str) -> Result<Revocation, CryptoError> {
        let r = self.0.verify_by(root, Context::Revocation)?;
        if r.mesh_id != mesh_id || r.reason.len() > REASON_LEN_MAX {
            return Err(CryptoError::BadSignature);
        }
        Ok(r)
    }
}
