//! The caller side of a call: to the local agent over HTTP, or to a remote node over
//! `/agentmesh/call/1`, with the answer streamed back as a [`ResponseBody`].

use crate::agent::client::AgentRequest;
use crate::call::callee::{hex_id, LocalAgent};
use crate::contract::{CallError, ErrorCode, ResponseBody};
use crate::net::call_endpoint::{advertised_port, CallPlaneError};
use crate::net::call_proto::{read_resp, write_body, write_header, CallHeader, RespFrame};
use crate::net::transport::{parse_addrs, Transport};
use crate::routing::router::{Candidate, LoadGuard, Router};
use crate::security::admission::{AdmissionTable, ADMIT_TIMEOUT};
use futures::StreamExt;
use std::sync::Arc;
use tokio::time::Instant;

/// Time to open a call stream, connecting first if needed (a dead connection fails here
/// instead of holding the call until its deadline).
pub const STREAM_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// What a successful attempt returns before the body streams.
pub struct Answer {
    /// Agent status.
    pub status: u16,
    /// Content type.
    pub content_type: Option<String>,
    /// The streamed body.
    pub body: ResponseBody,
    /// The agent name the callee reported.
    pub agent: String,
    /// The callee's signed votes, once the body is read to its end (if asked for).
    pub vote: crate::contract::VoteSlot,
}

/// The parts of a call shared by every attempt.
pub struct Attempt<'a> {
    /// The header to send (its `deadline_ms` is set per attempt).
    pub header: CallHeader,
    /// The request body.
    pub body: &'a bytes::Bytes,
    /// When the whole call must be done.
    pub deadline: Instant,
    /// Time kept back from each hop's budget.
    pub reserve: std::time::Duration,
}

/// Calls the local agent directly (no QUIC hop).
pub async fn call_local(
    agent: &Arc<LocalAgent>,
    cand: &Candidate,
    a: &Attempt<'_>,
    roles: Vec<String>,
) -> Result<Answer, CallError> {
    let reg = agent.offering(&a.header.capability)?;
    let guard = agent.try_acquire()?;
    let req = AgentRequest {
        handler: reg.handler.clone(),
        capability: a.header.capability.clone(),
        body: a.body.clone(),
        content_type: a.header.content_type.clone(),
        deadline: a.deadline.saturating_duration_since(Instant::now()),
        caller_node: a.header.caller_node.to_string(),
        caller_agent: a.header.caller_agent.clone(),
        caller_roles: roles,
        call_id: hex_id(&a.header.call_id),
        traceparent: a.header.traceparent.clone(),
        tracestate: a.header.tracestate.clone(),
        chain: Some(crate::resilience::chain::encode(&a.header.chain)),
        accept: a.header.accept.clone(),
    };
    let resp = agent.invoke(req).await?;
    let status = resp.status();
    let content_type = resp.content_type();
    let body = resp
        .into_stream()
        .map(move |r| {
            let _held = &guard;
            r.map_err(|e| std::io::Error::other(e.message))
        })
        .boxed();
    Ok(Answer {
        status,
        content_type,
        body,
        agent: cand.agent.clone(),
        vote: Default::default(),
    })
}

