//! Wire format: a version byte, then a postcard-encoded [`Message`]. Sizes are checked before
//! any decoding, and every failure is a typed [`WireError`].

use agentmesh_crypto::{NodeId, SignedRevocation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::member::{SignedMember, Update};
use crate::record::{SignedRecord, Version};

/// The wire version this crate speaks.
pub const WIRE_VERSION: u8 = 1;
/// Most updates in one message (in addition to the byte budget).
pub const UPDATES_PER_MESSAGE_MAX: usize = 64;
/// Most entries in one IHAVE or GRAFT.
pub const IHAVE_ENTRIES_MAX: usize = 256;
/// Most records in one pull response.
pub const PULL_RECORDS_MAX: usize = 64;
/// Most member identities in one push-pull `Sync` frame.
pub const SYNC_MEMBERS_MAX: usize = 1024;
/// Most entries (and most wants) in one membership digest.
pub const DIGEST_ENTRIES_MAX: usize = 256;

/// A gossip message. The sender is the transport-authenticated peer, never a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// SWIM direct probe.
    Ping {
        /// Probe sequence number.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Answer to a ping.
    Ack {
        /// Sequence of the ping answered.
        seq: u32,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Ask the receiver to probe `target` on the sender's behalf.
    PingReq {
        /// The origin's probe sequence.
        seq: u32,
        /// Member to probe.
        target: NodeId,
        /// Piggybacked updates.
        updates: Vec<Update>,
    },
    /// Lifeguard: the relay did not hear from the target in time.
    Nack {
        /// The origin's probe sequence.
        seq: u32,
    },
    /// A dedicated gossip round.
    Gossip {
        /// Updates.
        updates: Vec<Update>,
    },
    /// A node joins through the receiver.
    Join {
        /// The joiner's identity.
        member: Arc<SignedMember>,
        /// The joiner's record.
        record: Arc<SignedRecord>,
    },
    /// Membership state sent to a joiner (push-pull), in chunks.
    Sync {
        /// Alive and suspect members.
        members: Vec<Arc<SignedMember>>,
    },
    /// Plumtree eager push of a record.
    Record {
        /// The record.
        record: Arc<SignedRecord>,
    },
    /// Plumtree lazy announcement: "I have these record versions".
    IHave {
        /// `(origin, version)` pairs.
        entries: Vec<(NodeId, Version)>,
    },
    /// Plumtree graft: send me these and keep me on your eager list.
    Graft {
        /// `(origin, version)` pairs wanted.
        entries: Vec<(NodeId, Version)>,
    },
    /// Plumtree prune: move me to your lazy list.
    Prune,
    /// Anti-entropy pull: send me your copies of these records.
    Pull {
        /// Request id, echoed in the response.
        req: u32,
        /// Origins wanted.
        ids: Vec<NodeId>,
    },
    /// Answer to a pull.
    PullResp {
        /// Request id answered.
        req: u32,
        /// Records held by the responder.
        records: Vec<Arc<SignedRecord>>,
    },
    /// Root-signed revocations (appended last: older variants keep their wire tags).
    Revocations {
        /// The revocations.
        list: Vec<Arc<SignedRevocation>>,
    },
    /// Membership anti-entropy (push-pull by digest). The receiver answers with `Sync`
    /// carrying its identities that are newer than `entries` or named in `wants`; with
    /// `reply` it also sends its own digest (without `reply`), so both sides catch up in at
    /// most four messages. Appended last, like `Revocations`.
    Digest {
        /// `(member, incarnation)` the sender holds alive or suspect (itself first).
        entries: Vec<(NodeId, u64)>,
        /// Members the sender lacks, or holds at an older incarnation, from the peer's
        /// digest.
        wants: Vec<NodeId>,
        /// Answer with a digest of your own.
        reply: bool,
    },
}

impl Message {
    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Ping { .. } => "ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping_req",
            Message::Nack { .. } => "nack",
            Message::Gossip { .. } => "gossip",
            Message::Join { .. } => "join",
            Message::Sync { .. } => "sync",
            Message::Record { .. } => "record",
            Message::IHave { .. } => "ihave",
            Message::Graft { .. } => "graft",
            Message::Prune => "prune",
            Message::Pull { .. } => "pull",
            Message::PullResp { .. } => "pull_resp",
            Message::Revocations { .. } => "revocations",
            Message::Digest { .. } => "digest",
        }
    }

    /// Checks list limits that the byte limit alone does not imply.
    fn check_limits(&self) -> Result<(), WireError> {
        let ok = match self {
            Message::Ping { updates, .. }
            | Message::Ack { updates, .. }
            | Message::PingReq { updates, .. }
            | Message::Gossip { updates } => updates.len() <= UPDATES_PER_MESSAGE_MAX,
            Message::IHave { entries } | Message::Graft { entries } => {
                entries.len() <= IHAVE_ENTRIES_MAX
            }
            Message::PullResp { records, .. } => records.len() <= PULL_RECORDS_MAX,
            Message::Pull { ids, .. } => ids.len() <= PULL_RECORDS_MAX,
            Message::Revocations { list } => {
                list.len() <= crate::revocations::REVOCATIONS_PER_MESSAGE_MAX
            }
            Message::Sync { members } => members.len() <= SYNC_MEMBERS_MAX,
            Message::Digest { entries, wants, .. } => {
                entries.len() <= DIGEST_ENTRIES_MAX && wants.len() <= DIGEST_ENTRIES_MAX
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(WireError::Limit(self.kind()))
        }
    }
}

/// Why a frame was refused. Decoding never changes state; the caller penalises the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is larger than the configured limit; nothing was decoded.
    #[error("frame of {len} bytes exceeds limit {limit}")]
    Oversize {
        /// Frame size.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The frame is empty.
    #[error("empty frame")]
    Empty,
    /// The version byte is not one we speak.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// postcard refused the bytes (hostile or corrupt input).
    #[error("decode error: {0}")]
    Decode(String),
    /// A list in the message exceeds its named limit.
    #[error("message {0} exceeds a list limit")]
    Limit(&'static str),
}

/// Encodes a message with the version byte.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Serialising into a Vec cannot fail for these types.
    out.extend(postcard::to_allocvec(msg).expect("encode to Vec"));
    out
}

/// The encoded size of a message, without keeping the bytes.
pub fn encoded_len(msg: &Message) -> usize {
    1 + postcard::experimental::serialized_size(msg).expect("size of Vec encoding")
}

/// Decodes a frame, checking its size against `limit` before touching the payload.
pub fn decode(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    if bytes.len() > limit {
        return Err(WireError::Oversize {
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest): (Message, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Decode(format!("{} trailing bytes", rest.len())));
    }
    msg.check_limits()?;
    Ok(msg)
}
