//! Signed quorum votes and the pure tally over them (sans-IO: the node and the simulator use
//! the same code).
//!
//! A callee's node signs a [`Vote`] under [`Context::Vote`]: the call id, the [`Subject`] (mesh,
//! capability, the quorum's terms and the hash of the question, as one digest), the hash of its
//! agent's answer, its node id, its epoch and the time of signing. The caller tallies the signed
//! votes it collected: a vote with a bad signature, another call's id, another subject or a
//! signer outside the voter set does not count; a second identical vote from one node counts
//! once; two different answers signed by one node for one call, subject and epoch are an
//! [`Equivocation`], and none of that node's votes count.
#![forbid(unsafe_code)]

use agentmesh_crypto::{Context, CryptoError, Keypair, NodeId, Signature};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Most voters in one quorum call.
pub const VOTERS_MAX: usize = 64;
/// Most ballots one tally looks at (several per voter at most, from retries or relays).
pub const BALLOTS_MAX: usize = 4 * VOTERS_MAX;
/// Length of the signed vote message: call id, subject, answer hash, node id, epoch, time.
pub const VOTE_MESSAGE_LEN: usize = 16 + 32 + 32 + 32 + 8 + 8;
/// Longest mesh id a subject names, in bytes (the certificate limit).
pub const SUBJECT_MESH_ID_LEN_MAX: usize = 64;
/// Longest capability a subject names, in bytes (the call header limit).
pub const SUBJECT_CAPABILITY_LEN_MAX: usize = 256;
/// Longest decision key a subject names, in bytes.
pub const SUBJECT_KEY_LEN_MAX: usize = 1024;
/// Domain tag of the subject digest (a new layout gets a new tag).
const SUBJECT_TAG: &[u8] = b"agentmesh/quorum-subject/1";

/// What a quorum asks, as every voter signs it: the mesh, the capability, the terms
/// (`n`, `f` or majority, the decision key) and the hash of the question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The mesh id (empty in an open mesh).
    pub mesh_id: String,
    /// The capability asked.
    pub capability: String,
    /// Voters asked.
    pub n: u32,
    /// Byzantine faults tolerated; None: majority.
    pub f: Option<u32>,
    /// The decision key expression, if the answers are compared on a part.
    pub key: Option<String>,
    /// SHA-256 of the question (RFC 8785 canonical JSON, or the raw bytes if not JSON).
    pub question_hash: [u8; 32],
}

/// Why a subject was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// A field is longer than its named limit; nothing was signed.
    #[error("subject field {0} exceeds its limit")]
    Limit(&'static str),
}

impl Subject {
    /// Checks the field limits (so a vote's subject is bounded on the wire and on disk).
    pub fn check(&self) -> Result<(), SubjectError> {
        if self.mesh_id.len() > SUBJECT_MESH_ID_LEN_MAX {
            return Err(SubjectError::Limit("mesh_id"));
        }
        if self.capability.len() > SUBJECT_CAPABILITY_LEN_MAX {
            return Err(SubjectError::Limit("capability"));
        }
        if self
            .key
            .as_ref()
            .is_some_and(|k| k.len() > SUBJECT_KEY_LEN_MAX)
        {
            return Err(SubjectError::Limit("key"));
        }
        Ok(())
    }

    /// The digest a vote signs: SHA-256 over a domain tag and every field, each string
    /// length-prefixed, so two different subjects never share an encoding.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(SUBJECT_TAG);
        let text = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        text(&mut h, &self.mesh_id);
        text(&mut h, &self.capability);
        h.update(self.n.to_be_bytes());
        match self.f {
            None => h.update([0u8]),
            Some(f) => {
                h.update([1u8]);
                h.update(f.to_be_bytes());
            }
        }
        match &self.key {
            None => h.update([0u8]),
            Some(k) => {
                h.update([1u8]);
                text(&mut h, k);
            }
        }
        h.update(self.question_hash);
        h.finalize().into()
    }
}

/// What a callee's node vouches for: that, asked `subject` in call `call_id`, its agent
/// answered `answer_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The quorum call's id (the same for every voter of one call).
    pub call_id: [u8; 16],
    /// [`Subject::digest`] of what was asked.
    pub subject: [u8; 32],
    /// SHA-256 of the answer in canonical form.
    pub answer_hash: [u8; 32],
    /// The signing node.
    pub node_id: NodeId,
    /// The signer's session epoch (its start time, unix s): a restarted node signs anew.
    pub epoch: u64,
    /// When the vote was signed (unix s, the signer's clock): its certificate must be valid then.
    pub signed_at: u64,
}

