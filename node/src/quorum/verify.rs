//! Offline verification of a decision file, by anyone holding the mesh root's public key.
//!
//! With `root`, [`verify_decision`] proves: every counted vote was signed by a node whose
//! admission certificate (recorded in the file) was issued by that root for this mesh and
//! was valid when the vote was signed; voters are distinct nodes; every vote signs this
//! call, this mesh, capability, terms (`n`, `f`, key) and question hash; each recorded answer
//! is the one signed; and the tally over the votes gives the recorded status, value and
//! dissenters. Without `root` only the signatures and the tally are checked: anyone can sign
//! with a fresh key, so that proves nothing about who voted.

use super::decision::{QuorumDecision, SubjectJson, VoteSig};
use super::{compared_value, value_digest};
use agentmesh_crypto::{NodeId, SignedCert};
use agentmesh_vote::{self as vote, Ballot, Equivocation, SignedVote, Subject, Threshold};
use agentmesh_vote::{Rejected, VOTERS_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most problems one report lists (a hostile file could produce one per vote).
pub const PROBLEMS_MAX: usize = 256;

/// What an offline check of a decision found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True if every check passed.
    pub valid: bool,
    /// True if voters' certificates were checked against a mesh root.
    pub certificates_checked: bool,
    /// Signatures that verified.
    pub signatures_ok: usize,
    /// Votes that count after the tally.
    pub counted: usize,
    /// The recomputed status.
    pub status: String,
    /// Problems found, empty if valid; each names its fault.
    pub problems: Vec<String>,
}

struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        if self.0.len() < PROBLEMS_MAX {
            self.0.push(p);
        }
    }
}

fn threshold_name(f: Option<u32>) -> String {
    match f {
        Some(f) => format!("byzantine f = {f}"),
        None => "majority".into(),
    }
}

/// How a vote's signed subject differs from the decision's: each differing field, named.
fn subject_faults(signed: &SubjectJson, d: &QuorumDecision) -> Vec<String> {
    let mut out = Vec::new();
    if signed.mesh_id != d.mesh_id {
        out.push(format!(
            "signed for mesh {:?}, the decision says {:?}",
            signed.mesh_id, d.mesh_id
        ));
    }
    if signed.capability != d.capability {
        out.push(format!(
            "signed for capability {:?}, the decision says {:?} (relabelled capability)",
            signed.capability, d.capability
        ));
    }
    if signed.question_hash != d.question_hash {
        out.push(format!(
            "signed for question {}, the decision's question is {} (vote moved from another question)",
            short(&signed.question_hash),
            short(&d.question_hash)
        ));
    }
    if signed.n != d.n || signed.f != d.f {
        out.push(format!(
            "signed under n = {}, {}; the decision says n = {}, {} (quorum terms rewritten)",
            signed.n,
            threshold_name(signed.f),
            d.n,
            threshold_name(d.f)
        ));
    }
    if signed.key != d.key {
        out.push(format!(
            "signed under decision key {:?}, the decision says {:?} (quorum terms rewritten)",
            signed.key, d.key
        ));
    }
    out
}

fn short(h: &str) -> String {
    h.chars().take(16).collect()
}

/// Checks `cert_hex` for `node` against `root` and `mesh_id` at `at` (unix s).
fn check_cert(
    cert_hex: Option<&String>,
    root: &NodeId,
    mesh_id: &str,
    node: &NodeId,
    at: u64,
) -> Result<(), String> {
    let hex_text = cert_hex.ok_or("no admission certificate recorded for this voter")?;
    let bytes = hex::decode(hex_text).map_err(|e| format!("certificate is not hex: {e}"))?;
    let cert = SignedCert::from_bytes(&bytes).map_err(|e| format!("certificate: {e}"))?;
    cert.verify(root, mesh_id, node, at)
        .map(|_| ())
        .map_err(|e| format!("certificate does not admit it at vote time {at}: {e}"))
}

