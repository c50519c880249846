//! The `/agentmesh/call/1` wire protocol: one QUIC stream per call.
//!
//! ```text
//! caller -> callee: frame(postcard CallHeader)
//!                   frame(body chunk)* frame(empty)          -- request body, empty = end
//! callee -> caller: frame(postcard RespFrame::Head) frame(RespFrame::Data)*
//!                   [frame(RespFrame::Vote)] frame(RespFrame::End)  -- Vote iff want_vote
//!               or  frame(postcard RespFrame::Error)          -- at any point
//! ```
//!
//! Every frame is length-prefixed ([`crate::net::frame`]) and bounded by a named constant checked
//! before decoding. Decoding never panics; it returns [`ProtoError`].

use crate::contract::{CallError, ErrorCode, BODY_BYTES_MAX};
use crate::net::frame::{read_frame, write_frame, FrameError};
use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::Proficiency;
use futures::{AsyncRead, AsyncWrite};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The call protocol name.
pub const CALL_PROTOCOL: &str = "/agentmesh/call/1";
/// Largest encoded call header.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;
/// Largest body chunk, request or response.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Largest encoded response frame (a chunk plus its envelope, or an error with a body).
pub const RESP_FRAME_BYTES_MAX: usize = CHUNK_BYTES_MAX + 1024;
/// Longest capability name: the one rule of `contract/names.rs`, on the wire too.
pub const CAPABILITY_LEN_MAX: usize = crate::contract::names::CAPABILITY_NAME_LEN_MAX;
/// Most attribute constraints in one call.
pub const CALL_ATTRS_MAX: usize = 32;
/// Longest attribute key or value (`contract/names.rs`).
pub const ATTR_LEN_MAX: usize = crate::contract::names::ATTR_LEN_MAX;
/// Most hops in a call chain.
pub const CHAIN_LEN_MAX: usize = 16;
/// Longest trace header (`traceparent` is 55, `tracestate` at most 512 by the W3C spec).
pub const TRACE_LEN_MAX: usize = 1024;
/// Longest agent name, content type or role.
pub const NAME_LEN_MAX: usize = 256;
/// Most caller roles.
pub const ROLES_MAX: usize = 16;
/// Longest error message carried back.
pub const ERROR_MESSAGE_LEN_MAX: usize = 4096;
/// Most bytes of an agent's 5xx body passed back in an error frame.
pub const ERROR_BODY_BYTES_MAX: usize = 32 * 1024;

/// The first frame of a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallHeader {
    /// Random call id, for logs and tracing.
    pub call_id: [u8; 16],
    /// Capability asked for.
    pub capability: String,
    /// Attribute constraints the caller routed on.
    pub attrs: BTreeMap<String, String>,
    /// Minimum proficiency the caller routed on.
    pub min_proficiency: Option<Proficiency>,
    /// Time left for the callee, in ms (the caller already took its reserve).
    pub deadline_ms: u64,
    /// The chain of `(node, capability)` hops so far, oldest first.
    pub chain: Vec<(NodeId, String)>,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The calling node (informative: the callee trusts the TLS-proven peer id).
    pub caller_node: NodeId,
    /// The calling agent's name, if the caller has one.
    pub caller_agent: Option<String>,
    /// The caller's roles (informative: the callee trusts the verified certificate).
    pub caller_roles: Vec<String>,
    /// Content type of the request body.
    pub content_type: Option<String>,
    /// Sign a vote over the complete answer under these quorum terms ([`RespFrame::Vote`]
    /// before `End`).
    pub want_vote: Option<crate::contract::VoteTerms>,
    /// What the caller accepts back (passed to the agent as its `accept` header).
    pub accept: Option<String>,
}

/// The response head: status and load feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    /// HTTP status the agent answered with (below 500).
    pub status: u16,
    /// Content type of the body.
    pub content_type: Option<String>,
    /// The callee's agent name.
    pub agent: String,
    /// Calls in flight at the callee now (load feedback for routing).
    pub in_flight: u32,
    /// The callee's concurrency limit.
    pub max_concurrency: u32,
}

