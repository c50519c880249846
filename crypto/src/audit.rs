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

/// What the genesis entry (seq 0) signs: the node the log belongs to, the SHA-256 of its
/// admission certificate (zero in open meshes) and when the log was started. A verifier that
/// knows the node id refuses a log whose first entry is not this, signed by that node, so
/// removing the oldest files is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Genesis {
    /// The node whose log this is.
    pub node: NodeId,
    /// SHA-256 of the node's admission certificate bytes at start (zeros if none).
    pub cert_sha256: [u8; 32],
    /// When the log was started, unix ms.
    pub started_ms: u64,
}

impl Genesis {
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(32 + 32 + 8);
        m.extend_from_slice(self.node.as_bytes());
        m.extend_from_slice(&self.cert_sha256);
        m.extend_from_slice(&self.started_ms.to_le_bytes());
        m
    }

    /// Signs the genesis with the node's key (context `audit-genesis`).
    pub fn sign(&self, key: &Keypair) -> Signature {
        key.sign(Context::AuditGenesis, &self.message())
    }

    /// Verifies the genesis signature by the node it names.
    pub fn verify(&self, sig: &Signature) -> Result<(), CryptoError> {
        self.node
            .verify(Context::AuditGenesis, &self.message(), sig)
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
    /// A checkpoint (or the genesis) is signed by a node other than the one the log belongs
    /// to: the expected node, or the signer of the genesis / first checkpoint when none is
    /// given (mixed signers).
    #[error("entry seq {seq} is signed by {signer}, not by {expected}: entries seq {unvouched_from}..={seq} are not vouched for by {expected} and may have been rewritten")]
    WrongSigner {
        /// Position of the entry.
        index: usize,
        /// Its seq.
        seq: u64,
        /// First entry after the last one the expected node signed (genesis or checkpoint):
        /// a rewritten entry lies in `unvouched_from..=seq`.
        unvouched_from: u64,
        /// Who signed it.
        signer: NodeId,
        /// Who should have.
        expected: NodeId,
    },
    /// The log does not start with a valid genesis entry at seq 0: its oldest entries were
    /// removed, or the genesis was forged.
    #[error("the log does not start with the node's signed genesis entry at seq 0 (first entry: seq {seq}; {why})")]
    NoGenesis {
        /// Position of the first entry.
        index: usize,
        /// Seq of the first entry.
        seq: u64,
        /// What is wrong.
        why: String,
    },
    /// Entries after the last checkpoint are signed by nobody: they could have been
    /// appended, changed or cut by anyone who can write the file.
    #[error("no signed checkpoint covers entries seq {from_seq}..={to_seq} at the end of the log")]
    Uncovered {
        /// Position of the first uncovered entry.
        index: usize,
        /// First uncovered seq.
        from_seq: u64,
        /// Last seq.
        to_seq: u64,
    },
}

