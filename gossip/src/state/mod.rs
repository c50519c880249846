//! The gossip state machine: `handle(input, now)` in, `poll_output()` out. It owns its RNG and
//! never reads a clock, a socket or global randomness.

mod getters;
mod join_leave;
mod local_record;
mod membership;
mod plumtree;
mod probe;
mod pull;
mod push_pull;
mod revocation_intake;
mod shared_view;
mod timers;

pub use shared_view::SharedView;

use crate::revocations::Revocations;
use agentmesh_crypto::{Keypair, NodeId, Signed, SignedCert, SignedRevocation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::broadcast::BroadcastQueue;
use crate::config::Config;
use crate::member::{MemberInfo, MemberState, SignedMember, Update};
use crate::member::{SignedAccusation, ADDRS_MAX, MEMBER_CONTEXT};
use crate::record::{
    record_hash, AgentInfo, Capability, Health, NodeRecord, Priority, Proficiency, SignedRecord,
    Version, RECORD_BYTES_MAX, RECORD_CONTEXT,
};
use crate::score::{Penalty, Scores};
use crate::suspicion::Suspicion;
use crate::table::{Entry, Members, ProbeCycle};
use crate::verify::{StrictVerifier, Verifier};
use crate::wire::{self, Message};

// Re-exported so `agentmesh_gossip::state::Millis` keeps working.
pub use crate::time::Millis;

/// Most members waiting for an admitted record before they are visible.
pub const PENDING_MAX: usize = 16_384;
/// Most records held for origins whose membership has not arrived yet.
pub const ORPHANS_MAX: usize = 1024;
/// Most indirect probes relayed for others at once.
pub const RELAYS_MAX: usize = 256;
/// Most missing-record (IHAVE) timers at once.
pub const MISSING_MAX: usize = 4096;
/// Most of our own signed accusations kept for re-sending.
pub const OWN_ACCUSATIONS_MAX: usize = 1024;
/// Most seeds remembered as join targets.
pub const JOIN_SEEDS_MAX: usize = 16;
/// Most peers whose `Sync` answer to our digest we are waiting for at once.
pub const SYNC_PEERS_MAX: usize = 64;

/// Inputs to the state machine.
#[derive(Debug, Clone)]
pub enum Input {
    /// An encoded frame from an authenticated peer.
    Frame {
        /// The peer, as proven by the transport.
        from: NodeId,
        /// The frame bytes (checked against `frame_bytes_max` before decoding).
        bytes: Vec<u8>,
    },
    /// An already-decoded message (the simulator skips encoding but accounts for its size).
    Message {
        /// The peer.
        from: NodeId,
        /// The message.
        msg: Message,
    },
    /// Timers: call at or after [`Gossip::next_timeout`].
    Tick,
    /// Join the mesh through these members (ids proven by connecting to their addresses).
    Join {
        /// Seed node ids.
        seeds: Vec<NodeId>,
    },
    /// Leave gracefully: the leave is signed and gossiped.
    Leave,
    /// Change the local record.
    Update(RecordUpdate),
    /// A root-signed revocation to apply and spread (from the operator through the node).
    Revoke(Arc<SignedRevocation>),
}

/// A change to the local node's record.
#[derive(Debug, Clone)]
pub enum RecordUpdate {
    /// Register, replace or remove the agent.
    Agent(Option<AgentInfo>),
    /// Calls in flight now (published with hysteresis).
    Load {
        /// In-flight calls.
        in_flight: u32,
    },
    /// Health.
    Health(Health),
    /// Priority.
    Priority(Priority),
    /// A new admission certificate (renewal).
    Cert(Option<SignedCert>),
    /// Concurrency limit.
    MaxConcurrency(u32),
    /// Set or clear an extension entry.
    Ext {
        /// Extension name.
        key: String,
        /// Bytes, or None to remove.
        value: Option<Vec<u8>>,
    },
}

/// Outputs for the driver.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send an encoded frame.
    Send {
        /// The peer.
        to: NodeId,
        /// Its last known addresses.
        addrs: Vec<String>,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Something the node should act on.
    Event(Event),
}

/// Membership and record events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became known (or rejoined).
    Joined(NodeId),
    /// A member's record changed.
    Updated(NodeId),
    /// A member is suspected.
    Suspect(NodeId),
    /// A suspected member refuted and is alive.
    Alive(NodeId),
    /// A member was declared dead.
    Dead(NodeId),
    /// A member left gracefully.
    Left(NodeId),
    /// A member was revoked by the mesh root and dropped.
    Revoked(NodeId),
    /// A peer misbehaved and lost score.
    Penalized {
        /// The peer.
        peer: NodeId,
        /// What it did.
        reason: String,
    },
}

