//! Quorum calls: ask `n` agents on `n` distinct nodes the same thing in parallel, under one
//! deadline, and decide only when enough of their signed answers agree.
//!
//! Each voter's call goes through [`MeshHandle::call`] (routing, retries, breakers) pinned to
//! its node. The callee's node signs a [`Vote`] over the canonical answer; the tally is
//! [`agentmesh_crypto::vote::tally`], the same code the simulator checks. A decision
//! (`decided` or `needs_review`) carries every signature, so [`verify_decision`] (and
//! `agentmesh quorum verify`) re-checks it offline. Dissenters of a decided quorum and
//! equivocators count as failures in routing's quality score.

pub use crate::call::body::collect_body;
pub use crate::contract::jmes::jmes;
use crate::contract::{CallError, CallRequest, ErrorCode, BODY_BYTES_MAX};
use crate::runtime::MeshHandle;
pub use crate::security::vote::{answer_digest, canonical_json, value_digest, Voter};
use agentmesh_crypto::{NodeId, Signature};
use agentmesh_vote::{self as vote, Ballot, Equivocation, Rejected, Tally, VOTERS_MAX};
use agentmesh_vote::{SignedVote, Threshold, Vote};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

/// Deadline of a quorum call when the request names none, in ms.
pub const QUORUM_DEADLINE_MS_DEFAULT: u64 = 10_000;
/// Longest quorum deadline accepted, in ms.
pub const QUORUM_DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest key expression, in bytes.
pub const KEY_EXPR_LEN_MAX: usize = 1024;
/// Largest decision file `verify` reads, in bytes.
pub const DECISION_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The value a quorum compares: the answer, or what `key` picks from it.
pub fn compared_value(
    key: Option<&str>,
    answer: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    match key {
        Some(k) => jmes(k.trim_start_matches("$."), answer),
        None => Ok(answer.clone()),
    }
}

/// `POST /v1/quorum/{capability}` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumRequest {
    /// What every voter is asked (the call body).
    pub payload: serde_json::Value,
    /// Voters, each on its own node.
    #[serde(default = "default_n")]
    pub n: u32,
    /// Byzantine mode: faulty voters tolerated (needs `n ≥ 3f+1`); None: majority.
    #[serde(default)]
    pub f: Option<u32>,
    /// JMESPath picking the compared part of each answer (`decision`; a leading `$.` is
    /// accepted); None compares whole answers.
    #[serde(default)]
    pub key: Option<String>,
    /// Deadline of the whole quorum, in ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Capability a `needs_review` outcome is forwarded to (e.g. `human.review`).
    #[serde(default)]
    pub review: Option<String>,
    /// Routing policy used to pick the voters (default: the capability's).
    #[serde(default)]
    pub policy: Option<String>,
}

fn default_n() -> u32 {
    3
}

impl QuorumRequest {
    /// The threshold asked for.
    pub fn threshold(&self) -> Threshold {
        match self.f {
            Some(f) => Threshold::Byzantine { f },
            None => Threshold::Majority,
        }
    }

    /// Checks every field, naming the one at fault; returns the votes required.
    pub fn validate(&self) -> Result<u32, CallError> {
        let required = self.threshold().required(self.n).map_err(|e| {
            let field = if self.f.is_some() && self.n > 0 {
                "f"
            } else {
                "n"
            };
            CallError::bad_field(field, e.to_string())
        })?;
        if let Some(k) = &self.key {
            if k.len() > KEY_EXPR_LEN_MAX {
                return Err(CallError::bad_field(
                    "key",
                    format!("at most {KEY_EXPR_LEN_MAX} bytes"),
                ));
            }
            jmespath::compile(k.trim_start_matches("$.")).map_err(|e| {
                CallError::bad_field("key", format!("not a JMESPath expression: {e}"))
            })?;
        }
        if let Some(d) = self.deadline_ms {
            if d == 0 || d > QUORUM_DEADLINE_MS_MAX {
                return Err(CallError::bad_field(
                    "deadline_ms",
                    format!("must be 1 to {QUORUM_DEADLINE_MS_MAX}"),
                ));
            }
        }
        if let Some(r) = &self.review {
            if !crate::contract::names::is_capability_name(r) {
                return Err(CallError::bad_field("review", "not a capability name"));
            }
        }
        if let Some(p) = &self.policy {
            crate::routing::policies::PolicyName::parse(p).map_err(|e| CallError {
                field: Some("policy".into()),
                ..e
            })?;
        }
        Ok(required)
    }
}