impl ChainBreak {
    /// Position (0-based over all entries fed) of the first bad entry.
    pub fn index(&self) -> usize {
        match self {
            ChainBreak::Changed { index, .. }
            | ChainBreak::Deleted { index, .. }
            | ChainBreak::Reordered { index, .. }
            | ChainBreak::Checkpoint { index, .. }
            | ChainBreak::WrongSigner { index, .. }
            | ChainBreak::NoGenesis { index, .. }
            | ChainBreak::Uncovered { index, .. } => *index,
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
    /// The genesis it carries, with its signature, if it is one.
    pub genesis: Option<(Genesis, Signature)>,
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
    /// The node the log is bound to (the genesis node, checked against the expected one),
    /// if [`ChainChecker::finish_for`] was given one.
    pub node: Option<NodeId>,
    /// The genesis, if the log starts with one.
    pub genesis: Option<Genesis>,
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

    /// Checks the chain and checkpoint signatures only (the signer is whoever signed; no
    /// identity is bound). Prefer [`ChainChecker::finish_for`].
    pub fn finish(&self) -> Result<ChainReport, ChainBreak> {
        self.check_chain()
    }

    /// Checks everything pushed as the log of `expected`: the chain, a signed genesis by
    /// `expected` at seq 0, every checkpoint signed by `expected`, and a checkpoint as the
    /// last entry. Returns the report or the first break.
    pub fn finish_for(&self, expected: &NodeId) -> Result<ChainReport, ChainBreak> {
        let es = &self.entries;
        let Some(first) = es.first() else {
            return Err(ChainBreak::NoGenesis {
                index: 0,
                seq: 0,
                why: "the log is empty".into(),
            });
        };
        // Signers first: a rewritten log re-signed with another key is named as such, even
        // though its chain and signatures are internally consistent.
        match &first.genesis {
            Some((g, sig)) if first.seq == 0 => {
                if g.node != *expected {
                    return Err(ChainBreak::WrongSigner {
                        index: 0,
                        seq: 0,
                        unvouched_from: 0,
                        signer: g.node,
                        expected: *expected,
                    });
                }
                if g.verify(sig).is_err() {
                    return Err(ChainBreak::NoGenesis {
                        index: 0,
                        seq: 0,
                        why: "bad genesis signature".into(),
                    });
                }
            }
            _ => {
                return Err(ChainBreak::NoGenesis {
                    index: 0,
                    seq: first.seq,
                    why: if first.seq == 0 {
                        "entry 0 is not a genesis entry".into()
                    } else {
                        format!("entries 0..{} are missing", first.seq)
                    },
                })
            }
        }
        let mut vouched_to = 0;
        for (i, e) in es.iter().enumerate() {
            if i > 0 && e.genesis.is_some() {
                return Err(ChainBreak::NoGenesis {
                    index: i,
                    seq: e.seq,
                    why: "a second genesis entry in the middle of the log".into(),
                });
            }
            if let Some((_, signer, _)) = &e.checkpoint {
                if signer != expected {
                    return Err(ChainBreak::WrongSigner {
                        index: i,
                        seq: e.seq,
                        unvouched_from: vouched_to + 1,
                        signer: *signer,
                        expected: *expected,
                    });
                }
                vouched_to = e.seq;
            }
        }
        let mut r = self.check_chain()?;
        if let Some(last_cp) = es.iter().rposition(|e| e.checkpoint.is_some()) {
            if last_cp + 1 < es.len() {
                return Err(ChainBreak::Uncovered {
                    index: last_cp + 1,
                    from_seq: es[last_cp + 1].seq,
                    to_seq: es[es.len() - 1].seq,
                });
            }
        } else {
            return Err(ChainBreak::Uncovered {
                index: 0,
                from_seq: first.seq,
                to_seq: es[es.len() - 1].seq,
            });
        }
        r.node = Some(*expected);
        Ok(r)
    }

    fn check_chain(&self) -> Result<ChainReport, ChainBreak> {
        let es = &self.entries;
        let mut vouched_to = 0;
        let Some(first) = es.first() else {
            return Ok(ChainReport {
                entries: 0,
                starts_at: 0,
                checkpoints: 0,
                head: GENESIS,
                node: None,
                genesis: None,
            });
        };
        // Without an expected node, the log is bound to its genesis node (or the first
        // checkpoint's signer): every later signer must be the same one.
        let mut bound: Option<NodeId> = first.genesis.as_ref().map(|(g, _)| g.node);
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
                match bound {
                    Some(b) if b != *signer => {
                        return Err(ChainBreak::WrongSigner {
                            index: i,
                            seq: e.seq,
                            unvouched_from: vouched_to + 1,
                            signer: *signer,
                            expected: b,
                        })
                    }
                    _ => bound = Some(*signer),
                }
                vouched_to = e.seq;
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
            node: None,
            genesis: first.genesis.as_ref().map(|(g, _)| *g),
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
                    genesis: None,
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
            genesis: None,
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

    /// A log of `key`: genesis, `n` plain entries, then a checkpoint (signed by `signer`).
    fn bound_log(key: &Keypair, signer: &Keypair, n: u64) -> Vec<ChainEntry> {
        let g = Genesis {
            node: key.node_id(),
            cert_sha256: [3; 32],
            started_ms: 1,
        };
        let mut es = vec![ChainEntry {
            seq: 0,
            prev: GENESIS,
            hash: line_hash(b"genesis"),
            checkpoint: None,
            genesis: Some((g, g.sign(key))),
        }];
        for seq in 1..=n {
            es.push(ChainEntry {
                seq,
                prev: es[es.len() - 1].hash,
                hash: line_hash(format!("entry {seq}").as_bytes()),
                checkpoint: None,
                genesis: None,
            });
        }
        let head = es[es.len() - 1].hash;
        let cp = Checkpoint { size: n + 1, head };
        es.push(ChainEntry {
            seq: n + 1,
            prev: head,
            hash: line_hash(b"cp"),
            checkpoint: Some((cp, signer.node_id(), cp.sign(signer))),
            genesis: None,
        });
        es
    }

    fn check_for(es: &[ChainEntry], who: &NodeId) -> Result<ChainReport, ChainBreak> {
        let mut c = ChainChecker::new();
        for e in es {
            c.push(e.clone());
        }
        c.finish_for(who)
    }

    #[test]
    fn a_log_is_bound_to_its_node() {
        let node = Keypair::from_secret([1; 32]);
        let thief = Keypair::from_secret([2; 32]);
        let es = bound_log(&node, &node, 4);
        let r = check_for(&es, &node.node_id()).unwrap();
        assert_eq!(r.node, Some(node.node_id()));
        assert_eq!(r.checkpoints, 1);
        // Verified as somebody else's log: the genesis names the wrong node.
        assert!(matches!(
            check_for(&es, &thief.node_id()),
            Err(ChainBreak::WrongSigner { seq: 0, .. })
        ));
        // A checkpoint re-signed by another key: named, with the signer.
        let forged = bound_log(&node, &thief, 4);
        let e = check_for(&forged, &node.node_id()).unwrap_err();
        assert_eq!(
            e,
            ChainBreak::WrongSigner {
                index: 5,
                seq: 5,
                unvouched_from: 1,
                signer: thief.node_id(),
                expected: node.node_id()
            }
        );
        // Even without an expected node, mixed signers are refused.
        let mut mixed = es.clone();
        let cp = Checkpoint {
            size: 6,
            head: es[5].hash,
        };
        mixed.push(ChainEntry {
            seq: 6,
            prev: es[5].hash,
            hash: line_hash(b"cp2"),
            checkpoint: Some((cp, thief.node_id(), cp.sign(&thief))),
            genesis: None,
        });
        assert!(matches!(
            check(&mixed),
            Err(ChainBreak::WrongSigner { seq: 6, .. })
        ));
        // Oldest entries removed: no genesis.
        assert!(matches!(
            check_for(&es[2..], &node.node_id()),
            Err(ChainBreak::NoGenesis { seq: 2, .. })
        ));
        // A forged genesis signature.
        let mut g = es.clone();
        if let Some((gen, _)) = &g[0].genesis {
            g[0].genesis = Some((*gen, gen.sign(&thief)));
        }
        assert!(matches!(
            check_for(&g, &node.node_id()),
            Err(ChainBreak::NoGenesis { seq: 0, .. })
        ));
        // Entries after the last checkpoint are unsigned.
        let mut tail = es.clone();
        tail.push(ChainEntry {
            seq: 6,
            prev: es[5].hash,
            hash: line_hash(b"late"),
            checkpoint: None,
            genesis: None,
        });
        assert_eq!(
            check_for(&tail, &node.node_id()),
            Err(ChainBreak::Uncovered {
                index: 6,
                from_seq: 6,
                to_seq: 6
            })
        );
        // No checkpoint at all.
        assert!(matches!(
            check_for(&es[..5], &node.node_id()),
            Err(ChainBreak::Uncovered { from_seq: 0, .. })
        ));
    }
}