/// Calls a remote candidate over `/agentmesh/call/1`.
pub async fn call_remote(
    transport: &Transport,
    admission: &AdmissionTable,
    router: &Router,
    cand: &Candidate,
    a: &Attempt<'_>,
) -> Result<Answer, CallError> {
    let peer = crate::net::transport::peer_of(&cand.node_id)
        .map_err(|e| CallError::new(ErrorCode::Internal, e.to_string()))?;
    let budget = a
        .deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(a.reserve);
    let mut header = a.header.clone();
    header.deadline_ms = budget.as_millis() as u64;
    let guard = router.start_call(cand.node_id);
    let open = async {
        // Both verdicts are dropped when the last connection closes, so a mutually admitted
        // peer is connected: skip the round trip through the swarm task.
        if !admission.is_mutual(&cand.node_id) {
            transport
                .connect(peer, parse_addrs(&cand.addrs))
                .await
                .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
            admission
                .wait_mutual(&cand.node_id, budget.min(ADMIT_TIMEOUT))
                .await
                .map_err(|r| unreachable(format!("peer not admitted: {r}")))?;
        }
        let port = advertised_port(&cand.addrs)
            .ok_or_else(|| unreachable(CallPlaneError::NoCallPort.to_string()))?;
        let ip = transport
            .remote_ip(&peer)
            .ok_or_else(|| unreachable(CallPlaneError::NoAddress.to_string()))?;
        let mut retried = false;
        loop {
            let (w, r) = tokio::time::timeout(
                STREAM_OPEN_TIMEOUT,
                transport.calls.open(cand.node_id, ip, port),
            )
            .await
            .map_err(|_| unreachable("call stream open timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
            match send_call(r, w, &header, a.body).await {
                Ok(done) => return Ok(done),
                // The peer restarted on the same port: its stateless reset closed our old
                // connection before the call reached it.
                Err(_) if !retried && transport.calls.connection_lost(&cand.node_id) => {
                    retried = true;
                }
                Err(e) => return Err(unreachable(e.to_string())),
            }
        }
    };
    let (first, r) = tokio::time::timeout_at(a.deadline, open)
        .await
        .map_err(|_| {
            CallError::new(
                ErrorCode::DeadlineExceeded,
                "deadline passed before the answer",
            )
        })??;
    let head = match first {
        RespFrame::Head(h) => h,
        RespFrame::Error(e) => return Err(e.into()),
        _ => {
            return Err(CallError::new(
                ErrorCode::Internal,
                "callee answered without a response head",
            ))
        }
    };
    router.observe_reported(
        cand.node_id,
        head.in_flight,
        head.max_concurrency,
        transport.calls.rtt(&cand.node_id),
    );
    let vote = crate::contract::VoteSlot::default();
    Ok(Answer {
        status: head.status,
        content_type: head.content_type,
        agent: head.agent,
        body: remote_body(r, a.deadline, guard, vote.clone()),
        vote,
    })
}

type CallStreamHalves = (RespFrame, quinn::RecvStream);

/// Sends the header and body, finishes the send side (one packet with the request), and
/// reads the first response frame.
async fn send_call(
    mut r: quinn::RecvStream,
    mut w: quinn::SendStream,
    header: &CallHeader,
    body: &bytes::Bytes,
) -> Result<CallStreamHalves, crate::net::call_proto::ProtoError> {
    write_header(&mut w, header).await?;
    write_body(&mut w, body).await?;
    w.finish().map_err(|e| {
        crate::net::call_proto::ProtoError::from(crate::net::frame::FrameError::from(
            std::io::Error::from(e),
        ))
    })?;
    let first = read_resp(&mut r).await?;
    Ok((first, r))
}

fn unreachable(msg: String) -> CallError {
    CallError::new(ErrorCode::AgentUnreachable, msg)
}

/// Dropping it before the end drops `r`, which tells the callee to stop (STOP_SENDING): the
/// callee cancels the agent request.
struct BodyState {
    r: quinn::RecvStream,
    deadline: Instant,
    _guard: LoadGuard,
    done: bool,
    vote: crate::contract::VoteSlot,
}

fn remote_body(
    r: quinn::RecvStream,
    deadline: Instant,
    guard: LoadGuard,
    vote: crate::contract::VoteSlot,
) -> ResponseBody {
    let st = BodyState {
        r,
        deadline,
        _guard: guard,
        done: false,
        vote,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut next = tokio::time::timeout_at(st.deadline, read_resp(&mut st.r)).await;
        // The vote trailer is not body: keep every distinct vote aside (two different ones
        // are evidence of equivocation) and read on; more than the limit fails the answer.
        let mut too_many = false;
        while let Ok(Ok(RespFrame::Vote(v))) = next {
            too_many = {
                let mut votes = st.vote.lock().unwrap_or_else(|p| p.into_inner());
                let new = !votes.contains(&v);
                if new && votes.len() < crate::contract::VOTE_FRAMES_MAX {
                    votes.push(v);
                }
                new && votes.len() >= crate::contract::VOTE_FRAMES_MAX && !votes.contains(&v)
            };
            if too_many {
                break;
            }
            next = tokio::time::timeout_at(st.deadline, read_resp(&mut st.r)).await;
        }
        if too_many {
            st.done = true;
            return Some((
                Err(std::io::Error::other("callee sent too many vote frames")),
                st,
            ));
        }
        let item = match next {
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "deadline passed while streaming the answer",
            )),
            Ok(Ok(RespFrame::Data(d))) => Ok(bytes::Bytes::from(d)),
            Ok(Ok(RespFrame::End)) => {
                crate::net::call_endpoint::take_eof(&mut st.r);
                return None;
            }
            Ok(Ok(RespFrame::Error(e))) => Err(std::io::Error::other(format!(
                "{:?}: {}",
                e.code, e.message
            ))),
            Ok(Ok(RespFrame::Head(_))) => Err(std::io::Error::other("duplicate response head")),
            Ok(Ok(RespFrame::Vote(_))) => Err(std::io::Error::other("unexpected vote")),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        };
        if item.is_err() {
            st.done = true;
        }
        Some((item, st))
    })
    .boxed()
}