/// A signed vote as JSON (hex and peer ids, so a decision file is readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteSig {
    /// Call id, hex.
    pub call_id: String,
    /// SHA-256 of the canonical answer, hex.
    pub answer_hash: String,
    /// Signing node.
    pub node_id: String,
    /// Signer's epoch.
    pub epoch: u64,
    /// ed25519 signature, hex.
    pub signature: String,
}

impl From<&SignedVote> for VoteSig {
    fn from(s: &SignedVote) -> Self {
        VoteSig {
            call_id: hex::encode(s.vote.call_id),
            answer_hash: hex::encode(s.vote.answer_hash),
            node_id: s.vote.node_id.to_string(),
            epoch: s.vote.epoch,
            signature: hex::encode(s.signature.0),
        }
    }
}

impl VoteSig {
    /// Back to a [`SignedVote`] (not yet verified).
    pub fn to_signed(&self) -> Result<SignedVote, String> {
        fn arr<const N: usize>(field: &str, h: &str) -> Result<[u8; N], String> {
            let v = hex::decode(h).map_err(|e| format!("{field}: {e}"))?;
            v.try_into()
                .map_err(|_| format!("{field}: expected {N} bytes"))
        }
        Ok(SignedVote {
            vote: Vote {
                call_id: arr("call_id", &self.call_id)?,
                answer_hash: arr("answer_hash", &self.answer_hash)?,
                node_id: self.node_id.parse().map_err(|e| format!("node_id: {e}"))?,
                epoch: self.epoch,
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

/// A voter that gave no countable vote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silent {
    /// The node.
    pub node_id: String,
    /// Why (error code and message, or a refused vote).
    pub reason: String,
}

/// The outcome of a quorum call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuorumDecision {
    /// `decided` or `needs_review`.
    pub status: String,
    /// The decided value (the compared part), or null.
    pub value: serde_json::Value,
    /// Capability asked.
    pub capability: String,
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
    /// Counted and uncounted votes received.
    pub votes: Vec<VoteRecord>,
    /// Voters whose value differs from the decided one.
    pub dissenters: Vec<String>,
    /// Voters that did not answer in time, failed, or whose vote was refused.
    pub silent: Vec<Silent>,
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

/// One voter's outcome.
struct Reply {
    node: NodeId,
    agent: String,
    latency_ms: f64,
    result: Result<(serde_json::Value, SignedVote), String>,
}

async fn ask_voter(
    mesh: MeshHandle,
    base: CallRequest,
    node: NodeId,
    agent: String,
    local: bool,
    deadline: Instant,
) -> Reply {
    let started = Instant::now();
    let result = async {
        let mut req = base;
        req.pin = Some(node);
        req.deadline_ms = Some(
            deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1) as u64,
        );
        let resp = mesh.call(req.clone()).await.map_err(|e| {
            format!(
                "{}: {}",
                serde_json::to_value(e.code).unwrap_or_default(),
                e.message
            )
        })?;
        if !(200..300).contains(&resp.status) {
            return Err(format!("agent answered {}", resp.status));
        }
        let vote_slot = resp.vote.clone();
        let call_id = resp.call_id;
        let bytes = collect_body(resp.body, BODY_BYTES_MAX, deadline)
            .await
            .map_err(|e| e.message)?;
        let answer: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
        let vote = if local {
            Some(mesh.voter().sign(call_id, &bytes))
        } else {
            *vote_slot.lock().unwrap_or_else(|p| p.into_inner())
        };
        let vote = vote.ok_or("the callee's node sent no signed vote")?;
        if vote.vote.answer_hash != answer_digest(&bytes) {
            return Err("the signed hash does not match the answer".into());
        }
        Ok((answer, vote))
    }
    .await;
    Reply {
        node,
        agent,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        result,
    }
}

/// Runs a quorum call for `capability` from this node.
pub async fn run(
    mesh: &MeshHandle,
    capability: &str,
    req: QuorumRequest,
    traceparent: Option<String>,
) -> Result<QuorumDecision, CallError> {
    let required = req.validate()?;
    let started = Instant::now();
    let deadline_ms = req.deadline_ms.unwrap_or(QUORUM_DEADLINE_MS_DEFAULT);
    let deadline = started + Duration::from_millis(deadline_ms);
    let pick = CallRequest {
        capability: capability.to_string(),
        policy: req.policy.clone(),
        ..CallRequest::default()
    };
    let mut voters: Vec<crate::routing::router::Candidate> = Vec::new();
    for c in mesh.ranked_candidates(&pick)? {
        if voters.len() < req.n as usize && !voters.iter().any(|v| v.node_id == c.node_id) {
            voters.push(c);
        }
    }
    if voters.len() < req.n as usize {
        return Err(CallError::new(
            ErrorCode::NoEligibleAgent,
            format!(
                "a quorum of {} needs {} distinct nodes offering {capability}; {} eligible",
                req.n,
                req.n,
                voters.len()
            ),
        ));
    }
    let call_id: [u8; 16] = rand::random();
    let span =
        tracing::info_span!("quorum", capability, n = req.n, call_id = %hex::encode(call_id));
    let _enter = span.enter();
    let body = serde_json::to_vec(&req.payload).unwrap_or_default();
    let base = CallRequest {
        capability: capability.to_string(),
        content_type: Some("application/json".into()),
        body: body.into(),
        call_id: Some(call_id),
        want_vote: true,
        traceparent,
        ..CallRequest::default()
    };
    let voter_set: BTreeSet<NodeId> = voters.iter().map(|c| c.node_id).collect();
    let mut pending: FuturesUnordered<_> = voters
        .iter()
        .map(|c| {
            ask_voter(
                mesh.clone(),
                base.clone(),
                c.node_id,
                c.agent.clone(),
                c.local,
                deadline,
            )
        })
        .collect();
    drop(_enter);
    let mut replies: Vec<Reply> = Vec::new();
    let mut tally = Tally {
        required,
        ..Tally::default()
    };
    let key = req.key.as_deref();
    while let Some(r) = pending.next().await {
        replies.push(r);
        tally = tally_replies(&call_id, &voter_set, required, key, &replies);
        // Stop as soon as the outcome is settled: decided, or out of reach.
        if tally.decided.is_some() || !tally.can_still_decide(pending.len() as u32) {
            break;
        }
    }
    drop(pending);
    let answered: BTreeSet<NodeId> = replies.iter().map(|r| r.node).collect();
    let mut decision = render(
        capability, &req, required, call_id, &voters, &replies, &tally,
    );
    for c in &voters {
        if !answered.contains(&c.node_id) {
            decision.silent.push(Silent {
                node_id: c.node_id.to_string(),
                reason: "not needed or not in time: the outcome was settled first".into(),
            });
        }
    }
    decision.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if tally.decided.is_some() {
        for d in &tally.dissenters {
            tracing::info!(node = %d, capability, "quorum dissent counts against the agent's quality");
            mesh.penalize(*d, capability);
        }
    }
    for e in &tally.equivocations {
        tracing::warn!(node = %e.a.vote.node_id, capability, "equivocation: two answers signed for one call");
        mesh.penalize(e.a.vote.node_id, capability);
    }
    if decision.status == "needs_review" {
        if let Some(review) = &req.review {
            decision.review = Some(forward_review(mesh, review, &decision, deadline).await);
        }
    }
    Ok(decision)
}

async fn forward_review(
    mesh: &MeshHandle,
    review: &str,
    decision: &QuorumDecision,
    deadline: Instant,
) -> serde_json::Value {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .as_millis() as u64;
    let req = CallRequest {
        capability: review.to_string(),
        content_type: Some("application/json".into()),
        body: serde_json::to_vec(decision).unwrap_or_default().into(),
        deadline_ms: Some(left.max(1_000)),
        ..CallRequest::default()
    };
    let out = async {
        let resp = mesh.call(req).await?;
        let bytes =
            collect_body(resp.body, BODY_BYTES_MAX, deadline + Duration::from_secs(1)).await?;
        Ok::<_, CallError>(serde_json::json!({
            "capability": review,
            "served_by": resp.served_by,
            "answer": serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into()),
        }))
    };
    match out.await {
        Ok(v) => v,
        Err(e) => serde_json::json!({"capability": review, "error": e}),
    }
}

fn ballots_of(key: Option<&str>, replies: &[Reply]) -> Vec<Ballot> {
    replies
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .map(|(answer, vote)| Ballot {
            vote: *vote,
            value: match key {
                None => vote.vote.answer_hash,
                Some(_) => value_digest(&compared_value(key, answer).unwrap_or_default()),
            },
        })
        .collect()
}

fn tally_replies(
    call_id: &[u8; 16],
    voters: &BTreeSet<NodeId>,
    required: u32,
    key: Option<&str>,
    replies: &[Reply],
) -> Tally {
    vote::tally(call_id, voters, required, &ballots_of(key, replies))
}

fn render(
    capability: &str,
    req: &QuorumRequest,
    required: u32,
    call_id: [u8; 16],
    voters: &[crate::routing::router::Candidate],
    replies: &[Reply],
    tally: &Tally,
) -> QuorumDecision {
    let key = req.key.as_deref();
    let mut votes = Vec::new();
    let mut silent = Vec::new();
    let mut value = serde_json::Value::Null;
    let mut slowest = 0.0f64;
    for r in replies {
        match &r.result {
            Ok((answer, sv)) => {
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
                    signature: VoteSig::from(sv),
                });
            }
            Err(why) => silent.push(Silent {
                node_id: r.node.to_string(),
                reason: why.clone(),
            }),
        }
    }
    for (node, why) in &tally.rejected {
        silent.push(Silent {
            node_id: node.to_string(),
            reason: format!("vote refused: {}", rejected_name(*why)),
        });
    }
    QuorumDecision {
        status: if tally.decided.is_some() {
            "decided"
        } else {
            "needs_review"
        }
        .into(),
        value,
        capability: capability.to_string(),
        call_id: hex::encode(call_id),
        n: req.n,
        f: req.f,
        required,
        key: req.key.clone(),
        voters: voters.iter().map(|c| c.node_id.to_string()).collect(),
        signatures: votes.iter().map(|v| v.signature.clone()).collect(),
        votes,
        dissenters: tally.dissenters.iter().map(|d| d.to_string()).collect(),
        silent,
        equivocations: tally.equivocations.iter().map(equivocation_sigs).collect(),
        latency_ms: 0.0,
        slowest_vote_ms: round1(slowest),
        review: None,
    }
}

