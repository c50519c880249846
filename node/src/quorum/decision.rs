//! The decision file: what a quorum asked, every signed vote, each voter's admission
//! certificate, and the outcome; [`super::verify`] re-checks it offline.

use super::{compared_value, value_digest, QuorumRequest, Reply};
use agentmesh_crypto::{NodeId, Signature};
use agentmesh_vote::{Equivocation, Rejected, SignedVote, Subject, Tally, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a vote signed, as JSON: the quorum's [`Subject`] in readable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectJson {
    /// Mesh id (empty in an open mesh).
    pub mesh_id: String,
    /// Capability asked.
    pub capability: String,
    /// Voters asked.
    pub n: u32,
    /// Byzantine faults tolerated; null: majority.
    pub f: Option<u32>,
    /// Decision key expression, if any.
    pub key: Option<String>,
    /// SHA-256 of the question's RFC 8785 form, hex.
    pub question_hash: String,
}

impl From<&Subject> for SubjectJson {
    fn from(s: &Subject) -> Self {
        SubjectJson {
            mesh_id: s.mesh_id.clone(),
            capability: s.capability.clone(),
            n: s.n,
            f: s.f,
            key: s.key.clone(),
            question_hash: hex::encode(s.question_hash),
        }
    }
}

impl SubjectJson {
    /// Back to a [`Subject`].
    pub fn to_subject(&self) -> Result<Subject, String> {
        Ok(Subject {
            mesh_id: self.mesh_id.clone(),
            capability: self.capability.clone(),
            n: self.n,
            f: self.f,
            key: self.key.clone(),
            question_hash: arr("question_hash", &self.question_hash)?,
        })
    }
}

fn arr<const N: usize>(field: &str, h: &str) -> Result<[u8; N], String> {
    let v = hex::decode(h).map_err(|e| format!("{field}: {e}"))?;
    v.try_into()
        .map_err(|_| format!("{field}: expected {N} bytes"))
}

/// A signed vote as JSON (hex and peer ids, so a decision file is readable), with the
/// subject it signed spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteSig {
    /// Call id, hex.
    pub call_id: String,
    /// What the vote signed (its digest is in the signed message).
    pub subject: SubjectJson,
    /// SHA-256 of the canonical answer, hex.
    pub answer_hash: String,
    /// Signing node.
    pub node_id: String,
    /// Signer's epoch.
    pub epoch: u64,
    /// When the signer signed (unix s, its clock).
    pub signed_at: u64,
    /// ed25519 signature, hex.
    pub signature: String,
}

impl VoteSig {
    /// The JSON form of `s`, which signed `subject`.
    pub fn new(s: &SignedVote, subject: &Subject) -> Self {
        VoteSig {
            call_id: hex::encode(s.vote.call_id),
            subject: subject.into(),
            answer_hash: hex::encode(s.vote.answer_hash),
            node_id: s.vote.node_id.to_string(),
            epoch: s.vote.epoch,
            signed_at: s.vote.signed_at,
            signature: hex::encode(s.signature.0),
        }
    }

    /// Back to a [`SignedVote`] over this record's subject (not yet verified).
    pub fn to_signed(&self) -> Result<SignedVote, String> {
        Ok(SignedVote {
            vote: Vote {
                call_id: arr("call_id", &self.call_id)?,
                subject: self.subject.to_subject()?.digest(),
                answer_hash: arr("answer_hash", &self.answer_hash)?,
                node_id: self.node_id.parse().map_err(|e| format!("node_id: {e}"))?,
                epoch: self.epoch,
                signed_at: self.signed_at,
            },
            signature: Signature(arr("signature", &self.signature)?),
        })
    }
}

/// One voter's answer as the decision records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VoteRecord {
    /// The node that signed.
    pub node_id: String,
    /// Its agent.
    pub agent: String,
    /// The whole answer.
    pub answer: serde_json::Value,
    /// The compared part (the answer itself without a key).
    pub value: serde_json::Value,
    /// Time to the complete answer, in ms.
    pub latency_ms: f64,
    /// The callee node's signature.
    pub signature: VoteSig,
}

/// A voter that gave no countable vote, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silent {
    /// The node.
    pub node_id: String,
    /// Why (error code and message, or a refused vote).
    pub reason: String,
}

/// A candidate a quorum could not ask, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Excluded {
    /// The node.
    pub node_id: String,
    /// Why it is not eligible.
    pub reason: String,
}

