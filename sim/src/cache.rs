//! A verifier shared by every simulated node: the same bytes are verified once. Results are a
//! pure function of the bytes, so sharing cannot change any outcome, only the cost.
//!
//! Envelopes travel between simulated nodes as shared `Arc`s, so most checks are of an object
//! seen before: those hit by address (the cache holds a clone of the `Arc`, so the address
//! cannot be reused by another object). A different object falls back to the signature key
//! with an exact comparison of signer and payload.

use agentmesh_crypto::{AdmissionCert, CertError, CryptoError, NodeId, SignedCert};
use agentmesh_gossip::member::{Accusation, MemberInfo, SignedAccusation, SignedMember};
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

/// Hashes an address (already well spread after a multiply).
#[derive(Default)]
struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Results by object address; the entry keeps the object alive.
type ByAddr<E, T> = Mutex<HashMap<usize, (Arc<E>, T), std::hash::BuildHasherDefault<AddrHasher>>>;

fn addr<E>(a: &Arc<E>) -> usize {
    Arc::as_ptr(a) as usize
}

fn by_addr<E, T: Clone>(map: &ByAddr<E, T>, a: &Arc<E>) -> Option<T> {
    map.lock()
        .expect("single-threaded simulator")
        .get(&addr(a))
        .filter(|(held, _)| Arc::ptr_eq(held, a))
        .map(|(_, r)| r.clone())
}

fn remember<E, T>(map: &ByAddr<E, T>, a: &Arc<E>, result: T) {
    map.lock()
        .expect("single-threaded simulator")
        .insert(addr(a), (a.clone(), result));
}

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
    record_objs: ByAddr<SignedRecord, Result<Arc<NodeRecord>, CryptoError>>,
    member_objs: ByAddr<SignedMember, Result<Arc<MemberInfo>, CryptoError>>,
    certs: Table<Option<Arc<AdmissionCert>>>,
    record_certs: ByAddr<NodeRecord, Option<Arc<AdmissionCert>>>,
    accusations: ByAddr<SignedAccusation, Result<Arc<Accusation>, CryptoError>>,
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

impl CachingVerifier {
    /// The certificate's signature checked once per distinct bytes, and its decoding.
    fn decode_cert(&self, cert: &SignedCert) -> Option<Arc<AdmissionCert>> {
        let env = &cert.0;
        let sig = &env.signature.0;
        match lookup(&self.certs, &env.signer, &env.payload, sig) {
            Some(d) => d,
            None => {
                let d = env
                    .verify(agentmesh_crypto::Context::AdmissionCert)
                    .ok()
                    .map(Arc::new);
                store(&self.certs, env.signer, &env.payload, *sig, d.clone());
                d
            }
        }
    }
}

impl Verifier for CachingVerifier {
    fn record(&self, rec: &Arc<SignedRecord>) -> Result<Arc<NodeRecord>, CryptoError> {
        if let Some(r) = by_addr(&self.record_objs, rec) {
            self.count(false);
            return r;
        }
        let sig = &rec.signature.0;
        let r = match lookup(&self.records, &rec.signer, &rec.payload, sig) {
            Some(r) => {
                self.count(false);
                r
            }
            None => {
                self.count(true);
                let r = StrictVerifier.record(rec);
                store(&self.records, rec.signer, &rec.payload, *sig, r.clone());
                r
            }
        };
        remember(&self.record_objs, rec, r.clone());
        r
    }

    fn member(&self, m: &Arc<SignedMember>) -> Result<Arc<MemberInfo>, CryptoError> {
        if let Some(r) = by_addr(&self.member_objs, m) {
            self.count(false);
            return r;
        }
        let sig = &m.signature.0;
        let r = match lookup(&self.members, &m.signer, &m.payload, sig) {
            Some(r) => {
                self.count(false);
                r
            }
            None => {
                self.count(true);
                let r = StrictVerifier.member(m);
                store(&self.members, m.signer, &m.payload, *sig, r.clone());
                r
            }
        };
        remember(&self.member_objs, m, r.clone());
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
        let decoded = self.decode_cert(cert);
        let Some(c) = decoded else {
            return Err(CertError::Crypto(CryptoError::BadSignature));
        };
        // The field checks of SignedCert::verify_fields, on the cached decoding.
        c.check_fields(&cert.0.signer, root, mesh_id, node, now_unix_s)
    }

    fn accusation(&self, a: &Arc<SignedAccusation>) -> Result<Arc<Accusation>, CryptoError> {
        if let Some(r) = by_addr(&self.accusations, a) {
            self.count(false);
            return r;
        }
        self.count(true);
        let r = StrictVerifier.accusation(a);
        remember(&self.accusations, a, r.clone());
        r
    }

    fn record_admitted(
        &self,
        rec: &Arc<NodeRecord>,
        root: &NodeId,
        mesh_id: &str,
        now_unix_s: u64,
    ) -> bool {
        let Some(cert) = rec.cert.as_ref() else {
            return false;
        };
        let decoded = match by_addr(&self.record_certs, rec) {
            Some(d) => d,
            None => {
                let d = self.decode_cert(cert);
                remember(&self.record_certs, rec, d.clone());
                d
            }
        };
        decoded.is_some_and(|c| {
            c.check_fields(&cert.0.signer, root, mesh_id, &rec.node_id, now_unix_s)
                .is_ok()
        })
    }
}