/// A typed error carried back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human message.
    pub message: String,
    /// The agent's status, for `agent_error`.
    pub status: Option<u16>,
    /// The agent's body, for `agent_error`.
    pub body: Option<String>,
    /// The agent marked the failure retryable.
    pub retryable: bool,
    /// The agent said never to retry it. Last, so an older peer that stops reading before it
    /// still decodes the frame.
    pub no_retry: bool,
}

/// One frame of the response direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RespFrame {
    /// The head; comes first unless the call fails before the agent answers.
    Head(ResponseHead),
    /// A body chunk (at most [`CHUNK_BYTES_MAX`]).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The body is complete.
    End,
    /// The call failed; no more frames follow.
    Error(WireError),
    /// The callee node's signed vote over the complete answer (asked for with
    /// `CallHeader::want_vote`); comes right before `End`.
    Vote(agentmesh_vote::SignedVote),
}

/// Why a call frame was refused. Decoding never changes state; these flag a buggy or hostile
/// peer (or a stream that broke).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame layer failed (oversize, closed, i/o).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The bytes are not a valid postcard encoding of the expected type.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// A decoded field breaks a named limit.
    #[error("field {0} exceeds its limit")]
    Limit(&'static str),
    /// The request body exceeds [`BODY_BYTES_MAX`].
    #[error("request body exceeds {BODY_BYTES_MAX} bytes")]
    BodyTooLarge,
    /// The frames came in an order the protocol does not allow.
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
}

/// The body a typed error with a hop path and no body of its own travels with (the path has
/// no field of its own on the wire, so older peers still decode the frame).
#[derive(Serialize, Deserialize)]
struct PathOnly {
    path: Vec<String>,
}

impl From<WireError> for CallError {
    fn from(w: WireError) -> Self {
        let path = w
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<PathOnly>(b).ok())
            .map(|p| p.path);
        let (body, path) = match path {
            Some(p) => (None, p),
            None => (w.body, Vec::new()),
        };
        let mut e = CallError {
            status: w.status,
            body,
            retryable: w.retryable,
            no_retry: w.no_retry,
            ..CallError::new(w.code, w.message)
        };
        for hop in path {
            e.push_hop(hop);
        }
        e
    }
}

impl From<&CallError> for WireError {
    fn from(e: &CallError) -> Self {
        WireError {
            code: e.code,
            message: truncate(&e.message, ERROR_MESSAGE_LEN_MAX),
            status: e.status,
            body: match (&e.body, e.path.is_empty()) {
                (Some(b), _) => Some(truncate(b, ERROR_BODY_BYTES_MAX)),
                (None, false) => serde_json::to_string(&PathOnly {
                    path: e.path.clone(),
                })
                .ok(),
                (None, true) => None,
            },
            retryable: e.retryable,
            no_retry: e.no_retry,
        }
    }
}

/// Truncates `s` to at most `max` bytes on a char boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn opt_len(s: &Option<String>, max: usize, name: &'static str) -> Result<(), ProtoError> {
    match s {
        Some(v) if v.len() > max => Err(ProtoError::Limit(name)),
        _ => Ok(()),
    }
}

impl CallHeader {
    /// Checks every named limit (on the way out and on the way in).
    pub fn check_limits(&self) -> Result<(), ProtoError> {
        // The same rule every entry point applies (`contract/names.rs`).
        if !crate::contract::names::is_capability_name(&self.capability) {
            return Err(ProtoError::Limit("capability"));
        }
        if self.attrs.len() > CALL_ATTRS_MAX
            || self
                .attrs
                .iter()
                .any(|(k, v)| k.len() > ATTR_LEN_MAX || v.len() > ATTR_LEN_MAX)
        {
            return Err(ProtoError::Limit("attrs"));
        }
        if self.chain.len() > CHAIN_LEN_MAX
            || self
                .chain
                .iter()
                .any(|(_, c)| !crate::contract::names::is_capability_name(c))
        {
            return Err(ProtoError::Limit("chain"));
        }
        opt_len(&self.traceparent, TRACE_LEN_MAX, "traceparent")?;
        opt_len(&self.tracestate, TRACE_LEN_MAX, "tracestate")?;
        opt_len(&self.caller_agent, NAME_LEN_MAX, "caller_agent")?;
        opt_len(&self.content_type, NAME_LEN_MAX, "content_type")?;
        opt_len(&self.accept, NAME_LEN_MAX, "accept")?;
        if self.caller_roles.len() > ROLES_MAX
            || self.caller_roles.iter().any(|r| r.len() > NAME_LEN_MAX)
        {
            return Err(ProtoError::Limit("caller_roles"));
        }
        if let Some(t) = &self.want_vote {
            let key_long = t
                .key
                .as_ref()
                .is_some_and(|k| k.len() > agentmesh_vote::SUBJECT_KEY_LEN_MAX);
            if key_long || t.n as usize > agentmesh_vote::VOTERS_MAX {
                return Err(ProtoError::Limit("want_vote"));
            }
        }
        Ok(())
    }

