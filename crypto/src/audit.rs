//! The audit log's hash chain and signed checkpoints.
//!
//! Every audit entry carries `seq` (0, 1, 2, … across rotated files) and `prev`, the hash of the
//! exact bytes of the entry before it ([`GENESIS`] for entry 0). A checkpoint is an entry too,
//! and additionally carries a signature by the node's key over `(size, head)`: the number of
//! entries before it and the hash of the last one. Changing, deleting or reordering any entry
//! breaks the chain at the entry after it; rewriting the whole chain after an entry breaks the
//! next signed checkpoint.
//!
//! This module knows nothing about the entry format: the node parses its JSON lines and feeds
//! `(seq, prev, raw line bytes)` to a [`ChainChecker`].

use crate::error::CryptoError;
use crate::identity::{Keypair, NodeId};
use crate::sign::{Context, Signature};
use sha2::{Digest, Sha256};

/// Length of a chain hash, in bytes.
pub const CHAIN_HASH_LEN: usize = 32;
/// A chain hash (SHA-256).
pub type ChainHash = [u8; CHAIN_HASH_LEN];
/// The `prev` of entry 0.
pub const GENESIS: ChainHash = [0u8; CHAIN_HASH_LEN];
/// Domain prefix of line hashes, so an audit hash never equals another hash of the same bytes.
const LINE_DOMAIN: &[u8] = b"agentmesh/v1/audit-line\0";

/// The chain hash of one entry: SHA-256 over a domain prefix and the line's exact bytes
/// (without the trailing newline).
pub fn line_hash(line: &[u8]) -> ChainHash {
    let mut h = Sha256::new();
    h.update(LINE_DOMAIN);
    h.update(line);
    h.finalize().into()
}

/// What a checkpoint signs: `size` entries precede it and `head` is the hash of the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Entries before the checkpoint (equals the checkpoint's own `seq`).
    pub size: u64,
    /// Hash of the entry just before it ([`GENESIS`] if none).
    pub head: ChainHash,
}

impl Checkpoint {
    fn message(&self) -> [u8; 8 + CHAIN_HASH_LEN] {
        let mut m = [0u8; 8 + CHAIN_HASH_LEN];
        m[..8].copy_from_slice(&self.size.to_le_bytes());
        m[8..].copy_from_slice(&self.head);
        m
    }

    /// Signs the checkpoint with the node's key (context `audit-checkpoint`).
    pub fn sign(&self, key: &Keypair) -> Signature {
        key.sign(Context::AuditCheckpoint, &self.message())
    }

    /// Verifies a checkpoint signature by `signer`.
    pub fn verify(&self, signer: &NodeId, sig: &Signature) -> Result<(), CryptoError> {
        signer.verify(Context::AuditCheckpoint, &self.message(), sig)
    }
}

/// The first place where the chain does not hold. Entries are named by position (`index`,
/// 0-based over everything fed) and by the `seq` they claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The entry before `index` was changed: its bytes no longer hash to the `prev` that entry
    /// `index` recorded.
    #[error("entry seq {seq} was changed (the next entry's prev hash does not match it)")]
    Changed {
        /// Position of the changed entry.
        index: usize,
        /// Its seq.
        seq: u64,
    },
    /// Entries from `seq` on are missing at position `index`.
    #[error("entry seq {seq} was deleted (found seq {found} in its place)")]
    Deleted {
        /// Position where `seq` should be.
        index: usize,
        /// The first missing seq.
        seq: u64,
        /// The seq found there.
        found: u64,
    },
    /// Entry `seq` appears out of order at position `index`.
    #[error("entry seq {found} is out of order (expected seq {seq} here)")]
    Reordered {
        /// Position of the misplaced entry.
        index: usize,
        /// The seq expected there.
        seq: u64,
        /// The seq found there.
        found: u64,
    },
    /// A checkpoint's signature fails, or its `(size, head)` does not match the entries before
    /// it: some entry before it was rewritten together with the chain after it.
    #[error("checkpoint at seq {seq} does not match the entries before it: {why}")]
    Checkpoint {
        /// Position of the checkpoint.
        index: usize,
        /// Its seq.
        seq: u64,
        /// What failed.
        why: String,
    },
}

impl ChainBreak {
    /// Position (0-based over all entries fed) of the first bad entry.
    pub fn index(&self) -> usize {
        match self {
            ChainBreak::Changed { index, .. }
            | ChainBreak::Deleted { index, .. }
            | ChainBreak::Reordered { index, .. }
            | ChainBreak::Checkpoint { index, .. } => *index,
        }
    }
}

/// One entry as the checker needs it.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    /// The seq it claims.
    pub seq: u64,
    /// The prev hash it claims.
    pub prev: ChainHash,
    /// The hash of its line bytes ([`line_hash`]).
    pub hash: ChainHash,
    /// The checkpoint it carries, with the signer and signature, if it is one.
    pub checkpoint: Option<(Checkpoint, NodeId, Signature)>,
}

/// Checks a whole chain and finds the first break. Pure: entries in, verdict out.
///
/// The first entry may start mid-chain (older rotated files were archived): then its `prev`
/// is taken on trust and reported by [`ChainReport::starts_at`].
#[derive(Debug, Default)]
pub struct ChainChecker {
    entries: Vec<ChainEntry>,
}

/// The result of a clean check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Entries checked.
    pub entries: usize,
    /// Seq of the first entry (0 if the chain starts at genesis).
    pub starts_at: u64,
    /// Signed checkpoints verified.
    pub checkpoints: usize,
    /// Hash of the last entry.
    pub head: ChainHash,
}