impl Vote {
    /// The exact bytes signed (fixed layout, so there is one encoding).
    pub fn message(&self) -> [u8; VOTE_MESSAGE_LEN] {
        let mut m = [0u8; VOTE_MESSAGE_LEN];
        m[..16].copy_from_slice(&self.call_id);
        m[16..48].copy_from_slice(&self.subject);
        m[48..80].copy_from_slice(&self.answer_hash);
        m[80..112].copy_from_slice(self.node_id.as_bytes());
        m[112..120].copy_from_slice(&self.epoch.to_be_bytes());
        m[120..].copy_from_slice(&self.signed_at.to_be_bytes());
        m
    }

    /// Signs as `key`; the vote's `node_id` becomes the key's.
    pub fn sign(mut self, key: &Keypair) -> SignedVote {
        self.node_id = key.node_id();
        let signature = key.sign(Context::Vote, &self.message());
        SignedVote {
            vote: self,
            signature,
        }
    }
}

/// A vote and its signature by `vote.node_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote {
    /// What is vouched for.
    pub vote: Vote,
    /// Signature over [`Vote::message`] in [`Context::Vote`].
    pub signature: Signature,
}

impl SignedVote {
    /// Checks the signature against the vote's own node id.
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.vote
            .node_id
            .verify(Context::Vote, &self.vote.message(), &self.signature)
    }
}

/// How many matching votes decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// More than half of `n`.
    Majority,
    /// Byzantine mode: up to `f` voters may lie; needs `n ≥ 3f+1`.
    Byzantine {
        /// Faulty voters tolerated.
        f: u32,
    },
}

/// Why a quorum's shape was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// `n` is 0 or above [`VOTERS_MAX`].
    #[error("n must be 1 to {VOTERS_MAX}, got {0}")]
    BadN(u32),
    /// Byzantine mode with `n < 3f+1`.
    #[error("byzantine f = {f} needs n >= 3f+1 = {need}, got n = {n}")]
    TooFewForF {
        /// Voters asked for.
        n: u32,
        /// Faults declared.
        f: u32,
        /// Voters needed.
        need: u32,
    },
}

impl Threshold {
    /// Matching votes needed among `n` voters: a majority, or in byzantine mode
    /// `max(2f+1, ⌊n/2⌋+1)` (2f+1 keeps f liars from deciding; the majority keeps two
    /// values from both deciding when `n > 3f+1`).
    pub fn required(&self, n: u32) -> Result<u32, ThresholdError> {
        if n == 0 || n as usize > VOTERS_MAX {
            return Err(ThresholdError::BadN(n));
        }
        let majority = n / 2 + 1;
        match *self {
            Threshold::Majority => Ok(majority),
            Threshold::Byzantine { f } => {
                let need = f.saturating_mul(3).saturating_add(1);
                if n < need {
                    return Err(ThresholdError::TooFewForF { n, f, need });
                }
                Ok((2 * f + 1).max(majority))
            }
        }
    }
}

/// One collected vote and the digest of the value it is compared on (the answer itself, or
/// the part a key expression picks; equal to `answer_hash` without a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ballot {
    /// The signed vote.
    pub vote: SignedVote,
    /// Digest of the compared value.
    pub value: [u8; 32],
}

/// Why a ballot did not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejected {
    /// The signature does not verify.
    BadSignature,
    /// It is for another call.
    WrongCall,
    /// It signs another subject: another mesh, capability, terms or question.
    WrongSubject,
    /// Its signer is not one of the voters.
    NotMember,
    /// The same node already voted the same answer (counted once).
    Duplicate,
    /// The node signed another answer in another epoch (a restart): neither counts, and it
    /// is no proof of equivocation.
    Conflicting,
    /// One of two different answers signed by the node in one epoch: neither counts.
    Equivocated,
    /// Beyond [`BALLOTS_MAX`].
    TooMany,
}

/// Two different answers signed by one node for one call, subject and epoch: a proof anyone
/// can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Equivocation {
    /// One signed answer.
    pub a: SignedVote,
    /// Another, different, for the same call, subject, node and epoch.
    pub b: SignedVote,
}