    /// Encodes the header, checking limits first.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        self.check_limits()?;
        let bytes = postcard::to_stdvec(self).map_err(|e| ProtoError::Decode(e.to_string()))?;
        crate::net::frame::check_len(bytes.len(), HEADER_BYTES_MAX)?;
        Ok(bytes)
    }

    /// Decodes and validates a header. Size is checked before decoding.
    pub fn decode(bytes: &[u8]) -> Result<CallHeader, ProtoError> {
        crate::net::frame::check_len(bytes.len(), HEADER_BYTES_MAX)?;
        let h: CallHeader =
            postcard::from_bytes(bytes).map_err(|e| ProtoError::Decode(e.to_string()))?;
        h.check_limits()?;
        Ok(h)
    }
}

impl RespFrame {
    /// Checks limits of the frame's fields.
    pub fn check_limits(&self) -> Result<(), ProtoError> {
        match self {
            RespFrame::Head(h) => {
                if h.agent.len() > NAME_LEN_MAX {
                    return Err(ProtoError::Limit("agent"));
                }
                opt_len(&h.content_type, NAME_LEN_MAX, "content_type")
            }
            RespFrame::Data(d) if d.len() > CHUNK_BYTES_MAX => Err(ProtoError::Limit("chunk")),
            RespFrame::Error(e) => {
                if e.message.len() > ERROR_MESSAGE_LEN_MAX {
                    return Err(ProtoError::Limit("message"));
                }
                opt_len(&e.body, ERROR_BODY_BYTES_MAX, "body")
            }
            _ => Ok(()),
        }
    }

    /// Encodes the frame, checking limits first.
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        self.check_limits()?;
        let bytes = postcard::to_stdvec(self).map_err(|e| ProtoError::Decode(e.to_string()))?;
        crate::net::frame::check_len(bytes.len(), RESP_FRAME_BYTES_MAX)?;
        Ok(bytes)
    }

    /// Decodes and validates a response frame. Size is checked before decoding.
    pub fn decode(bytes: &[u8]) -> Result<RespFrame, ProtoError> {
        crate::net::frame::check_len(bytes.len(), RESP_FRAME_BYTES_MAX)?;
        let f: RespFrame =
            postcard::from_bytes(bytes).map_err(|e| ProtoError::Decode(e.to_string()))?;
        f.check_limits()?;
        Ok(f)
    }
}

/// Writes the header frame.
pub async fn write_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    h: &CallHeader,
) -> Result<(), ProtoError> {
    let bytes = h.encode()?;
    write_frame(w, &bytes, HEADER_BYTES_MAX).await?;
    Ok(())
}

/// Reads the header frame.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<CallHeader, ProtoError> {
    let bytes = read_frame(r, HEADER_BYTES_MAX).await?;
    CallHeader::decode(&bytes)
}

/// Writes the request body as chunks followed by the empty end chunk.
pub async fn write_body<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), ProtoError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(ProtoError::BodyTooLarge);
    }
    for chunk in body.chunks(CHUNK_BYTES_MAX) {
        write_frame(w, chunk, CHUNK_BYTES_MAX).await?;
    }
    write_frame(w, &[], CHUNK_BYTES_MAX).await?;
    Ok(())
}