/// A member as queries return it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The member.
    pub node_id: NodeId,
    /// Its addresses.
    pub addrs: Vec<String>,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its record, if held.
    pub record: Option<Arc<NodeRecord>>,
}

/// A capability query: name, attribute constraints, minimum proficiency.
#[derive(Debug, Clone, Default)]
pub struct CapabilityQuery {
    /// Capability name.
    pub capability: String,
    /// Every attribute must match (value equal, or contained in a list).
    pub attrs: BTreeMap<String, String>,
    /// Minimum proficiency.
    pub min_proficiency: Option<Proficiency>,
}

/// One match of a capability query.
#[derive(Debug, Clone)]
pub struct CapabilityMatch {
    /// The node offering it.
    pub node_id: NodeId,
    /// Its record.
    pub record: Arc<NodeRecord>,
    /// The matching capability.
    pub capability: Capability,
}

/// Errors from [`Gossip::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// The local record breaks a limit; nothing was created.
    #[error("local record field {0} exceeds its limit")]
    RecordLimit(&'static str),
    /// The local record encodes larger than `RECORD_BYTES_MAX`.
    #[error("local record is {0} bytes, limit {RECORD_BYTES_MAX}")]
    RecordTooLarge(usize),
    /// Too many or too long addresses.
    #[error("addresses exceed their limit")]
    Addrs,
}

/// Counters for metrics and the simulator.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Frames sent.
    pub msgs_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Frames received.
    pub msgs_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Record copies received (eager, pulled or joined), including duplicates.
    pub record_copies_in: u64,
    /// Record copies that were new.
    pub records_new: u64,
    /// Frames ignored because the sender's score is too low.
    pub ignored: u64,
    /// Messages from peers we know only by identity (their admitted record not seen yet: the
    /// join race), dropped without a penalty.
    pub early_dropped: u64,
    /// Penalties applied.
    pub penalties: u64,
    /// Suspicions raised locally.
    pub suspicions: u64,
    /// Suspicions about self refuted.
    pub refutations: u64,
}

struct Probe {
    target: NodeId,
    seq: u32,
    direct_deadline: Millis,
    period_end: Millis,
    indirect_sent: bool,
    acked: bool,
    nacks_expected: u32,
    nacks: u32,
}

struct Relay {
    origin: NodeId,
    origin_seq: u32,
    nack_at: Millis,
}

struct Missing {
    deadline: Millis,
    from: Vec<NodeId>,
}

struct PullReq {
    deadline: Millis,
    ids: Vec<NodeId>,
}

