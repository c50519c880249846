//! Signature checks as a trait, so the simulator can share one cache among thousands of nodes.
//! Every implementation must be a pure function of its inputs.

use agentmesh_crypto::{CertError, CryptoError, NodeId, SignedCert};
use std::sync::Arc;

use crate::member::{Accusation, MemberInfo, SignedAccusation, SignedMember, ACCUSATION_CONTEXT};
use crate::record::{NodeRecord, SignedRecord, RECORD_CONTEXT};

/// Verifies envelopes and certificates on behalf of the state machine. Envelopes come as the
/// shared `Arc`s they travel in, so a cache may recognise the very same object cheaply.
pub trait Verifier: Send + Sync {
    /// Verifies a record envelope and decodes it.
    fn record(&self, rec: &Arc<SignedRecord>) -> Result<Arc<NodeRecord>, CryptoError>;
    /// Verifies a self-signed membership identity and decodes it.
    fn member(&self, m: &Arc<SignedMember>) -> Result<Arc<MemberInfo>, CryptoError>;
    /// Verifies an admission certificate for `node` at `now_unix_s`.
    fn cert(
        &self,
        cert: &SignedCert,
        root: &NodeId,
        mesh_id: &str,
        node: &NodeId,
        now_unix_s: u64,
    ) -> Result<(), CertError>;

    /// Verifies a signed accusation and decodes it.
    fn accusation(&self, a: &Arc<SignedAccusation>) -> Result<Arc<Accusation>, CryptoError> {
        a.verify(ACCUSATION_CONTEXT).map(Arc::new)
    }

    /// True if a decoded record carries a valid certificate for its own node. The default
    /// checks [`Verifier::cert`]; a cache may key on the shared record object instead.
    fn record_admitted(
        &self,
        rec: &Arc<NodeRecord>,
        root: &NodeId,
        mesh_id: &str,
        now_unix_s: u64,
    ) -> bool {
        rec.cert.as_ref().is_some_and(|c| {
            self.cert(c, root, mesh_id, &rec.node_id, now_unix_s)
                .is_ok()
        })
    }
}

/// Verifies everything with ed25519 `verify_strict`, every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct StrictVerifier;

impl Verifier for StrictVerifier {
    fn record(&self, rec: &Arc<SignedRecord>) -> Result<Arc<NodeRecord>, CryptoError> {
        rec.verify(RECORD_CONTEXT).map(Arc::new)
    }

    fn member(&self, m: &Arc<SignedMember>) -> Result<Arc<MemberInfo>, CryptoError> {
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
