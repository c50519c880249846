//! Quorum calls: ask `n` agents on `n` distinct nodes the same thing in parallel, under one
//! deadline, and decide only when enough of their signed answers agree.
//!
//! Each voter's call goes through [`MeshHandle::call`] (routing, retries, breakers) pinned to
//! its node. The callee's node signs a [`agentmesh_vote::Vote`] over the quorum's subject
//! (mesh, capability, terms, question hash) and its canonical answer; the tally is
//! [`agentmesh_vote::tally`], the same code the simulator checks. A decision (`decided` or
//! `needs_review`) carries every signature, the subject and each voter's admission
//! certificate, so [`verify_decision`] (and `agentmesh quorum verify --root`) re-checks it
//! offline. Dissenters (also those whose vote arrives after the decision) and equivocators
//! count as failures in routing's quality score; equivocation proofs spread by gossip.

pub mod decision;
pub mod verify;

pub use crate::call::body::collect_body;
pub use crate::contract::jmes::jmes;
use crate::contract::{CallError, CallRequest, ErrorCode, VoteTerms, BODY_BYTES_MAX};
use crate::runtime::MeshHandle;
pub use crate::security::vote::{answer_digest, canonical_json, value_digest, Voter};
use agentmesh_crypto::NodeId;
use agentmesh_vote::{self as vote, Ballot, SignedVote, Subject, Tally, Threshold};
use decision::{render, round1, Asked, Excluded, Silent};
pub use decision::{QuorumDecision, SubjectJson, VoteRecord, VoteSig};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
pub use verify::{verify_decision, VerifyReport};

