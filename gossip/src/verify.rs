//! Signature checks as a trait, so the simulator can share one cache among thousands of nodes.
//! Every implementation must be a pure function of its inputs.

use agentmesh_crypto::{CertError, CryptoError, NodeId, SignedCert};
use std::sync::Arc;

use crate::member::{MemberInfo, SignedMember};
use crate::record::{NodeRecord, SignedRecord, RECORD_CONTEXT};

/// Verifies envelopes and certificates on behalf of the state machine.
pub trait Verifier: Send + Sync {
    /// Verifies a record envelope and decodes it.
    fn record(&self, rec: &SignedRecord) -> Result<Arc<NodeRecord>, CryptoError>;
    /// Verifies a self-signed membership identity and decodes it.
    fn member(&self, m: &SignedMember) -> Result<Arc<MemberInfo>, CryptoError>;
    /// Verifies an admission certificate for `node` at `now_unix_s`.
    fn cert(
        &self,
        cert: &SignedCert,
        root: &NodeId,
        mesh_id: &str,
        node: &NodeId,
        now_unix_s: u64,
    ) -> Result<(), CertError>;
}

/// Verifies everything with ed25519 `verify_strict`, every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct StrictVerifier;

impl Verifier for StrictVerifier {
    fn record(&self, rec: &SignedRecord) -> Result<Arc<NodeRecord>, CryptoError> {
        rec.verify(RECORD_CONTEXT).map(Arc::new)
    }

    fn member(&self, m: &SignedMember) -> Result<Arc<MemberInfo>, CryptoError> {
        m.verify(crate::member::MEMBER_CONTEXT).map(Arc::new)
    }

    fn cert(
        &self,
        cert: &SignedCert,
        root: &NodeId,
        mesh_id: &str,
        node: &NodeId,
        now_unix_s: u64,
    ) -> Result<(), CertError> {
        cert.verify(root, mesh_id, node, now_unix_s).map(|_| ())
    }
}
