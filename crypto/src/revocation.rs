//! Root-signed revocations. They spread by gossip; a revoked node is refused everywhere.

use crate::envelope::Signed;
use crate::error::CryptoError;
use crate::identity::{Keypair, NodeId};
use crate::sign::Context;
use serde::{Deserialize, Serialize};

/// Longest revocation reason, in bytes.
pub const REASON_LEN_MAX: usize = 256;

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
    /// Verifies that the mesh root signed this revocation for `mesh_id`.
    pub fn verify(&self, root: &NodeId, mesh_id: &str) -> Result<Revocation, CryptoError> {
        let r = self.0.verify_by(root, Context::Revocation)?;
        if r.mesh_id != mesh_id || r.reason.len() > REASON_LEN_MAX {
            return Err(CryptoError::BadSignature);
        }
        Ok(r)
    }
}