impl ChainChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next entry in file order.
    pub fn push(&mut self, e: ChainEntry) {
        self.entries.push(e);
    }

    /// Checks everything pushed and returns the report, or the first break.
    pub fn finish(&self) -> Result<ChainReport, ChainBreak> {
        let es = &self.entries;
        let Some(first) = es.first() else {
            return Ok(ChainReport {
                entries: 0,
                starts_at: 0,
                checkpoints: 0,
                head: GENESIS,
            });
        };
        let starts_at = first.seq;
        if first.seq == 0 && first.prev != GENESIS {
            return Err(ChainBreak::Changed { index: 0, seq: 0 });
        }
        let mut checkpoints = 0;
        for (i, e) in es.iter().enumerate() {
            if i > 0 {
                let expected = starts_at.wrapping_add(i as u64);
                if e.seq != expected {
                    // A gap whose missing entry shows up later is a reordering, else a deletion.
                    let later = es[i + 1..].iter().any(|x| x.seq == expected);
                    return Err(if later || e.seq < expected {
                        ChainBreak::Reordered {
                            index: i,
                            seq: expected,
                            found: e.seq,
                        }
                    } else {
                        ChainBreak::Deleted {
                            index: i,
                            seq: expected,
                            found: e.seq,
                        }
                    });
                }
                if e.prev != es[i - 1].hash {
                    return Err(ChainBreak::Changed {
                        index: i - 1,
                        seq: es[i - 1].seq,
                    });
                }
            }
            if let Some((cp, signer, sig)) = &e.checkpoint {
                let head = if i == 0 { e.prev } else { es[i - 1].hash };
                let why = if cp.verify(signer, sig).is_err() {
                    Some("bad signature".to_string())
                } else if cp.size != e.seq {
                    Some(format!("signed size {} but seq {}", cp.size, e.seq))
                } else if cp.head != head {
                    Some("signed head hash differs from the chain".to_string())
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(ChainBreak::Checkpoint {
                        index: i,
                        seq: e.seq,
                        why,
                    });
                }
                checkpoints += 1;
            }
        }
        Ok(ChainReport {
            entries: es.len(),
            starts_at,
            checkpoints,
            head: es.last().map(|e| e.hash).unwrap_or(GENESIS),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` plain entries; line i is "entry i".
    fn chain(n: u64) -> Vec<(Vec<u8>, ChainEntry)> {
        let mut prev = GENESIS;
        (0..n)
            .map(|seq| {
                let line = format!("entry {seq}").into_bytes();
                let hash = line_hash(&line);
                let e = ChainEntry {
                    seq,
                    prev,
                    hash,
                    checkpoint: None,
                };
                prev = hash;
                (line, e)
            })
            .collect()
    }

    fn check(es: &[ChainEntry]) -> Result<ChainReport, ChainBreak> {
        let mut c = ChainChecker::new();
        for e in es {
            c.push(e.clone());
        }
        c.finish()
    }

    #[test]
    fn intact_chain_verifies() {
        let es: Vec<_> = chain(10).into_iter().map(|x| x.1).collect();
        let r = check(&es).unwrap();
        assert_eq!(r.entries, 10);
        assert_eq!(r.head, es[9].hash);
        // Starting mid-chain (older files archived) is accepted.
        assert_eq!(check(&es[4..]).unwrap().starts_at, 4);
    }

    #[test]
    fn each_tampering_is_named() {
        let es: Vec<_> = chain(10).into_iter().map(|x| x.1).collect();
        // Changed: entry 3's bytes differ.
        let mut changed = es.clone();
        changed[3].hash = line_hash(b"entry 3 but different");
        assert_eq!(
            check(&changed),
            Err(ChainBreak::Changed { index: 3, seq: 3 })
        );
        // Deleted: entry 5 gone.
        let mut deleted = es.clone();
        deleted.remove(5);
        assert!(matches!(
            check(&deleted),
            Err(ChainBreak::Deleted {
                seq: 5,
                found: 6,
                ..
            })
        ));
        // Reordered: 5 and 6 swapped.
        let mut swapped = es.clone();
        swapped.swap(5, 6);
        assert!(matches!(
            check(&swapped),
            Err(ChainBreak::Reordered {
                seq: 5,
                found: 6,
                ..
            })
        ));
        // Genesis forged.
        let mut g = es.clone();
        g[0].prev = [1; 32];
        assert!(matches!(check(&g), Err(ChainBreak::Changed { seq: 0, .. })));
    }

    #[test]
    fn checkpoints_catch_a_rewritten_chain() {
        let key = Keypair::from_secret([7; 32]);
        let mut es: Vec<_> = chain(5).into_iter().map(|x| x.1).collect();
        let cp = Checkpoint {
            size: 5,
            head: es[4].hash,
        };
        let sig = cp.sign(&key);
        let line = b"checkpoint 5".to_vec();
        es.push(ChainEntry {
            seq: 5,
            prev: es[4].hash,
            hash: line_hash(&line),
            checkpoint: Some((cp, key.node_id(), sig)),
        });
        assert_eq!(check(&es).unwrap().checkpoints, 1);
        // Rewrite entry 2 and re-chain everything after it: only the checkpoint notices.
        let mut prev = es[1].hash;
        for (i, e) in es.iter_mut().enumerate().skip(2) {
            e.prev = prev;
            if i < 5 {
                e.hash = line_hash(format!("forged {i}").as_bytes());
            }
            prev = e.hash;
        }
        assert!(matches!(
            check(&es),
            Err(ChainBreak::Checkpoint { seq: 5, .. })
        ));
    }
}