/// Re-checks a decision offline (see the module doc for what it proves with and without
/// `root`).
pub fn verify_decision(d: &QuorumDecision, root: Option<&NodeId>) -> VerifyReport {
    let mut problems = Problems(Vec::new());
    let fail = |p: String| VerifyReport {
        valid: false,
        certificates_checked: root.is_some(),
        signatures_ok: 0,
        counted: 0,
        status: "invalid".into(),
        problems: vec![p],
    };
    let call_id: Option<[u8; 16]> = hex::decode(&d.call_id).ok().and_then(|v| v.try_into().ok());
    let Some(call_id) = call_id else {
        return fail("call_id is not 16 hex bytes".into());
    };
    let subject_json = SubjectJson {
        mesh_id: d.mesh_id.clone(),
        capability: d.capability.clone(),
        n: d.n,
        f: d.f,
        key: d.key.clone(),
        question_hash: d.question_hash.clone(),
    };
    let subject: Subject = match subject_json.to_subject() {
        Ok(s) => s,
        Err(e) => return fail(format!("the decision's {e}")),
    };
    if let Err(e) = subject.check() {
        return fail(e.to_string());
    }
    let expected_subject = subject.digest();
    let threshold = match d.f {
        Some(f) => Threshold::Byzantine { f },
        None => Threshold::Majority,
    };
    match threshold.required(d.n) {
        Ok(r) if r == d.required => {}
        Ok(r) => problems.push(format!("required is {} but n/f give {r}", d.required)),
        Err(e) => problems.push(format!("threshold: {e}")),
    }
    if d.voters.len() > VOTERS_MAX || d.votes.len() > vote::BALLOTS_MAX {
        return fail(format!(
            "more than {VOTERS_MAX} voters or {} votes",
            vote::BALLOTS_MAX
        ));
    }
    let mut voters = BTreeSet::new();
    for v in &d.voters {
        match v.parse::<NodeId>() {
            Ok(n) => {
                if !voters.insert(n) {
                    problems.push(format!(
                        "voter {v} is listed twice (voters must be distinct nodes)"
                    ));
                }
            }
            Err(e) => problems.push(format!("voter {v}: {e}")),
        }
    }
    if voters.len() != d.n as usize {
        problems.push(format!(
            "{} distinct voters listed for n = {}",
            voters.len(),
            d.n
        ));
    }
    let mut ballots = Vec::new();
    let mut sig_ok = 0;
    let mut seen_nodes = BTreeSet::new();
    for (i, v) in d.votes.iter().enumerate() {
        let at = format!("votes[{i}] ({})", v.node_id);
        let sv = match v.signature.to_signed() {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                continue;
            }
        };
        if sv.verify().is_ok() {
            sig_ok += 1;
        } else {
            problems.push(format!(
                "{at}: signature does not verify over the subject, answer and call it records"
            ));
            continue;
        }
        if sv.vote.node_id.to_string() != v.node_id {
            problems.push(format!("{at}: signed by another node"));
        }
        if !seen_nodes.insert(sv.vote.node_id) {
            problems.push(format!(
                "{at}: node {} already voted (duplicated voter)",
                sv.vote.node_id
            ));
        }
        if sv.vote.call_id != call_id {
            problems.push(format!("{at}: signed for another call id"));
        }
        for fault in subject_faults(&v.signature.subject, d) {
            problems.push(format!("{at}: {fault}"));
        }
        if let Some(root) = root {
            if let Err(e) = check_cert(
                d.certs.get(&v.node_id),
                root,
                &d.mesh_id,
                &sv.vote.node_id,
                sv.vote.signed_at,
            ) {
                problems.push(format!("{at}: {e} (not a voter admitted by this root)"));
            }
        }
        if sv.vote.answer_hash != value_digest(&v.answer) {
            problems.push(format!("{at}: signed hash is not the recorded answer's"));
            continue;
        }
        let value = match compared_value(d.key.as_deref(), &v.answer) {
            Ok(x) => x,
            Err(e) => {
                problems.push(format!("key: {e}"));
                continue;
            }
        };
        if value != v.value {
            problems.push(format!("{at}: recorded value is not what the key picks"));
        }
        // An answer without the decision key is no vote (error bodies never decide null).
        if d.key.is_some() && value.is_null() {
            continue;
        }
        ballots.push(Ballot {
            vote: sv,
            value: match d.key {
                None => sv.vote.answer_hash,
                Some(_) => value_digest(&value),
            },
        });
    }
    // Equivocation proofs are ballots too: their votes must not count.
    for (i, pair) in d.equivocations.iter().enumerate() {
        let parsed: Result<Vec<SignedVote>, String> = pair.iter().map(VoteSig::to_signed).collect();
        match parsed {
            Ok(p) => {
                let e = Equivocation { a: p[0], b: p[1] };
                if let Err(err) = e.verify() {
                    problems.push(format!("equivocations[{i}]: not a valid proof: {err}"));
                }
                for sv in p {
                    if !ballots.iter().any(|b| b.vote == sv) {
                        ballots.push(Ballot {
                            vote: sv,
                            value: sv.vote.answer_hash,
                        });
                    }
                }
            }
            Err(e) => problems.push(format!("equivocations[{i}]: {e}")),
        }
    }
    let t = vote::tally(&call_id, &expected_subject, &voters, d.required, &ballots);
    for (node, why) in &t.rejected {
        if *why == Rejected::NotMember {
            problems.push(format!("vote by {node}, who is not among the voters"));
        }
    }
    let status = if t.decided.is_some() {
        "decided"
    } else {
        "needs_review"
    };
    if status != d.status {
        problems.push(format!(
            "status is {} but the votes give {status}",
            d.status
        ));
    }
    if let Some(dv) = t.decided {
        if value_digest(&d.value) != dv {
            problems.push("the decided value is not the one the votes agree on".into());
        }
    }
    let dissenters: BTreeSet<String> = t.dissenters.iter().map(|n| n.to_string()).collect();
    let claimed: BTreeSet<String> = d.dissenters.iter().cloned().collect();
    if dissenters != claimed {
        problems.push("dissenters differ from the recomputed tally".into());
    }
    VerifyReport {
        valid: problems.0.is_empty(),
        certificates_checked: root.is_some(),
        signatures_ok: sig_ok,
        counted: t.counted(),
        status: status.into(),
        problems: problems.0,
    }
}