fn equivocation_sigs(e: &Equivocation) -> [VoteSig; 2] {
    [VoteSig::from(&e.a), VoteSig::from(&e.b)]
}

fn rejected_name(r: Rejected) -> &'static str {
    match r {
        Rejected::BadSignature => "bad signature",
        Rejected::WrongCall => "signed for another call",
        Rejected::NotMember => "signer is not a voter",
        Rejected::Duplicate => "duplicate (counted once)",
        Rejected::TooMany => "too many ballots",
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What an offline check of a decision found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True if every check passed.
    pub valid: bool,
    /// Signatures that verified.
    pub signatures_ok: usize,
    /// Votes that count after the tally.
    pub counted: usize,
    /// The recomputed status.
    pub status: String,
    /// Problems found, empty if valid.
    pub problems: Vec<String>,
}

/// Re-checks a decision offline: every signature (ed25519, vote context), that each vote
/// signs this call and the hash of its recorded answer, that signers are among the voters,
/// that the recomputed tally gives the same status, value and dissenters, and that each
/// equivocation proof holds.
pub fn verify_decision(d: &QuorumDecision) -> VerifyReport {
    let mut problems = Vec::new();
    let call_id: Option<[u8; 16]> = hex::decode(&d.call_id).ok().and_then(|v| v.try_into().ok());
    let Some(call_id) = call_id else {
        return VerifyReport {
            valid: false,
            signatures_ok: 0,
            counted: 0,
            status: "invalid".into(),
            problems: vec!["call_id is not 16 hex bytes".into()],
        };
    };
    let threshold = match d.f {
        Some(f) => Threshold::Byzantine { f },
        None => Threshold::Majority,
    };
    match threshold.required(d.n) {
        Ok(r) if r == d.required => {}
        Ok(r) => problems.push(format!("required is {} but n/f give {r}", d.required)),
        Err(e) => problems.push(format!("threshold: {e}")),
    }
    let mut voters = BTreeSet::new();
    for v in &d.voters {
        match v.parse::<NodeId>() {
            Ok(n) => {
                voters.insert(n);
            }
            Err(e) => problems.push(format!("voter {v}: {e}")),
        }
    }
    if voters.len() != d.n as usize || d.n as usize > VOTERS_MAX {
        problems.push(format!(
            "{} distinct voters listed for n = {}",
            voters.len(),
            d.n
        ));
    }
    let mut ballots = Vec::new();
    let mut sig_ok = 0;
    for (i, v) in d.votes.iter().enumerate() {
        let sv = match v.signature.to_signed() {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("votes[{i}]: {e}"));
                continue;
            }
        };
        if sv.verify().is_ok() {
            sig_ok += 1;
        } else {
            problems.push(format!("votes[{i}]: signature does not verify"));
        }
        if sv.vote.node_id.to_string() != v.node_id {
            problems.push(format!("votes[{i}]: signed by another node"));
        }
        if sv.vote.answer_hash != value_digest(&v.answer) {
            problems.push(format!(
                "votes[{i}]: signed hash is not the recorded answer's"
            ));
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
            problems.push(format!(
                "votes[{i}]: recorded value is not what the key picks"
            ));
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
                if e.verify().is_err() {
                    problems.push(format!("equivocations[{i}]: not a valid proof"));
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
    let t = vote::tally(&call_id, &voters, d.required, &ballots);
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
        valid: problems.is_empty(),
        signatures_ok: sig_ok,
        counted: t.counted(),
        status: status.into(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::Keypair;

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a = br#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#;
        let b = br#"{"a":{"x":null,"y":[1,2]},"b":1}"#;
        assert_eq!(answer_digest(a), answer_digest(b));
        assert_ne!(answer_digest(a), answer_digest(br#"{"b":2}"#));
        let v: serde_json::Value = serde_json::from_slice(a).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"x":null,"y":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn key_expression_picks_the_compared_part() {
        let a = serde_json::json!({"decision": "approve", "why": "x"});
        assert_eq!(
            compared_value(Some("$.decision"), &a).unwrap(),
            serde_json::json!("approve")
        );
        assert_eq!(compared_value(None, &a).unwrap(), a);
    }

    /// Each bad request and the field its error names.
    #[test]
    fn bad_requests_name_the_field() {
        let base = QuorumRequest {
            payload: serde_json::json!({}),
            n: 4,
            f: Some(1),
            key: None,
            deadline_ms: None,
            review: None,
            policy: None,
        };
        assert_eq!(base.validate().unwrap(), 3);
        let cases: Vec<(QuorumRequest, &str)> = vec![
            (
                QuorumRequest {
                    n: 3,
                    ..base.clone()
                },
                "f",
            ),
            (
                QuorumRequest {
                    n: 0,
                    f: None,
                    ..base.clone()
                },
                "n",
            ),
            (
                QuorumRequest {
                    n: 65,
                    f: None,
                    ..base.clone()
                },
                "n",
            ),
            (
                QuorumRequest {
                    key: Some("a[".into()),
                    ..base.clone()
                },
                "key",
            ),
            (
                QuorumRequest {
                    deadline_ms: Some(0),
                    ..base.clone()
                },
                "deadline_ms",
            ),
            (
                QuorumRequest {
                    review: Some("Bad Cap".into()),
                    ..base.clone()
                },
                "review",
            ),
            (
                QuorumRequest {
                    policy: Some("nope".into()),
                    ..base.clone()
                },
                "policy",
            ),
        ];
        for (r, field) in cases {
            let e = r.validate().expect_err(field);
            assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
        }
    }

    fn decision_of(
        keys: &[Keypair],
        answers: &[serde_json::Value],
        key: Option<&str>,
    ) -> QuorumDecision {
        let call_id = [5u8; 16];
        let voters: BTreeSet<NodeId> = keys.iter().map(Keypair::node_id).collect();
        let mut replies = Vec::new();
        for (k, a) in keys.iter().zip(answers) {
            let bytes = serde_json::to_vec(a).unwrap();
            let vote = Voter::with_epoch(k.clone(), 1).sign(call_id, &bytes);
            replies.push(Reply {
                node: k.node_id(),
                agent: "a".into(),
                latency_ms: 1.0,
                result: Ok((a.clone(), vote)),
            });
        }
        let req = QuorumRequest {
            payload: serde_json::json!({}),
            n: keys.len() as u32,
            f: Some(1),
            key: key.map(str::to_string),
            deadline_ms: None,
            review: None,
            policy: None,
        };
        let required = req.validate().unwrap();
        let t = tally_replies(&call_id, &voters, required, key, &replies);
        let mut d = render("c", &req, required, call_id, &[], &replies, &t);
        d.voters = voters.iter().map(|n| n.to_string()).collect();
        d
    }

    #[test]
    fn decisions_verify_offline_and_tampering_is_found() {
        let keys: Vec<Keypair> = (1..=4).map(|b| Keypair::from_secret([b; 32])).collect();
        let yes = serde_json::json!({"decision": "approve", "n": 1});
        let no = serde_json::json!({"decision": "deny"});
        let d = decision_of(
            &keys,
            &[yes.clone(), yes.clone(), yes.clone(), no],
            Some("decision"),
        );
        assert_eq!(d.status, "decided");
        assert_eq!(d.value, serde_json::json!("approve"));
        assert_eq!(d.dissenters, vec![keys[3].node_id().to_string()]);
        let r = verify_decision(&d);
        assert!(r.valid, "{r:?}");
        assert_eq!(r.signatures_ok, 4);

        let mut forged = d.clone();
        forged.value = serde_json::json!("deny");
        assert!(!verify_decision(&forged).valid);
        let mut forged = d.clone();
        forged.votes[3].answer = serde_json::json!({"decision": "approve"});
        forged.votes[3].value = serde_json::json!("approve");
        let r = verify_decision(&forged);
        assert!(
            !r.valid && r.problems.iter().any(|p| p.contains("signed hash")),
            "{r:?}"
        );
        let mut forged = d.clone();
        forged.status = "needs_review".into();
        assert!(!verify_decision(&forged).valid);

        let split = decision_of(
            &keys,
            &[
                yes.clone(),
                yes,
                serde_json::json!({"decision": "deny"}),
                serde_json::json!({"decision": "deny"}),
            ],
            Some("decision"),
        );
        assert_eq!(split.status, "needs_review");
        assert!(verify_decision(&split).valid);
    }
}
