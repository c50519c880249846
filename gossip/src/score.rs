//! Peer scoring: misbehaviour lowers a peer's score; below a threshold its messages are
//! ignored. Scores are keyed by node id, so they survive reconnects.

use agentmesh_crypto::NodeId;
use std::collections::BTreeMap;

/// Misbehaviours and their cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// A signature that does not verify.
    BadSignature,
    /// A record or identity about A signed by B, or a join on someone else's behalf.
    ForeignRecord,
    /// A message that needs membership from a non-member.
    NonMember,
    /// A frame or entry above its size limit.
    Oversize,
    /// A frame that does not decode.
    Decode,
    /// A record without a valid admission certificate.
    Unadmitted,
}

impl Penalty {
    /// Points lost.
    pub fn cost(self) -> i32 {
        match self {
            Penalty::BadSignature | Penalty::ForeignRecord => 50,
            Penalty::Unadmitted => 40,
            Penalty::Oversize | Penalty::Decode => 20,
            Penalty::NonMember => 5,
        }
    }

    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Penalty::BadSignature => "bad_signature",
            Penalty::ForeignRecord => "foreign_record",
            Penalty::NonMember => "non_member",
            Penalty::Oversize => "oversize",
            Penalty::Decode => "decode_error",
            Penalty::Unadmitted => "unadmitted",
        }
    }
}

/// Scores of misbehaving peers (well-behaved peers are not stored: their score is 0).
#[derive(Debug, Clone)]
pub struct Scores {
    scores: BTreeMap<NodeId, i32>,
    max: usize,
    ignore_below: i32,
}

/// The lowest score kept, so a reformed peer can recover in bounded time.
pub const SCORE_FLOOR: i32 = -1000;

impl Scores {
    /// A table holding at most `max` peers.
    pub fn new(max: usize, ignore_below: i32) -> Self {
        Scores {
            scores: BTreeMap::new(),
            max,
            ignore_below,
        }
    }

    /// A peer's score.
    pub fn get(&self, peer: &NodeId) -> i32 {
        self.scores.get(peer).copied().unwrap_or(0)
    }

    /// True if the peer's messages are ignored.
    pub fn ignored(&self, peer: &NodeId) -> bool {
        self.get(peer) < self.ignore_below
    }

    /// Lowers a peer's score. When the table is full the mildest entry is forgotten.
    pub fn penalize(&mut self, peer: NodeId, p: Penalty) {
        if !self.scores.contains_key(&peer) && self.scores.len() >= self.max {
            let mildest = self.scores.iter().max_by_key(|(_, s)| **s).map(|(k, _)| *k);
            if let Some(k) = mildest {
                self.scores.remove(&k);
            }
        }
        let s = self.scores.entry(peer).or_insert(0);
        *s = (*s - p.cost()).max(SCORE_FLOOR);
    }

    /// Forgives every peer a little (called once per protocol period).
    pub fn recover(&mut self, points: i32) {
        self.scores.retain(|_, s| {
            *s = (*s + points).min(0);
            *s < 0
        });
    }
}