/// Why an equivocation proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A signature does not verify.
    #[error("a signature does not verify: {0}")]
    Signature(#[from] CryptoError),
    /// The two votes differ in node, call, subject or epoch, or agree on the answer.
    #[error("not two different answers by one node for one call, subject and epoch")]
    NotEquivocation,
}

impl Equivocation {
    /// Checks the proof: both signatures hold; same node, call, subject and epoch;
    /// different answers.
    pub fn verify(&self) -> Result<(), ProofError> {
        self.a.verify()?;
        self.b.verify()?;
        let (a, b) = (&self.a.vote, &self.b.vote);
        let same = a.node_id == b.node_id
            && a.call_id == b.call_id
            && a.subject == b.subject
            && a.epoch == b.epoch;
        if !same || a.answer_hash == b.answer_hash {
            return Err(ProofError::NotEquivocation);
        }
        Ok(())
    }

    /// The node proven to equivocate.
    pub fn node(&self) -> NodeId {
        self.a.vote.node_id
    }
}

/// The result of counting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Matching votes needed.
    pub required: u32,
    /// Nodes behind each compared value (only counted votes).
    pub counts: BTreeMap<[u8; 32], BTreeSet<NodeId>>,
    /// The value that reached `required`, if any (at most one can).
    pub decided: Option<[u8; 32]>,
    /// Counted voters whose value differs from the decided one.
    pub dissenters: BTreeSet<NodeId>,
    /// Proofs of equivocation (one per node).
    pub equivocations: Vec<Equivocation>,
    /// Ballots that did not count, and why.
    pub rejected: Vec<(NodeId, Rejected)>,
}

impl Tally {
    /// Nodes whose vote counted.
    pub fn counted(&self) -> usize {
        self.counts.values().map(BTreeSet::len).sum()
    }

    /// Whether a decision is still possible if `pending` more voters answer.
    pub fn can_still_decide(&self, pending: u32) -> bool {
        let best = self.counts.values().map(BTreeSet::len).max().unwrap_or(0) as u32;
        self.decided.is_some() || best + pending >= self.required
    }
}

