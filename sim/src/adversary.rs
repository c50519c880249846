//! Misbehaving members: admitted nodes that forge, replay and lie. Their honest state machine
//! keeps them members; these acts come on top.

use agentmesh_crypto::Signed;
use agentmesh_gossip::member::{Accusation, ACCUSATION_CONTEXT};
use agentmesh_gossip::record::RECORD_CONTEXT;
use agentmesh_gossip::{Message, NodeRecord, Update};
use rand::Rng;
use std::sync::Arc;

use crate::world::{Action, World};

/// Kinds of adversary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adversary {
    /// Sends bit-flipped records and records about others signed with its own key.
    Forger,
    /// Re-sends old records of others.
    Replayer,
    /// Claims that live members are suspect or dead: signed as itself, or unsigned in the name
    /// of another member.
    Liar,
}

/// Interval between adversarial acts.
pub const ACT_INTERVAL_MS: u64 = 500;
/// Honest nodes targeted per act.
pub const TARGETS_PER_ACT: usize = 3;

/// One adversarial act by node `i`, then schedules the next.
pub fn act(w: &mut World, i: usize) {
    let Some(kind) = w.nodes[i].adversary else {
        return;
    };
    if !w.is_up(i) {
        return;
    }
    let live = w.live();
    if live.is_empty() {
        return;
    }
    let victim = live[w.rng().gen_range(0..live.len())];
    let victim_id = w.nodes[victim].id;
    let msg = match kind {
        Adversary::Forger => {
            let Some(rec) = w.nodes[i]
                .g
                .as_ref()
                .and_then(|g| g.signed_record(&victim_id))
            else {
                return;
            };
            if w.rng().gen_bool(0.5) {
                // Bit flip: the signature no longer verifies.
                let mut forged = (*rec).clone();
                if !forged.payload.is_empty() {
                    let at = w.rng().gen_range(0..forged.payload.len());
                    forged.payload[at] ^= 1 << w.rng().gen_range(0..8);
                }
                Message::Record {
                    record: Arc::new(forged),
                }
            } else {
                // A record about the victim, signed by the forger.
                let mut body: NodeRecord = match rec.decode_unverified() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                body.seq += 1000;
                let forged = Signed::sign(w.key(i), RECORD_CONTEXT, &body);
                Message::Record {
                    record: Arc::new(forged),
                }
            }
        }
        Adversary::Replayer => {
            let Some(old) = w.first_record(victim) else {
                return;
            };
            Message::Record { record: old }
        }
        Adversary::Liar => {
            let inc = w.nodes[victim]
                .g
                .as_ref()
                .map(|g| g.incarnation())
                .unwrap_or(0);
            let dead = w.rng().gen_bool(0.5);
            let u = if w.rng().gen_bool(0.5) {
                // Signed with its own key: an authentic accusation by a member that lies.
                let body = Accusation {
                    node: victim_id,
                    incarnation: inc,
                    dead,
                };
                Update::Accuse(Arc::new(Signed::sign(w.key(i), ACCUSATION_CONTEXT, &body)))
            } else {
                // Unsigned, naming a random honest member as the accuser.
                let pick = live[w.rng().gen_range(0..live.len())];
                let accuser = w.nodes[pick].id;
                if dead {
                    Update::Dead {
                        node: victim_id,
                        incarnation: inc,
                        from: accuser,
                    }
                } else {
                    Update::Suspect {
                        node: victim_id,
                        incarnation: inc,
                        from: accuser,
                    }
                }
            };
            Message::Gossip { updates: vec![u] }
        }
    };
    for _ in 0..TARGETS_PER_ACT {
        let t = live[w.rng().gen_range(0..live.len())];
        if t != victim || kind == Adversary::Liar {
            w.transmit(i, t, msg.clone());
        }
    }
    let next = w.now + ACT_INTERVAL_MS;
    w.schedule(next, Action::Adversary(i));
}
