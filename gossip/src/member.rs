//! The membership plane: small, self-signed identities and the SWIM updates about them.

use agentmesh_crypto::{NodeId, Signed};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::record::Version;

/// Largest encoded signed membership identity, in bytes (DESIGN: ≤ 512).
pub const MEMBER_BYTES_MAX: usize = 512;
/// Most advertised addresses per member.
pub const ADDRS_MAX: usize = 4;
/// Longest address string, in bytes.
pub const ADDR_LEN_MAX: usize = 80;

/// A member's identity as it rides in SWIM packets. Signed by the member itself, so nobody can
/// claim a higher incarnation, a new record version or a graceful leave on its behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member.
    pub node_id: NodeId,
    /// Where it listens (multiaddr strings).
    pub addrs: Vec<String>,
    /// SWIM incarnation; bumped to refute suspicion.
    pub incarnation: u64,
    /// Version of its current record.
    pub record_version: Version,
    /// Short hash of its current signed record.
    pub record_hash: u64,
    /// True in the member's graceful-leave announcement.
    pub leaving: bool,
}

impl MemberInfo {
    /// Checks the named limits.
    pub fn check_limits(&self) -> Result<(), &'static str> {
        if self.addrs.len() > ADDRS_MAX {
            return Err("addrs");
        }
        if self.addrs.iter().any(|a| a.len() > ADDR_LEN_MAX) {
            return Err("addr");
        }
        Ok(())
    }

    /// Ordering key for alive announcements: a newer incarnation wins, then a newer record.
    pub fn key(&self) -> (u64, Version) {
        (self.incarnation, self.record_version)
    }
}

/// A self-signed membership identity.
pub type SignedMember = Signed<MemberInfo>;

/// Where a member stands, as seen locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; dead unless it refutes in time.
    Suspect,
    /// Declared dead by the suspicion timeout.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Lower-case name, as shown by the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// A membership change carried on SWIM messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// A member is alive at this incarnation and record version (or leaving, if flagged).
    Alive(Arc<SignedMember>),
    /// `from` suspects `node` at `incarnation`.
    Suspect {
        /// The suspected member.
        node: NodeId,
        /// Its incarnation as the accuser saw it.
        incarnation: u64,
        /// The accuser.
        from: NodeId,
    },
    /// `from` declared `node` dead at `incarnation`.
    Dead {
        /// The dead member.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
        /// Who declared it.
        from: NodeId,
    },
    /// A suspicion or death declaration signed by its accuser. Only these count towards
    /// Lifeguard confirmations: the unsigned forms above name an accuser anyone can forge.
    Accuse(Arc<SignedAccusation>),
}

/// What an accuser claims about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accusation {
    /// The accused member.
    pub node: NodeId,
    /// Its incarnation as the accuser saw it.
    pub incarnation: u64,
    /// True if the accuser's suspicion timed out and it declared the member dead.
    pub dead: bool,
}

/// An accusation signed by its accuser (the envelope signer).
pub type SignedAccusation = Signed<Accusation>;

/// The signature context of accusations.
pub const ACCUSATION_CONTEXT: agentmesh_crypto::Context =
    agentmesh_crypto::Context::Custom("accusation");

impl Update {
    /// The member this update is about.
    pub fn subject(&self) -> NodeId {
        match self {
            Update::Alive(m) => m.signer,
            Update::Suspect { node, .. } | Update::Dead { node, .. } => *node,
            // Verified before it is queued; an undecodable one is keyed by its signer.
            Update::Accuse(a) => a.decode_unverified().map_or(a.signer, |a| a.node),
        }
    }

    /// The member and incarnation a suspect or dead rumour is about (unverified).
    pub fn rumour(&self) -> Option<(NodeId, u64)> {
        match self {
            Update::Alive(_) => None,
            Update::Suspect {
                node, incarnation, ..
            }
            | Update::Dead {
                node, incarnation, ..
            } => Some((*node, *incarnation)),
            Update::Accuse(a) => a.decode_unverified().ok().map(|a| (a.node, a.incarnation)),
        }
    }
}

/// The signature context of membership identities.
pub const MEMBER_CONTEXT: agentmesh_crypto::Context = agentmesh_crypto::Context::Custom("member");