/// Counts `ballots` for `call_id` and `subject` among `voters`, `required` matching votes
/// deciding. Pure and deterministic: the same ballots give the same tally in any order.
pub fn tally(
    call_id: &[u8; 16],
    subject: &[u8; 32],
    voters: &BTreeSet<NodeId>,
    required: u32,
    ballots: &[Ballot],
) -> Tally {
    let mut out = Tally {
        required,
        ..Tally::default()
    };
    // First valid ballot per node; a different second one excludes the node.
    let mut firsts: BTreeMap<NodeId, Ballot> = BTreeMap::new();
    let mut excluded: BTreeSet<NodeId> = BTreeSet::new();
    for (i, b) in ballots.iter().enumerate() {
        let node = b.vote.vote.node_id;
        if i >= BALLOTS_MAX {
            out.rejected.push((node, Rejected::TooMany));
            continue;
        }
        if &b.vote.vote.call_id != call_id {
            out.rejected.push((node, Rejected::WrongCall));
            continue;
        }
        if !voters.contains(&node) {
            out.rejected.push((node, Rejected::NotMember));
            continue;
        }
        if b.vote.verify().is_err() {
            out.rejected.push((node, Rejected::BadSignature));
            continue;
        }
        if &b.vote.vote.subject != subject {
            out.rejected.push((node, Rejected::WrongSubject));
            continue;
        }
        match firsts.get(&node) {
            None => {
                firsts.insert(node, *b);
            }
            Some(first) if first.vote.vote.answer_hash == b.vote.vote.answer_hash => {
                out.rejected.push((node, Rejected::Duplicate));
            }
            Some(first) => {
                let proof = Equivocation {
                    a: first.vote,
                    b: b.vote,
                };
                let why = if proof.verify().is_ok() {
                    Rejected::Equivocated
                } else {
                    Rejected::Conflicting
                };
                if excluded.insert(node) {
                    if why == Rejected::Equivocated {
                        out.equivocations.push(proof);
                    }
                    // The first vote is refused too.
                    out.rejected.push((node, why));
                }
                out.rejected.push((node, why));
            }
        }
    }
    for (node, b) in &firsts {
        if !excluded.contains(node) {
            out.counts.entry(b.value).or_default().insert(*node);
        }
    }
    out.decided = out
        .counts
        .iter()
        .find(|(_, nodes)| nodes.len() as u32 >= required)
        .map(|(v, _)| *v);
    if let Some(d) = out.decided {
        out.dissenters = out
            .counts
            .iter()
            .filter(|(v, _)| **v != d)
            .flat_map(|(_, n)| n.iter().copied())
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJ: [u8; 32] = [3; 32];

    fn key(b: u8) -> Keypair {
        Keypair::from_secret([b; 32])
    }

    fn ballot(k: &Keypair, call: [u8; 16], answer: u8) -> Ballot {
        let h = [answer; 32];
        let vote = Vote {
            call_id: call,
            subject: SUBJ,
            answer_hash: h,
            node_id: k.node_id(),
            epoch: 1,
            signed_at: 100,
        }
        .sign(k);
        Ballot { vote, value: h }
    }

    fn voters(keys: &[Keypair]) -> BTreeSet<NodeId> {
        keys.iter().map(Keypair::node_id).collect()
    }

    #[test]
    fn thresholds() {
        let cases: &[(Threshold, u32, Result<u32, ()>)] = &[
            (Threshold::Majority, 3, Ok(2)),
            (Threshold::Majority, 4, Ok(3)),
            (Threshold::Byzantine { f: 1 }, 4, Ok(3)),
            (Threshold::Byzantine { f: 1 }, 3, Err(())),
            (Threshold::Byzantine { f: 2 }, 7, Ok(5)),
            (Threshold::Byzantine { f: 1 }, 10, Ok(6)),
            (Threshold::Byzantine { f: 0 }, 1, Ok(1)),
            (Threshold::Majority, 0, Err(())),
            (Threshold::Majority, VOTERS_MAX as u32 + 1, Err(())),
        ];
        for (t, n, want) in cases {
            assert_eq!(t.required(*n).map_err(|_| ()), *want, "{t:?} n={n}");
        }
    }

    #[test]
    fn signature_is_domain_separated_and_bound_to_fields() {
        let k = key(1);
        let b = ballot(&k, [7; 16], 1);
        b.vote.verify().unwrap();
        let mut other = b.vote;
        other.vote.answer_hash = [2; 32];
        assert!(other.verify().is_err());
        let mut other = b.vote;
        other.vote.epoch = 2;
        assert!(other.verify().is_err());
        let mut other = b.vote;
        other.vote.subject = [0; 32];
        assert!(other.verify().is_err());
        let mut other = b.vote;
        other.vote.signed_at = 1;
        assert!(other.verify().is_err());
        let sig = k.sign(Context::NodeRecord, &b.vote.vote.message());
        let wrong_ctx = SignedVote {
            vote: b.vote.vote,
            signature: sig,
        };
        assert!(wrong_ctx.verify().is_err());
    }

    #[test]
    fn majority_decides_and_names_dissenters() {
        let keys: Vec<Keypair> = (1..=4).map(key).collect();
        let call = [9; 16];
        let bs = vec![
            ballot(&keys[0], call, 1),
            ballot(&keys[1], call, 1),
            ballot(&keys[2], call, 1),
            ballot(&keys[3], call, 2),
        ];
        let t = tally(&call, &SUBJ, &voters(&keys), 3, &bs);
        assert_eq!(t.decided, Some([1; 32]));
        assert_eq!(t.dissenters, [keys[3].node_id()].into_iter().collect());
    }

    #[test]
    fn duplicates_count_once_and_outsiders_not_at_all() {
        let keys: Vec<Keypair> = (1..=4).map(key).collect();
        let outsider = key(50);
        let call = [9; 16];
        let bs = vec![
            ballot(&keys[0], call, 1),
            ballot(&keys[0], call, 1),
            ballot(&keys[0], call, 1),
            ballot(&outsider, call, 1),
            ballot(&keys[1], [8; 16], 1),
        ];
        let t = tally(&call, &SUBJ, &voters(&keys), 2, &bs);
        assert_eq!(t.decided, None, "one node voting thrice is one vote");
        assert_eq!(t.counted(), 1);
        let why: Vec<Rejected> = t.rejected.iter().map(|r| r.1).collect();
        assert_eq!(
            why,
            [
                Rejected::Duplicate,
                Rejected::Duplicate,
                Rejected::NotMember,
                Rejected::WrongCall
            ]
        );
    }

    #[test]
    fn equivocation_is_proven_and_excluded() {
        let keys: Vec<Keypair> = (1..=4).map(key).collect();
        let call = [9; 16];
        let bs = vec![
            ballot(&keys[0], call, 1),
            ballot(&keys[1], call, 1),
            ballot(&keys[2], call, 2),
            ballot(&keys[2], call, 1),
        ];
        let t = tally(&call, &SUBJ, &voters(&keys), 3, &bs);
        assert_eq!(t.decided, None, "the equivocator's votes do not count");
        assert_eq!(t.equivocations.len(), 1);
        t.equivocations[0].verify().unwrap();
        assert!(!t.can_still_decide(0));
        assert!(t.can_still_decide(1));
    }

    #[test]
    fn forged_signature_does_not_count() {
        let keys: Vec<Keypair> = (1..=3).map(key).collect();
        let call = [9; 16];
        let mut forged = ballot(&keys[0], call, 1);
        forged.vote.vote.node_id = keys[1].node_id();
        let t = tally(&call, &SUBJ, &voters(&keys), 1, &[forged]);
        assert_eq!(
            t.rejected,
            vec![(keys[1].node_id(), Rejected::BadSignature)]
        );
        assert_eq!(t.decided, None);
    }

    fn subject() -> Subject {
        Subject {
            mesh_id: "m".into(),
            capability: "loan.approve".into(),
            n: 4,
            f: Some(1),
            key: Some("decision".into()),
            question_hash: [7; 32],
        }
    }

    #[test]
    fn subject_digest_covers_every_field() {
        let base = subject();
        let d = base.digest();
        let variants = [
            Subject {
                mesh_id: "m2".into(),
                ..base.clone()
            },
            Subject {
                capability: "loan.deny".into(),
                ..base.clone()
            },
            Subject {
                n: 3,
                ..base.clone()
            },
            Subject {
                f: None,
                ..base.clone()
            },
            Subject {
                f: Some(0),
                ..base.clone()
            },
            Subject {
                key: None,
                ..base.clone()
            },
            Subject {
                key: Some("decisio".into()),
                ..base.clone()
            },
            Subject {
                question_hash: [8; 32],
                ..base.clone()
            },
            // Length prefixes: moving bytes between fields changes the digest.
            Subject {
                mesh_id: "mloan.approve".into(),
                capability: String::new(),
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.digest(), d, "{v:?}");
        }
        assert!(base.check().is_ok());
        let long = Subject {
            capability: "x".repeat(SUBJECT_CAPABILITY_LEN_MAX + 1),
            ..base
        };
        assert_eq!(long.check(), Err(SubjectError::Limit("capability")));
    }

    #[test]
    fn another_subject_does_not_count() {
        let keys: Vec<Keypair> = (1..=3).map(key).collect();
        let call = [9; 16];
        let mut moved = ballot(&keys[0], call, 1);
        moved.vote.vote.subject = [4; 32];
        moved.vote = moved.vote.vote.sign(&keys[0]);
        let t = tally(&call, &SUBJ, &voters(&keys), 1, &[moved]);
        assert_eq!(
            t.rejected,
            vec![(keys[0].node_id(), Rejected::WrongSubject)]
        );
        assert_eq!(t.decided, None);
    }

    #[test]
    fn two_epochs_conflict_but_prove_nothing() {
        let keys: Vec<Keypair> = (1..=3).map(key).collect();
        let call = [9; 16];
        let a = ballot(&keys[0], call, 1);
        let mut b = ballot(&keys[0], call, 2);
        b.vote.vote.epoch = 2;
        b.vote = b.vote.vote.sign(&keys[0]);
        let t = tally(&call, &SUBJ, &voters(&keys), 1, &[a, b]);
        assert!(t.equivocations.is_empty());
        assert_eq!(t.counted(), 0, "neither vote counts");
        assert_eq!(
            t.rejected,
            vec![
                (keys[0].node_id(), Rejected::Conflicting),
                (keys[0].node_id(), Rejected::Conflicting)
            ]
        );
        let proof = Equivocation {
            a: a.vote,
            b: b.vote,
        };
        assert_eq!(proof.verify(), Err(ProofError::NotEquivocation));
        let same = Equivocation {
            a: a.vote,
            b: a.vote,
        };
        assert_eq!(same.verify(), Err(ProofError::NotEquivocation));
    }
}
