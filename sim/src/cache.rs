//! A verifier shared by every simulated node: the same bytes are verified once. Results are a
//! pure function of the bytes, so sharing cannot change any outcome, only the cost.

use agentmesh_crypto::{CertError, CryptoError, NodeId, SignedCert};
use agentmesh_gossip::member::{MemberInfo, SignedMember};
use agentmesh_gossip::record::{NodeRecord, SignedRecord};
use agentmesh_gossip::{StrictVerifier, Verifier};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

type Key = [u8; 32];

fn key(signer: &NodeId, payload: &[u8], sig: &[u8; 64]) -> Key {
    let mut h = Sha256::new();
    h.update(signer.0);
    h.update(payload);
    h.update(sig);
    h.finalize().into()
}

/// Memoises verification results by the exact signed bytes.
#[derive(Default)]
pub struct CachingVerifier {
    records: RefCell<HashMap<Key, Result<Arc<NodeRecord>, CryptoError>>>,
    members: RefCell<HashMap<Key, Result<Arc<MemberInfo>, CryptoError>>>,
    certs: RefCell<HashMap<Key, bool>>,
    requested: Cell<u64>,
    performed: Cell<u64>,
}

impl CachingVerifier {
    /// `(performed, requested)` verifications.
    pub fn counts(&self) -> (u64, u64) {
        (self.performed.get(), self.requested.get())
    }
}

impl Verifier for CachingVerifier {
    fn record(&self, rec: &SignedRecord) -> Result<Arc<NodeRecord>, CryptoError> {
        self.requested.set(self.requested.get() + 1);
        let k = key(&rec.signer, &rec.payload, &rec.signature.0);
        if let Some(r) = self.records.borrow().get(&k) {
            return r.clone();
        }
        self.performed.set(self.performed.get() + 1);
        let r = StrictVerifier.record(rec);
        self.records.borrow_mut().insert(k, r.clone());
        r
    }

    fn member(&self, m: &SignedMember) -> Result<Arc<MemberInfo>, CryptoError> {
        self.requested.set(self.requested.get() + 1);
        let k = key(&m.signer, &m.payload, &m.signature.0);
        if let Some(r) = self.members.borrow().get(&k) {
            return r.clone();
        }
        self.performed.set(self.performed.get() + 1);
        let r = StrictVerifier.member(m);
        self.members.borrow_mut().insert(k, r.clone());
        r
    }

    fn cert(
        &self,
        cert: &SignedCert,
        root: &NodeId,
        mesh_id: &str,
        node: &NodeId,
        now_unix_s: u64,
    ) -> Result<(), CertError> {
        // Cache only the signature check; validity fields are checked every time.
        let k = key(&cert.0.signer, &cert.0.payload, &cert.0.signature.0);
        let sig_ok = *self.certs.borrow_mut().entry(k).or_insert_with(|| {
            cert.0
                .verify(agentmesh_crypto::Context::AdmissionCert)
                .is_ok()
        });
        if !sig_ok {
            return Err(CertError::Crypto(CryptoError::BadSignature));
        }
        cert.verify_fields(root, mesh_id, node, now_unix_s)
            .map(|_| ())
    }
}
