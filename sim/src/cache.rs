//! A verifier shared by every simulated node: the same bytes are verified once. Results are a
//! pure function of the bytes, so sharing cannot change any outcome, only the cost.

use agentmesh_crypto::{AdmissionCert, CertError, CryptoError, NodeId, SignedCert};
use agentmesh_gossip::member::{MemberInfo, SignedMember};
use agentmesh_gossip::record::{NodeRecord, SignedRecord};
use agentmesh_gossip::{StrictVerifier, Verifier};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

/// Entries are keyed by signature; a hit must also match the signer and the payload exactly,
/// so a forged payload under a reused signature is verified afresh.
type Key = [u8; 64];

struct Entry<T> {
    signer: NodeId,
    payload: Vec<u8>,
    result: T,
}

type Table<T> = Mutex<HashMap<Key, Entry<T>>>;

fn lookup<T: Clone>(map: &Table<T>, signer: &NodeId, payload: &[u8], sig: &Key) -> Option<T> {
    map.lock()
        .expect("single-threaded simulator")
        .get(sig)
        .filter(|e| e.signer == *signer && e.payload == payload)
        .map(|e| e.result.clone())
}

fn store<T>(map: &Table<T>, signer: NodeId, payload: &[u8], sig: Key, result: T) {
    let entry = Entry {
        signer,
        payload: payload.to_vec(),
        result,
    };
    map.lock()
        .expect("single-threaded simulator")
        .insert(sig, entry);
}

/// Memoises verification results by the exact signed bytes.
#[derive(Default)]
pub struct CachingVerifier {
    records: Table<Result<Arc<NodeRecord>, CryptoError>>,
    members: Table<Result<Arc<MemberInfo>, CryptoError>>,
    certs: Table<Option<Arc<AdmissionCert>>>,
    requested: AtomicU64,
    performed: AtomicU64,
}

impl CachingVerifier {
    /// `(performed, requested)` verifications.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.performed.load(Ordering::Relaxed),
            self.requested.load(Ordering::Relaxed),
        )
    }

    fn count(&self, performed: bool) {
        self.requested.fetch_add(1, Ordering::Relaxed);
        if performed {
            self.performed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Verifier for CachingVerifier {
    fn record(&self, rec: &SignedRecord) -> Result<Arc<NodeRecord>, CryptoError> {
        let sig = &rec.signature.0;
        if let Some(r) = lookup(&self.records, &rec.signer, &rec.payload, sig) {
            self.count(false);
            return r;
        }
        self.count(true);
        let r = StrictVerifier.record(rec);
        store(&self.records, rec.signer, &rec.payload, *sig, r.clone());
        r
    }

    fn member(&self, m: &SignedMember) -> Result<Arc<MemberInfo>, CryptoError> {
        let sig = &m.signature.0;
        if let Some(r) = lookup(&self.members, &m.signer, &m.payload, sig) {
            self.count(false);
            return r;
        }
        self.count(true);
        let r = StrictVerifier.member(m);
        store(&self.members, m.signer, &m.payload, *sig, r.clone());
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
        let env = &cert.0;
        let sig = &env.signature.0;
        let decoded = match lookup(&self.certs, &env.signer, &env.payload, sig) {
            Some(d) => d,
            None => {
                let d = env
                    .verify(agentmesh_crypto::Context::AdmissionCert)
                    .ok()
                    .map(Arc::new);
                store(&self.certs, env.signer, &env.payload, *sig, d.clone());
                d
            }
        };
        let Some(c) = decoded else {
            return Err(CertError::Crypto(CryptoError::BadSignature));
        };
        // The field checks of SignedCert::verify_fields, on the cached decoding.
        c.check_fields(&env.signer, root, mesh_id, node, now_unix_s)
    }
}