/// The outcome of a quorum call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuorumDecision {
    /// `decided` or `needs_review`.
    pub status: String,
    /// The decided value (the compared part), or null.
    pub value: serde_json::Value,
    /// The mesh the voters are admitted to (empty in an open mesh).
    #[serde(default)]
    pub mesh_id: String,
    /// Capability asked.
    pub capability: String,
    /// SHA-256 of the question's RFC 8785 form, hex (every vote signs it).
    #[serde(default)]
    pub question_hash: String,
    /// The quorum's call id, hex (every vote signs it).
    pub call_id: String,
    /// Voters asked.
    pub n: u32,
    /// Byzantine faults tolerated, if byzantine mode.
    pub f: Option<u32>,
    /// Matching votes required.
    pub required: u32,
    /// The key expression, if any.
    pub key: Option<String>,
    /// The nodes asked (only their votes count).
    pub voters: Vec<String>,
    /// Each signing voter's admission certificate (hex of its encoding), by node id.
    #[serde(default)]
    pub certs: BTreeMap<String, String>,
    /// Counted and uncounted votes received.
    pub votes: Vec<VoteRecord>,
    /// Voters whose value differs from the decided one.
    pub dissenters: Vec<String>,
    /// Voters not waited for: the outcome was settled before their answer came.
    #[serde(default)]
    pub late: Vec<Silent>,
    /// Voters that failed, answered without the decision key, or whose vote was refused.
    #[serde(default)]
    pub failed: Vec<Silent>,
    /// Proofs that a node signed two answers to this call.
    pub equivocations: Vec<[VoteSig; 2]>,
    /// Every signature received, in arrival order.
    pub signatures: Vec<VoteSig>,
    /// Whole quorum latency, in ms.
    pub latency_ms: f64,
    /// Latency of the slowest vote received, in ms.
    pub slowest_vote_ms: f64,
    /// The review capability's answer, when `needs_review` was forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<serde_json::Value>,
}

/// What [`render`] needs besides the replies.
pub(crate) struct Asked<'a> {
    pub capability: &'a str,
    pub req: &'a QuorumRequest,
    pub required: u32,
    pub call_id: [u8; 16],
    pub subject: &'a Subject,
    pub voters: Vec<NodeId>,
    pub certs: BTreeMap<String, String>,
}

/// The decision for `replies` under `tally`.
pub(crate) fn render(a: &Asked<'_>, replies: &[Reply], tally: &Tally) -> QuorumDecision {
    let key = a.req.key.as_deref();
    let mut votes = Vec::new();
    let mut failed = Vec::new();
    let mut value = serde_json::Value::Null;
    let mut slowest = 0.0f64;
    for r in replies {
        match &r.result {
            Ok((answer, sv, _)) => {
                let v = compared_value(key, answer).unwrap_or_default();
                let digest = match key {
                    None => sv.vote.answer_hash,
                    Some(_) => value_digest(&v),
                };
                if tally.decided == Some(digest) {
                    value = v.clone();
                }
                slowest = slowest.max(r.latency_ms);
                votes.push(VoteRecord {
                    node_id: r.node.to_string(),
                    agent: r.agent.clone(),
                    answer: answer.clone(),
                    value: v,
                    latency_ms: round1(r.latency_ms),
                    signature: VoteSig::new(sv, a.subject),
                });
            }
            Err(why) => failed.push(Silent {
                node_id: r.node.to_string(),
                reason: why.clone(),
            }),
        }
    }
    let mut refused = std::collections::BTreeSet::new();
    for (node, why) in &tally.rejected {
        if refused.insert(*node) {
            failed.push(Silent {
                node_id: node.to_string(),
                reason: format!("vote refused: {}", rejected_name(*why)),
            });
        }
    }
    QuorumDecision {
        status: if tally.decided.is_some() {
            "decided"
        } else {
            "needs_review"
        }
        .into(),
        value,
        mesh_id: a.subject.mesh_id.clone(),
        capability: a.capability.to_string(),
        question_hash: hex::encode(a.subject.question_hash),
        call_id: hex::encode(a.call_id),
        n: a.req.n,
        f: a.req.f,
        required: a.required,
        key: a.req.key.clone(),
        voters: a.voters.iter().map(|n| n.to_string()).collect(),
        certs: a.certs.clone(),
        signatures: votes.iter().map(|v| v.signature.clone()).collect(),
        votes,
        dissenters: tally.dissenters.iter().map(|d| d.to_string()).collect(),
        late: Vec::new(),
        failed,
        equivocations: tally
            .equivocations
            .iter()
            .map(|e| equivocation_sigs(e, a.subject))
            .collect(),
        latency_ms: 0.0,
        slowest_vote_ms: round1(slowest),
        review: None,
    }
}

/// The JSON form of an equivocation proof over `subject`.
pub fn equivocation_sigs(e: &Equivocation, subject: &Subject) -> [VoteSig; 2] {
    [VoteSig::new(&e.a, subject), VoteSig::new(&e.b, subject)]
}

/// A short explanation of why a vote did not count.
pub fn rejected_name(r: Rejected) -> &'static str {
    match r {
        Rejected::BadSignature => "bad signature",
        Rejected::WrongCall => "signed for another call",
        Rejected::WrongSubject => "signed another question, capability or terms",
        Rejected::NotMember => "signer is not a voter",
        Rejected::Duplicate => "duplicate (counted once)",
        Rejected::Conflicting => "two different answers signed in different epochs",
        Rejected::Equivocated => "equivocation: two different answers signed for this call",
        Rejected::TooMany => "too many ballots",
    }
}

/// Rounds to one decimal.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