/// One node's gossip state machine.
pub struct Gossip {
    cfg: Config,
    key: Keypair,
    me: NodeId,
    rng: ChaCha8Rng,
    verifier: Arc<dyn Verifier>,
    addrs: Vec<String>,
    local: NodeRecord,
    local_signed: Arc<SignedRecord>,
    local_member: Arc<SignedMember>,
    leaving: bool,
    members: Members,
    pending: BTreeMap<NodeId, Arc<SignedMember>>,
    orphans: BTreeMap<NodeId, (Arc<SignedRecord>, Arc<NodeRecord>)>,
    suspicions: BTreeMap<NodeId, Suspicion>,
    own_accusations: BTreeMap<(NodeId, u64, bool), Arc<SignedAccusation>>,
    probe_soon: BTreeSet<NodeId>,
    join_seeds: BTreeSet<NodeId>,
    probe_cycle: ProbeCycle,
    probe: Option<Probe>,
    next_probe_at: Millis,
    seq: u32,
    relays: BTreeMap<u32, Relay>,
    poked: BTreeSet<NodeId>,
    lhm: u32,
    queue: BroadcastQueue,
    next_gossip_at: Millis,
    eager: BTreeSet<NodeId>,
    lazy: BTreeSet<NodeId>,
    lazy_pending: BTreeMap<NodeId, Vec<(NodeId, Version)>>,
    missing: BTreeMap<(NodeId, Version), Missing>,
    stale: BTreeMap<NodeId, Millis>,
    pulls: BTreeMap<u32, PullReq>,
    next_ae_at: Millis,
    next_push_pull_at: Millis,
    /// Where the next digest window starts in the member table (it rotates).
    push_pull_cursor: usize,
    /// Peers we sent a digest to, with when we stop taking their `Sync` answer.
    sync_peers: BTreeMap<NodeId, Millis>,
    published_load: u32,
    last_publish: Millis,
    scores: Scores,
    revoked: Revocations,
    out: VecDeque<(NodeId, Message)>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Gossip {
    /// Creates a node. `record` is a template (agent, cert, capacity); its id, incarnation and
    /// seq are set here. The incarnation starts at `now`, so a restarted node always outranks
    /// its previous life.
    pub fn new(
        cfg: Config,
        key: Keypair,
        addrs: Vec<String>,
        mut record: NodeRecord,
        rng_seed: u64,
        now: Millis,
    ) -> Result<Self, GossipError> {
        if addrs.len() > ADDRS_MAX || addrs.iter().any(|a| a.len() > crate::member::ADDR_LEN_MAX) {
            return Err(GossipError::Addrs);
        }
        record.check_limits().map_err(GossipError::RecordLimit)?;
        let me = key.node_id();
        record.node_id = me;
        record.incarnation = now;
        record.seq = 0;
        let local_signed = Arc::new(Signed::sign(&key, RECORD_CONTEXT, &record));
        let len = local_signed.payload.len() + 96;
        if len > RECORD_BYTES_MAX {
            return Err(GossipError::RecordTooLarge(len));
        }
        let info = MemberInfo {
            node_id: me,
            addrs: addrs.clone(),
            incarnation: now,
            record_version: record.version(),
            record_hash: record_hash(&local_signed),
            leaving: false,
        };
        let local_member = Arc::new(Signed::sign(&key, MEMBER_CONTEXT, &info));
        let published_load = record.in_flight;
        let scores = Scores::new(cfg.scores_max, cfg.score_ignore_below);
        let queue = BroadcastQueue::new(cfg.broadcast_queue_max);
        let mut g = Gossip {
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            verifier: Arc::new(StrictVerifier),
            addrs,
            local: record,
            local_signed,
            local_member,
            leaving: false,
            members: Members::default(),
            pending: BTreeMap::new(),
            orphans: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            own_accusations: BTreeMap::new(),
            probe_soon: BTreeSet::new(),
            join_seeds: BTreeSet::new(),
            probe_cycle: ProbeCycle::default(),
            probe: None,
            next_probe_at: now,
            seq: 0,
            relays: BTreeMap::new(),
            poked: BTreeSet::new(),
            lhm: 0,
            queue,
            next_gossip_at: now,
            eager: BTreeSet::new(),
            lazy: BTreeSet::new(),
            lazy_pending: BTreeMap::new(),
            missing: BTreeMap::new(),
            stale: BTreeMap::new(),
            pulls: BTreeMap::new(),
            next_ae_at: now,
            next_push_pull_at: now,
            push_pull_cursor: 0,
            sync_peers: BTreeMap::new(),
            published_load,
            last_publish: now,
            scores,
            revoked: Revocations::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            key,
            me,
            cfg,
        };
        // Stagger the first probe so that nodes started together do not probe in lockstep.
        let jitter = g.rng.gen_range(0..g.cfg.protocol_period_ms.max(1));
        g.next_probe_at = now + jitter;
        g.next_gossip_at = now + g.rng.gen_range(0..g.cfg.gossip_interval_ms.max(1));
        g.next_ae_at = now + g.rng.gen_range(0..g.cfg.anti_entropy_interval_ms.max(1));
        g.next_push_pull_at = now + g.rng.gen_range(0..g.cfg.push_pull_interval_ms.max(1));
        Ok(g)
    }

    /// Replaces the signature verifier (the simulator shares a cache between nodes).
    pub fn with_verifier(mut self, v: Arc<dyn Verifier>) -> Self {
        self.verifier = v;
        self
    }

    /// Seeds the view with members and their records, as if learned from a push-pull sync.
    /// Everything is verified exactly as if it arrived from `from`. The simulator uses it to
    /// start large clusters converged; a node may use it to restore a saved view.
    pub fn bootstrap(
        &mut self,
        from: NodeId,
        entries: &[(Arc<SignedMember>, Arc<SignedRecord>)],
        now: Millis,
    ) {
        // Straight into the table (appends when `entries` are sorted by id): no events, no
        // re-gossip, nothing queued. A pair that fails any check is skipped; when the member is
        // already known, the ordinary path applies.
        self.members.reserve(entries.len());
        for (m, r) in entries {
            let id = m.signer;
            if id == self.me || r.signer != id || self.members.len() >= self.cfg.members_max {
                continue;
            }
            if !self.members.is_after_last(&id) && self.members.contains_key(&id) {
                self.accept_record(from, r.clone(), now);
                self.apply_alive(from, m.clone(), now);
                continue;
            }
            let Some(info) = self.verify_member(from, m) else {
                continue;
            };
            let Some(rec) = self.verify_record(from, r, now) else {
                continue;
            };
            if info.leaving {
                continue;
            }
            self.members
                .insert(Entry::new(m.clone(), info, Some((r.clone(), rec))));
            self.mark_stale(id, now);
        }
        self.queue = BroadcastQueue::new(self.cfg.broadcast_queue_max);
        self.stats = Stats::default();
        self.events.clear();
    }

    // ---- outputs ----

    /// The next output, encoded for the wire.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(ev) = self.events.pop_front() {
            return Some(Output::Event(ev));
        }
        let (to, msg) = self.out.pop_front()?;
        let bytes = wire::encode(&msg);
        Some(Output::Send {
            addrs: self.addrs_of(&to),
            to,
            bytes,
        })
    }

    /// The next message without encoding (the simulator), with its encoded length.
    pub fn poll_message(&mut self) -> Option<(NodeId, Message)> {
        self.out.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Input::Tick`] must next be handled.
    pub fn next_timeout(&self) -> Millis {
        let mut t = self
            .next_probe_at
            .min(self.next_gossip_at)
            .min(self.next_ae_at)
            .min(self.next_push_pull_at);
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect_sent {
                t = t.min(p.direct_deadline);
            }
            t = t.min(p.period_end);
        }
        if let Some(r) = self.relays.values().map(|r| r.nack_at).min() {
            t = t.min(r);
        }
        if let Some(m) = self.missing.values().map(|m| m.deadline).min() {
            t = t.min(m);
        }
        if let Some(s) = self.suspicions.values().map(|s| s.deadline()).min() {
            t = t.min(s);
        }
        t
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        if to == self.me || self.out.len() >= self.cfg.outputs_max {
            return;
        }
        self.stats.msgs_out += 1;
        self.stats.bytes_out += wire::encoded_len(&msg) as u64;
        self.out.push_back((to, msg));
    }

    fn emit(&mut self, ev: Event) {
        if self.events.len() < self.cfg.outputs_max {
            self.events.push_back(ev);
        }
    }

    // ---- inputs ----

    /// Feeds one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Millis) {
        match input {
            Input::Frame { from, bytes } => self.handle_frame(from, &bytes, now),
            Input::Message { from, msg } => {
                self.stats.msgs_in += 1;
                self.stats.bytes_in += wire::encoded_len(&msg) as u64;
                if self.scores.ignored(&from) {
                    self.stats.ignored += 1;
                    return;
                }
                self.handle_message(from, msg, now)
            }
            Input::Tick => self.handle_tick(now),
            Input::Join { seeds } => self.join(seeds, now),
            Input::Leave => self.leave(now),
            Input::Update(u) => self.update_local(u, now),
            Input::Revoke(r) => self.on_revocations(self.me, vec![r]),
        }
        if !self.lazy_pending.is_empty() {
            self.flush_lazy();
        }
    }

    fn handle_frame(&mut self, from: NodeId, bytes: &[u8], now: Millis) {
        self.stats.msgs_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if self.scores.ignored(&from) {
            self.stats.ignored += 1;
            return;
        }
        match wire::decode(bytes, self.cfg.frame_bytes_max) {
            Ok(msg) => self.handle_message(from, msg, now),
            Err(wire::WireError::Oversize { .. }) => self.penalize(from, Penalty::Oversize),
            Err(_) => self.penalize(from, Penalty::Decode),
        }
    }

    fn penalize(&mut self, peer: NodeId, p: Penalty) {
        self.stats.penalties += 1;
        self.scores.penalize(peer, p);
        self.emit(Event::Penalized {
            peer,
            reason: p.as_str().to_string(),
        });
    }

    fn is_member(&self, id: &NodeId) -> bool {
        self.members
            .get(id)
            .is_some_and(|e| matches!(e.state(), MemberState::Alive | MemberState::Suspect))
    }

    fn handle_message(&mut self, from: NodeId, msg: Message, now: Millis) {
        if from == self.me {
            return;
        }
        if self.revoked.contains(&from) {
            self.stats.ignored += 1;
            return;
        }
        // Messages any admitted-or-not peer may send; everything else needs membership.
        // A digest is how a member we do not know yet makes itself known (its own entry
        // comes first), so anyone may send one; the answer is bounded by the digest's size.
        let open_kinds = matches!(
            msg,
            Message::Join { .. }
                | Message::Record { .. }
                | Message::PullResp { .. }
                | Message::Revocations { .. }
                | Message::Digest { .. }
        ) || (matches!(&msg, Message::Pull { ids, .. } if ids.iter().all(|i| *i == self.me)))
            // A pull of our own record only: the answer is what we announce anyway, and a
            // newcomer that learnt our identity before we learnt its record asks exactly this.
            || (matches!(msg, Message::Sync { .. })
            && (self.join_seeds.contains(&from)
                || self.sync_peers.get(&from).is_some_and(|until| now < *until)));
        let known = self.is_member(&from) || self.members.contains_key(&from);
        if !open_kinds && !known {
            // A member that knows us before we know it (the join race) still gossips news we
            // need. Alive identities are self-signed and each is verified, so take those; the
            // rest (suspicions, death claims) needs a member behind it.
            if let Message::Ping { updates, .. }
            | Message::Ack { updates, .. }
            | Message::Gossip { updates } = &msg
            {
                let alive = updates.iter().filter(|u| matches!(u, Update::Alive(_)));
                self.apply_updates(from, alive.cloned().collect(), now);
            }
            if matches!(msg, Message::Ack { .. } | Message::Gossip { .. }) {
                return;
            }
            if let Message::Ping { seq, .. } = msg {
                // Answer without piggyback (it learns nothing) and ask for its record, so an
                // admitted newcomer becomes a member without waiting for gossip.
                self.send(
                    from,
                    Message::Ack {
                        seq,
                        updates: vec![],
                    },
                );
                if self.pending.contains_key(&from) {
                    if self.pulls.len() < RELAYS_MAX {
                        self.request_pull(from, vec![from], now);
                    }
                } else if !self.sync_peers.contains_key(&from) {
                    // A member probes us, so it knows us, but its announcement passed us by
                    // (we restarted, or were cut off while it joined): ask it for its
                    // identity and compare views, instead of staying blind to it for good.
                    self.send_digest(from, true, vec![from], now);
                }
                return;
            }
            if self.pending.contains_key(&from) {
                // We hold its verified identity and await its admitted record: the join race,
                // not misbehaviour. Drop the message (counted), do not penalize.
                self.stats.early_dropped += 1;
                return;
            }
            if let Message::PingReq { .. } = msg {
                // A member asks us to probe on its behalf, so it knows us: we missed its
                // announcement. Same as for a ping from a stranger: compare views.
                self.stats.early_dropped += 1;
                if !self.sync_peers.contains_key(&from) {
                    self.send_digest(from, true, vec![from], now);
                }
                return;
            }
            self.penalize(from, Penalty::NonMember);
            return;
        }
        self.poke_if_dead(from);
        match msg {
            Message::Ping { seq, updates } => {
                self.apply_updates(from, updates, now);
                let updates = self.piggyback(from);
                self.send(from, Message::Ack { seq, updates });
            }
            Message::Ack { seq, updates } => {
                self.apply_updates(from, updates, now);
                self.on_ack(from, seq);
            }
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_updates(from, updates, now);
                self.relay_probe(from, seq, target, now);
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    p.nacks += 1;
                }
            }
            Message::Gossip { updates } => self.apply_updates(from, updates, now),
            Message::Join { member, record } => self.on_join(from, member, record, now),
            Message::Sync { members } => {
                for m in members {
                    self.apply_alive(from, m, now);
                }
            }
            Message::Record { record } => self.on_record(from, record, true, now),
            Message::Revocations { list } => self.on_revocations(from, list),
            Message::IHave { entries } => self.on_ihave(from, entries, now),
            Message::Graft { entries } => self.on_graft(from, entries),
            Message::Prune => {
                if self.eager.remove(&from) && self.lazy.len() < self.cfg.tree_peers_max {
                    self.lazy.insert(from);
                }
            }
            Message::Pull { req, ids } => self.on_pull(from, req, ids),
            Message::Digest {
                entries,
                wants,
                reply,
            } => self.on_digest(from, entries, wants, reply, now),
            Message::PullResp { req, records } => {
                let expected = self.pulls.remove(&req).is_some();
                for r in records {
                    self.on_record(from, r, false, now);
                }
                if expected {
                    self.start_pulls(now);
                }
            }
        }
    }
}
