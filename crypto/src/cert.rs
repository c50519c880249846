//! Mesh admission certificates: `{mesh_id, node_id, roles, not_before, not_after}` signed by the
//! mesh root key.

use crate::envelope::{check_len, decode_canonical, Signed};
use crate::error::CryptoError;
use crate::identity::{Keypair, NodeId};
use crate::sign::Context;
use serde::{Deserialize, Serialize};

/// Longest mesh id accepted, in bytes.
pub const MESH_ID_LEN_MAX: usize = 64;
/// Most roles one certificate may carry.
pub const ROLES_MAX: usize = 16;
/// Longest role name, in bytes.
pub const ROLE_LEN_MAX: usize = 64;
/// Largest encoded [`SignedCert`] that [`SignedCert::from_bytes`] will decode, in bytes. A
/// certificate at every field limit encodes to well under this.
pub const CERT_LEN_MAX: usize = 4096;

/// The body of an admission certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionCert {
    /// The mesh this certificate admits to.
    pub mesh_id: String,
    /// The admitted node.
    pub node_id: NodeId,
    /// Roles granted by the root; the only source of roles for RBAC.
    pub roles: Vec<String>,
    /// Valid from (unix seconds, inclusive).
    pub not_before: u64,
    /// Valid until (unix seconds, exclusive).
    pub not_after: u64,
}

/// Why a certificate was refused. Verification never changes state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not signed by the expected mesh root.
    #[error("certificate signed by {found}, expected root {expected}")]
    WrongRoot {
        /// Signer found.
        found: NodeId,
        /// Root expected.
        expected: NodeId,
    },
    /// The signature or encoding is bad.
    #[error("certificate signature: {0}")]
    Crypto(#[from] CryptoError),
    /// Issued for another mesh.
    #[error("certificate is for mesh {found:?}, expected {expected:?}")]
    WrongMesh {
        /// Mesh found.
        found: String,
        /// Mesh expected.
        expected: String,
    },
    /// Issued for another node than the one presenting it.
    #[error("certificate is for node {found}, presented by {presenter}")]
    WrongNode {
        /// Node named in the certificate.
        found: NodeId,
        /// Node that presented it.
        presenter: NodeId,
    },
    /// `now < not_before`.
    #[error("certificate not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity.
        not_before: u64,
        /// Time checked.
        now: u64,
    },
    /// `now >= not_after`.
    #[error("certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity.
        not_after: u64,
        /// Time checked.
        now: u64,
    },
    /// A field breaks a named limit.
    #[error("certificate field {0} exceeds its limit")]
    Limit(&'static str),
}

/// A root-signed admission certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCert(pub Signed<AdmissionCert>);

/// Prefix of the role that grants a priority class: `priority:critical`,
/// `priority:standard` or `priority:experimental`. Priority is certified like every role.
pub const PRIORITY_ROLE_PREFIX: &str = "priority:";

impl AdmissionCert {
    /// The priority class the root granted (the highest `priority:<class>` role's class
    /// name), if any. The caller maps the name; unknown names are ignored by it.
    pub fn priority_classes(&self) -> impl Iterator<Item = &str> {
        self.roles
            .iter()
            .filter_map(|r| r.strip_prefix(PRIORITY_ROLE_PREFIX))
    }

    fn check_limits(&self) -> Result<(), CertError> {
        if self.mesh_id.len() > MESH_ID_LEN_MAX {
            return Err(CertError::Limit("mesh_id"));
        }
        if self.roles.len() > ROLES_MAX {
            return Err(CertError::Limit("roles"));
        }
        if self.roles.iter().any(|r| r.len() > ROLE_LEN_MAX) {
            return Err(CertError::Limit("role"));
        }
        Ok(())
    }

    /// Signs this certificate with the mesh root key.
    pub fn sign(&self, root: &Keypair) -> Result<SignedCert, CertError> {
        self.check_limits()?;
        Ok(SignedCert(Signed::sign(root, Context::AdmissionCert, self)))
    }
}

impl SignedCert {
    /// The postcard encoding of this certificate, as exchanged between peers.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    /// Decodes a certificate of at most [`CERT_LEN_MAX`] bytes (checked before decoding).
    /// Nothing is verified; call [`SignedCert::verify`] next. Only the canonical
    /// encoding is accepted, so `from_bytes(b)?.to_bytes() == b`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CertError> {
        check_len(bytes, CERT_LEN_MAX)?;
        Ok(decode_canonical(bytes)?)
    }

    /// The node the certificate claims to admit, without verification (for lookups only).
    pub fn claimed(&self) -> Result<AdmissionCert, CertError> {
        Ok(self.0.decode_unverified()?)
    }

    /// Verifies root signature, mesh, subject node and validity window at `now_unix_s`.
    pub fn verify(
        &self,
        root: &NodeId,
        mesh_id: &str,
        presenter: &NodeId,
        now_unix_s: u64,
    ) -> Result<AdmissionCert, CertError> {
        if &self.0.signer != root {
            return Err(CertError::WrongRoot {
                found: self.0.signer,
                expected: *root,
            });
        }
        self.0.verify(Context::AdmissionCert)?;
        self.verify_fields(root, mesh_id, presenter, now_unix_s)
    }

    /// Checks everything except the signature: root, limits, mesh, subject and validity window.
    /// Only for callers that verified (or cached the verification of) this exact envelope.
    pub fn verify_fields(
        &self,
        root: &NodeId,
        mesh_id: &str,
        presenter: &NodeId,
        now_unix_s: u64,
    ) -> Result<AdmissionCert, CertError> {
        let cert = self.0.decode_unverified()?;
        cert.check_fields(&self.0.signer, root, mesh_id, presenter, now_unix_s)?;
        Ok(cert)
    }
}

impl AdmissionCert {
    /// The checks of [`SignedCert::verify_fields`] on an already decoded certificate signed
    /// by `signer`: root, limits, mesh, subject and validity window.
    pub fn check_fields(
        &self,
        signer: &NodeId,
        root: &NodeId,
        mesh_id: &str,
        presenter: &NodeId,
        now_unix_s: u64,
    ) -> Result<(), CertError> {
        if signer != root {
            return Err(CertError::WrongRoot {
                found: *signer,
                expected: *root,
            });
        }
        self.check_limits()?;
        if self.mesh_id != mesh_id {
            return Err(CertError::WrongMesh {
                found: self.mesh_id.clone(),
                expected: mesh_id.to_string(),
            });
        }
        if &self.node_id != presenter {
            return Err(CertError::WrongNode {
                found: self.node_id,
                presenter: *presenter,
            });
        }
        if now_unix_s < self.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.not_before,
                now: now_unix_s,
            });
        }
        if now_unix_s >= self.not_after {
            return Err(CertError::Expired {
                not_after: self.not_after,
                now: now_unix_s,
            });
        }
        Ok(())
    }
}