/// Deadline of a quorum call when the request names none, in ms.
pub const QUORUM_DEADLINE_MS_DEFAULT: u64 = 10_000;
/// Longest quorum deadline accepted, in ms.
pub const QUORUM_DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;
/// Longest key expression, in bytes.
pub const KEY_EXPR_LEN_MAX: usize = agentmesh_vote::SUBJECT_KEY_LEN_MAX;
/// Largest decision file `verify` reads, in bytes.
pub const DECISION_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest a quorum keeps listening, after its decision, for the votes it did not wait for
/// (so late dissent is still recorded), in ms.
pub const LATE_VOTES_MS_MAX: u64 = 30_000;

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
            crate::contract::jmes::Expr::compile(k.trim_start_matches("$.")).map_err(|e| {
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

/// The quorum could not reach `n` eligible voters: each excluded candidate and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ineligible {
    /// Candidates that could not be asked.
    pub excluded: Vec<Excluded>,
}

/// One voter's outcome: the answer, the vote over it, and any other vote the same node sent.
pub(crate) struct Reply {
    pub(crate) node: NodeId,
    pub(crate) agent: String,
    pub(crate) latency_ms: f64,
    pub(crate) result: Result<(serde_json::Value, SignedVote, Vec<SignedVote>), String>,
}

struct Ask {
    mesh: MeshHandle,
    base: CallRequest,
    subject: Subject,
    key: Option<String>,
    deadline: Instant,
}

async fn ask_voter(a: std::sync::Arc<Ask>, node: NodeId, agent: String, local: bool) -> Reply {
    let started = Instant::now();
    let result = async {
        let mut req = a.base.clone();
        req.pin = Some(node);
        req.deadline_ms = Some(
            a.deadline
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1) as u64,
        );
        let resp = a.mesh.call(req.clone()).await.map_err(|e| {
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
        let bytes = collect_body(resp.body, BODY_BYTES_MAX, a.deadline)
            .await
            .map_err(|e| e.message)?;
        let answer: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
        if let Some(k) = a.key.as_deref() {
            if compared_value(Some(k), &answer).map_or(true, |v| v.is_null()) {
                return Err(format!("the answer has no decision key {k:?}: not a vote"));
            }
        }
        let votes = if local {
            a.mesh.voter().sign(call_id, &a.subject, &bytes)
        } else {
            vote_slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        let digest = answer_digest(&bytes);
        let (matching, others): (Vec<SignedVote>, Vec<SignedVote>) = votes
            .into_iter()
            .partition(|v| v.vote.answer_hash == digest);
        let Some(vote) = matching.first().copied() else {
            return Err(if others.is_empty() {
                "the callee's node sent no signed vote".into()
            } else {
                "the signed hash does not match the answer".into()
            });
        };
        Ok((answer, vote, others))
    }
    .await;
    Reply {
        node,
        agent,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        result,
    }
}

/// Picks `n` distinct eligible voters, or says why that is impossible before asking anyone.
fn pick_voters(
    mesh: &MeshHandle,
    capability: &str,
    req: &QuorumRequest,
) -> Result<Vec<crate::routing::router::Candidate>, CallError> {
    let pick = CallRequest {
        capability: capability.to_string(),
        policy: req.policy.clone(),
        ..CallRequest::default()
    };
    let (eligible, excluded) = mesh.quorum_candidates(&pick)?;
    let mut voters: Vec<crate::routing::router::Candidate> = Vec::new();
    for c in eligible {
        if voters.len() < req.n as usize && !voters.iter().any(|v| v.node_id == c.node_id) {
            voters.push(c);
        }
    }
    if voters.len() >= req.n as usize {
        return Ok(voters);
    }
    let mut seen: BTreeSet<NodeId> = voters.iter().map(|v| v.node_id).collect();
    let excluded: Vec<Excluded> = excluded
        .into_iter()
        .filter(|(c, _)| seen.insert(c.node_id))
        .map(|(c, reason)| Excluded {
            node_id: c.node_id.to_string(),
            reason,
        })
        .collect();
    let why: Vec<String> = excluded
        .iter()
        .map(|e| format!("{}: {}", e.node_id, e.reason))
        .collect();
    let mut err = CallError::new(
        ErrorCode::NoEligibleAgent,
        format!(
            "a quorum of {} needs {} distinct eligible nodes offering {capability}; {} eligible{}",
            req.n,
            req.n,
            voters.len(),
            if why.is_empty() {
                String::new()
            } else {
                format!("; excluded: {}", why.join("; "))
            }
        ),
    );
    err.field = Some("n".into());
    Err(err)
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
    let voters = pick_voters(mesh, capability, &req)?;
    let call_id: [u8; 16] = rand::random();
    let span =
        tracing::info_span!("quorum", capability, n = req.n, call_id = %hex::encode(call_id));
    let _enter = span.enter();
    let body = serde_json::to_vec(&req.payload).unwrap_or_default();
    let terms = VoteTerms {
        n: req.n,
        f: req.f,
        key: req.key.clone(),
    };
    let subject = mesh.voter().subject(capability, &terms, &body);
    let ask = std::sync::Arc::new(Ask {
        mesh: mesh.clone(),
        base: CallRequest {
            capability: capability.to_string(),
            content_type: Some("application/json".into()),
            body: body.into(),
            call_id: Some(call_id),
            want_vote: Some(terms),
            traceparent,
            ..CallRequest::default()
        },
        subject: subject.clone(),
        key: req.key.clone(),
        deadline,
    });
    let voter_set: BTreeSet<NodeId> = voters.iter().map(|c| c.node_id).collect();
    let mut pending: FuturesUnordered<_> = voters
        .iter()
        .map(|c| ask_voter(ask.clone(), c.node_id, c.agent.clone(), c.local))
        .collect();
    drop(_enter);
    let mut replies: Vec<Reply> = Vec::new();
    let mut tally = Tally {
        required,
        ..Tally::default()
    };
    let key = req.key.as_deref();
    let subject_digest = subject.digest();
    while let Some(r) = pending.next().await {
        replies.push(r);
        tally = vote::tally(
            &call_id,
            &subject_digest,
            &voter_set,
            required,
            &ballots_of(key, &replies),
        );
        // Stop as soon as the outcome is settled: decided, or out of reach.
        if tally.decided.is_some() || !tally.can_still_decide(pending.len() as u32) {
            break;
        }
    }
    let answered: BTreeSet<NodeId> = replies.iter().map(|r| r.node).collect();
    let certs: BTreeMap<String, String> = answered
        .iter()
        .filter_map(|n| {
            mesh.cert_of(n)
                .map(|c| (n.to_string(), hex::encode(c.to_bytes())))
        })
        .collect();
    let asked = Asked {
        capability,
        req: &req,
        required,
        call_id,
        subject: &subject,
        voters: voters.iter().map(|c| c.node_id).collect(),
        certs,
    };
    let mut decision = render(&asked, &replies, &tally);
    for c in &voters {
        if !answered.contains(&c.node_id) {
            decision.late.push(Silent {
                node_id: c.node_id.to_string(),
                reason: "not waited for: the outcome was settled first".into(),
            });
        }
    }
    decision.latency_ms = round1(started.elapsed().as_secs_f64() * 1000.0);
    if tally.decided.is_some() {
        for d in &tally.dissenters {
            tracing::info!(node = %d, capability, "quorum dissent counts against the agent's quality");
            mesh.penalize(*d, capability);
        }
    }
    for e in &tally.equivocations {
        tracing::warn!(node = %e.node(), capability, "equivocation: two answers signed for one call");
        mesh.report_equivocation(*e);
    }
    if !pending.is_empty() {
        // Keep listening for the votes not waited for: late dissent and late equivocation
        // are recorded too (penalized, logged and counted), bounded in time.
        let late = LateVotes {
            mesh: mesh.clone(),
            capability: capability.to_string(),
            call_id,
            subject: subject_digest,
            voters: voter_set,
            required,
            key: req.key.clone(),
            decided: tally.decided,
        };
        let until = deadline.min(Instant::now() + Duration::from_millis(LATE_VOTES_MS_MAX));
        tokio::spawn(late.drain(pending, replies, until));
    }
    if decision.status == "needs_review" {
        if let Some(review) = &req.review {
            decision.review = Some(forward_review(mesh, review, &decision, deadline).await);
        }
    }
    Ok(decision)
}

/// What a quorum keeps to judge the votes that arrive after its decision.
struct LateVotes {
    mesh: MeshHandle,
    capability: String,
    call_id: [u8; 16],
    subject: [u8; 32],
    voters: BTreeSet<NodeId>,
    required: u32,
    key: Option<String>,
    decided: Option<[u8; 32]>,
}

impl LateVotes {
    async fn drain<F>(
        self,
        mut pending: FuturesUnordered<F>,
        mut replies: Vec<Reply>,
        until: Instant,
    ) where
        F: std::future::Future<Output = Reply>,
    {
        let before = vote::tally(
            &self.call_id,
            &self.subject,
            &self.voters,
            self.required,
            &ballots_of(self.key.as_deref(), &replies),
        );
        let mut known_eq: BTreeSet<NodeId> =
            before.equivocations.iter().map(|e| e.node()).collect();
        while let Ok(Some(r)) = tokio::time::timeout_at(until, pending.next()).await {
            let node = r.node;
            replies.push(r);
            let t = vote::tally(
                &self.call_id,
                &self.subject,
                &self.voters,
                self.required,
                &ballots_of(self.key.as_deref(), &replies),
            );
            for e in t.equivocations.iter().filter(|e| known_eq.insert(e.node())) {
                tracing::warn!(node = %e.node(), capability = %self.capability, "equivocation (late vote)");
                self.mesh.report_equivocation(*e);
            }
            let Some(decided) = self.decided else {
                continue;
            };
            let dissent = t
                .counts
                .iter()
                .any(|(v, nodes)| *v != decided && nodes.contains(&node));
            if dissent {
                tracing::info!(node = %node, capability = %self.capability, "late quorum dissent counts against the agent's quality");
                self.mesh.penalize(node, &self.capability);
                self.mesh.count_late_dissent();
            }
        }
    }
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

/// The ballots of `replies`: each answer's vote, and any other vote its node sent (two
/// different ones are an equivocation). An answer without the decision key is no ballot:
/// error bodies must never decide `null`.
fn ballots_of(key: Option<&str>, replies: &[Reply]) -> Vec<Ballot> {
    let mut out = Vec::new();
    for (answer, vote, others) in replies.iter().filter_map(|r| r.result.as_ref().ok()) {
        let value = match key {
            None => vote.vote.answer_hash,
            Some(_) => match compared_value(key, answer) {
                Ok(v) if !v.is_null() => value_digest(&v),
                _ => continue,
            },
        };
        out.push(Ballot { vote: *vote, value });
        for o in others {
            out.push(Ballot {
                vote: *o,
                value: o.vote.answer_hash,
            });
        }
    }
    out
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

    const MESH: &str = "m";

    fn root() -> Keypair {
        Keypair::from_secret([200; 32])
    }

    fn cert_hex(root: &Keypair, k: &Keypair) -> String {
        let c = agentmesh_crypto::AdmissionCert {
            mesh_id: MESH.into(),
            node_id: k.node_id(),
            roles: vec!["agent".into()],
            not_before: 0,
            not_after: u64::MAX / 2,
        }
        .sign(root)
        .unwrap();
        hex::encode(c.to_bytes())
    }

    /// A decision as `run` renders it: each key votes its answer for `question`.
    fn decision_of(
        keys: &[Keypair],
        answers: &[serde_json::Value],
        key: Option<&str>,
        question: &serde_json::Value,
        capability: &str,
        f: Option<u32>,
    ) -> QuorumDecision {
        let call_id = [5u8; 16];
        let voters: BTreeSet<NodeId> = keys.iter().map(Keypair::node_id).collect();
        let req = QuorumRequest {
            payload: question.clone(),
            n: keys.len() as u32,
            f,
            key: key.map(str::to_string),
            deadline_ms: None,
            review: None,
            policy: None,
        };
        let terms = VoteTerms {
            n: req.n,
            f,
            key: req.key.clone(),
        };
        let body = serde_json::to_vec(question).unwrap();
        let mut replies = Vec::new();
        let mut subject = None;
        for (k, a) in keys.iter().zip(answers) {
            let voter = Voter::with_epoch(k.clone(), MESH.into(), 1);
            let s = voter.subject(capability, &terms, &body);
            let bytes = serde_json::to_vec(a).unwrap();
            let vote = voter.sign(call_id, &s, &bytes)[0];
            subject = Some(s);
            replies.push(Reply {
                node: k.node_id(),
                agent: "a".into(),
                latency_ms: 1.0,
                result: Ok((a.clone(), vote, Vec::new())),
            });
        }
        let subject = subject.unwrap();
        let required = req.validate().unwrap();
        let t = vote::tally(
            &call_id,
            &subject.digest(),
            &voters,
            required,
            &ballots_of(key, &replies),
        );
        let r = root();
        let asked = Asked {
            capability,
            req: &req,
            required,
            call_id,
            subject: &subject,
            voters: voters.iter().copied().collect(),
            certs: keys
                .iter()
                .map(|k| (k.node_id().to_string(), cert_hex(&r, k)))
                .collect(),
        };
        render(&asked, &replies, &t)
    }

    fn keys(from: u8, n: u8) -> Vec<Keypair> {
        (from..from + n)
            .map(|b| Keypair::from_secret([b; 32]))
            .collect()
    }

    fn refused(d: &QuorumDecision, fault: &str) {
        let r = verify_decision(d, Some(&root().node_id()));
        assert!(!r.valid, "accepted: {d:#?}");
        assert!(
            r.problems.iter().any(|p| p.contains(fault)),
            "no problem names {fault:?}: {:#?}",
            r.problems
        );
    }

    #[test]
    fn decisions_verify_offline_and_tampering_is_found() {
        let keys = keys(1, 4);
        let q = serde_json::json!({"q": "refund?"});
        let yes = serde_json::json!({"decision": "approve", "n": 1});
        let no = serde_json::json!({"decision": "deny"});
        let d = decision_of(
            &keys,
            &[yes.clone(), yes.clone(), yes.clone(), no],
            Some("decision"),
            &q,
            "c.x",
            Some(1),
        );
        assert_eq!(d.status, "decided");
        assert_eq!(d.value, serde_json::json!("approve"));
        assert_eq!(d.dissenters, vec![keys[3].node_id().to_string()]);
        let r = verify_decision(&d, Some(&root().node_id()));
        assert!(r.valid, "{r:?}");
        assert!(r.certificates_checked);
        assert_eq!(r.signatures_ok, 4);

        let mut forged = d.clone();
        forged.value = serde_json::json!("deny");
        refused(&forged, "decided value");
        let mut forged = d.clone();
        forged.votes[3].answer = serde_json::json!({"decision": "approve"});
        forged.votes[3].value = serde_json::json!("approve");
        refused(&forged, "signed hash");
        let mut forged = d.clone();
        forged.status = "needs_review".into();
        refused(&forged, "status is needs_review");

        let split = decision_of(
            &keys,
            &[
                yes.clone(),
                yes,
                serde_json::json!({"decision": "deny"}),
                serde_json::json!({"decision": "deny"}),
            ],
            Some("decision"),
            &q,
            "c.x",
            Some(1),
        );
        assert_eq!(split.status, "needs_review");
        assert!(verify_decision(&split, Some(&root().node_id())).valid);
    }

    /// Each attack from issue 14 on a decision file, and the fault its refusal names.
    #[test]
    fn forged_decisions_are_refused_naming_the_fault() {
        let honest = keys(1, 4);
        let q = serde_json::json!({"q": "refund?"});
        let yes = serde_json::json!({"decision": "approve"});
        let no = serde_json::json!({"decision": "deny"});
        let all_yes = [yes.clone(), yes.clone(), yes.clone(), yes.clone()];

        // Fresh keys: valid signatures and a consistent tally, but certificates from the
        // forger's own root, or none at all.
        let fresh_keys = keys(50, 4);
        let mut fresh = decision_of(&fresh_keys, &all_yes, Some("decision"), &q, "c.x", Some(1));
        let forger = Keypair::from_secret([99; 32]);
        for k in &fresh_keys {
            fresh
                .certs
                .insert(k.node_id().to_string(), cert_hex(&forger, k));
        }
        assert!(
            verify_decision(&fresh, None).valid,
            "signatures alone prove nothing"
        );
        refused(&fresh, "not a voter admitted by this root");
        refused(&fresh, "expected root");
        fresh.certs.clear();
        refused(&fresh, "no admission certificate recorded");

        // Relabelled capability.
        let mut d = decision_of(&honest, &all_yes, Some("decision"), &q, "c.x", Some(1));
        d.capability = "c.other".into();
        refused(&d, "relabelled capability");

        // A genuine vote moved from another question.
        let d = decision_of(
            &honest,
            &[yes.clone(), yes.clone(), no.clone(), no.clone()],
            Some("decision"),
            &q,
            "c.x",
            Some(1),
        );
        let other_q = decision_of(
            &honest,
            &all_yes,
            Some("decision"),
            &serde_json::json!({"q": "other"}),
            "c.x",
            Some(1),
        );
        let mut moved = d.clone();
        moved.votes[2] = other_q.votes[2].clone();
        moved.status = "decided".into();
        moved.value = serde_json::json!("approve");
        refused(&moved, "vote moved from another question");

        // A duplicated voter: one yes vote listed twice to reach the threshold.
        let mut dup = d.clone();
        dup.votes[2] = dup.votes[0].clone();
        dup.status = "decided".into();
        dup.value = serde_json::json!("approve");
        refused(&dup, "duplicated voter");
        let mut dup = d.clone();
        dup.voters[1] = dup.voters[0].clone();
        refused(&dup, "listed twice");

        // needs_review under f = 1 (2 against 2, n = 4) rewritten as a majority of n = 3.
        assert_eq!(d.status, "needs_review");
        let mut rewritten = d.clone();
        let deny_node = rewritten.votes[3].node_id.clone();
        rewritten.votes.retain(|v| v.node_id != deny_node);
        rewritten.voters.retain(|v| *v != deny_node);
        rewritten.n = 3;
        rewritten.f = None;
        rewritten.required = 2;
        rewritten.status = "decided".into();
        rewritten.value = serde_json::json!("approve");
        rewritten.dissenters = vec![rewritten.votes[2].node_id.clone()];
        refused(&rewritten, "quorum terms rewritten");
    }

    #[test]
    fn answers_without_the_key_never_decide_null() {
        let keys = keys(1, 3);
        let err = serde_json::json!({"error": "upstream down"});
        let d = decision_of(
            &keys,
            &[err.clone(), err.clone(), err],
            Some("decision"),
            &serde_json::json!({}),
            "c.x",
            None,
        );
        assert_eq!(d.status, "needs_review", "{d:#?}");
        assert_eq!(d.value, serde_json::Value::Null);
        let mut forged = d.clone();
        forged.status = "decided".into();
        refused(&forged, "status is decided but the votes give needs_review");
    }
}