/// Reads the request body up to its empty end chunk, refusing more than [`BODY_BYTES_MAX`].
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ProtoError> {
    let mut body = Vec::new();
    loop {
        let chunk = read_frame(r, CHUNK_BYTES_MAX).await?;
        if chunk.is_empty() {
            return Ok(body);
        }
        if body.len() + chunk.len() > BODY_BYTES_MAX {
            return Err(ProtoError::BodyTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

/// Writes one response frame.
pub async fn write_resp<W: AsyncWrite + Unpin>(w: &mut W, f: &RespFrame) -> Result<(), ProtoError> {
    let bytes = f.encode()?;
    write_frame(w, &bytes, RESP_FRAME_BYTES_MAX).await?;
    Ok(())
}

/// Reads one response frame.
pub async fn read_resp<R: AsyncRead + Unpin>(r: &mut R) -> Result<RespFrame, ProtoError> {
    let bytes = read_frame(r, RESP_FRAME_BYTES_MAX).await?;
    RespFrame::decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::encode_frame;
    use futures::executor::block_on;
    use futures::io::Cursor;
    use proptest::prelude::*;

    fn node(b: u8) -> NodeId {
        agentmesh_crypto::Keypair::from_secret([b; 32]).node_id()
    }

    fn header_strategy() -> impl Strategy<Value = CallHeader> {
        (
            any::<[u8; 16]>(),
            "[a-z.]{1,40}",
            proptest::collection::btree_map("[a-z]{1,8}", "[A-Za-z0-9]{0,8}", 0..4),
            proptest::option::of(prop_oneof![
                Just(Proficiency::Novice),
                Just(Proficiency::Experienced),
                Just(Proficiency::Expert)
            ]),
            any::<u64>(),
            proptest::collection::vec((0u8..4, "[a-z.]{1,20}"), 0..4),
            proptest::option::of("[0-9a-f-]{0,55}"),
            proptest::option::of("[a-z]{1,20}"),
            proptest::collection::vec("[a-z]{1,10}", 0..3),
        )
            .prop_map(
                |(
                    call_id,
                    capability,
                    attrs,
                    min_proficiency,
                    deadline_ms,
                    chain,
                    tp,
                    agent,
                    roles,
                )| {
                    CallHeader {
                        call_id,
                        capability,
                        attrs,
                        min_proficiency,
                        deadline_ms,
                        chain: chain.into_iter().map(|(b, c)| (node(b), c)).collect(),
                        traceparent: tp,
                        tracestate: None,
                        caller_node: node(9),
                        caller_agent: agent,
                        caller_roles: roles,
                        content_type: Some("application/json".into()),
                        want_vote: None,
                        accept: Some("text/event-stream".into()),
                    }
                },
            )
    }

    fn resp_strategy() -> impl Strategy<Value = RespFrame> {
        prop_oneof![
            (any::<u16>(), "[a-z]{0,20}", any::<u32>(), any::<u32>()).prop_map(
                |(status, agent, in_flight, max_concurrency)| RespFrame::Head(ResponseHead {
                    status,
                    content_type: None,
                    agent,
                    in_flight,
                    max_concurrency,
                })
            ),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(RespFrame::Data),
            Just(RespFrame::End),
            ("[ -~]{0,100}", proptest::option::of(500u16..600)).prop_map(|(message, status)| {
                RespFrame::Error(WireError {
                    code: ErrorCode::AgentError,
                    message,
                    status,
                    body: Some("boom".into()),
                    retryable: status.is_some(),
                    no_retry: false,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn header_round_trip(h in header_strategy()) {
            let bytes = h.encode().unwrap();
            prop_assert_eq!(CallHeader::decode(&bytes).unwrap(), h);
        }

        #[test]
        fn resp_round_trip(f in resp_strategy()) {
            let bytes = f.encode().unwrap();
            prop_assert_eq!(RespFrame::decode(&bytes).unwrap(), f);
        }

        /// A body chunk encodes as one byte string, and that is byte for byte what the earlier
        /// element-by-element encoding of `Vec<u8>` was, so nodes of both kinds interoperate.
        #[test]
        fn data_frame_wire_format_is_unchanged(d in proptest::collection::vec(any::<u8>(), 0..2048)) {
            #[derive(Serialize)]
            enum Old { _Head, Data(Vec<u8>) }
            let new = RespFrame::Data(d.clone()).encode().unwrap();
            prop_assert_eq!(&new, &postcard::to_stdvec(&Old::Data(d)).unwrap());
        }

        #[test]
        fn header_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = CallHeader::decode(&bytes);
        }

        #[test]
        fn resp_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = RespFrame::decode(&bytes);
        }

        #[test]
        fn stream_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut r = Cursor::new(bytes.clone());
            let _ = block_on(read_header(&mut r));
            let mut r = Cursor::new(bytes.clone());
            let _ = block_on(read_body(&mut r));
            let mut r = Cursor::new(bytes);
            let _ = block_on(read_resp(&mut r));
        }

        #[test]
        fn body_round_trip(body in proptest::collection::vec(any::<u8>(), 0..200_000)) {
            let mut w = Cursor::new(Vec::new());
            block_on(write_body(&mut w, &body)).unwrap();
            let mut r = Cursor::new(w.into_inner());
            prop_assert_eq!(block_on(read_body(&mut r)).unwrap(), body);
        }
    }

    #[test]
    fn oversize_header_rejected_before_decode() {
        let bytes = vec![0u8; HEADER_BYTES_MAX + 1];
        assert!(matches!(
            CallHeader::decode(&bytes),
            Err(ProtoError::Frame(FrameError::TooLarge { .. }))
        ));
        // On a stream only the prefix is needed to refuse it.
        let prefix = ((HEADER_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
        let mut r = Cursor::new(prefix);
        assert!(matches!(
            block_on(read_header(&mut r)),
            Err(ProtoError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn oversize_chunk_rejected() {
        let prefix = ((CHUNK_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
        let mut r = Cursor::new(prefix);
        assert!(matches!(
            block_on(read_body(&mut r)),
            Err(ProtoError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn body_over_limit_rejected() {
        let chunk = vec![7u8; CHUNK_BYTES_MAX];
        let mut wire = Vec::new();
        for _ in 0..=(BODY_BYTES_MAX / CHUNK_BYTES_MAX) {
            wire.extend(encode_frame(&chunk));
        }
        wire.extend(encode_frame(&[]));
        let mut r = Cursor::new(wire);
        assert!(matches!(
            block_on(read_body(&mut r)),
            Err(ProtoError::BodyTooLarge)
        ));
    }

    #[test]
    fn header_limits_enforced_both_ways() {
        let mut h = CallHeader {
            call_id: [0; 16],
            capability: "x".repeat(CAPABILITY_LEN_MAX + 1),
            attrs: BTreeMap::new(),
            min_proficiency: None,
            deadline_ms: 1,
            chain: vec![],
            traceparent: None,
            tracestate: None,
            caller_node: node(1),
            caller_agent: None,
            caller_roles: vec![],
            content_type: None,
            want_vote: Some(crate::contract::VoteTerms {
                n: 3,
                f: None,
                key: Some("decision".into()),
            }),
            accept: None,
        };
        assert!(matches!(h.encode(), Err(ProtoError::Limit("capability"))));
        let raw = postcard::to_stdvec(&h).unwrap();
        assert!(matches!(
            CallHeader::decode(&raw),
            Err(ProtoError::Limit("capability"))
        ));
        h.capability = String::new();
        assert!(h.encode().is_err());
        // The wire applies the one capability-name rule, not only a length.
        for bad in ["Inventory.Query", "has space", "ünicode"] {
            h.capability = bad.into();
            let raw = postcard::to_stdvec(&h).unwrap();
            assert!(
                matches!(
                    CallHeader::decode(&raw),
                    Err(ProtoError::Limit("capability"))
                ),
                "{bad}"
            );
        }
        h.capability = "x.y".into();
        h.chain = vec![(node(2), "Not A Name".into())];
        let raw = postcard::to_stdvec(&h).unwrap();
        assert!(matches!(
            CallHeader::decode(&raw),
            Err(ProtoError::Limit("chain"))
        ));
    }
}
