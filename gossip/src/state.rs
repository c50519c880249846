//! The gossip state machine: `handle(input, now)` in, `poll_output()` out. It owns its RNG and
//! never reads a clock, a socket or global randomness.

use crate::revocations::{Revocations, REVOCATION_FANOUT};
use agentmesh_crypto::{Keypair, NodeId, Signed, SignedCert, SignedRevocation};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::broadcast::BroadcastQueue;
use crate::config::{Admission, Config};
use crate::member::{Accusation, SignedAccusation, ACCUSATION_CONTEXT, ADDRS_MAX, MEMBER_CONTEXT};
use crate::member::{MemberInfo, MemberState, SignedMember, Update, MEMBER_BYTES_MAX};
use crate::record::{
    record_hash, AgentInfo, Capability, Health, NodeRecord, Priority, Proficiency, SignedRecord,
    Version, RECORD_BYTES_MAX, RECORD_CONTEXT,
};
use crate::score::{Penalty, Scores};
use crate::suspicion::Suspicion;
use crate::table::{Entry, Members, ProbeCycle};
use crate::verify::{StrictVerifier, Verifier};
use crate::wire::{self, Message, PULL_RECORDS_MAX};

/// Milliseconds on the caller's clock (the node uses the UNIX epoch; certificates are checked
/// against `now / 1000`).
pub type Millis = u64;

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

    // ---- getters ----

    /// This node's id.
    pub fn local_id(&self) -> NodeId {
        self.me
    }

    /// This node's current record.
    pub fn local_record(&self) -> &NodeRecord {
        &self.local
    }

    /// This node's current signed record.
    pub fn local_signed_record(&self) -> Arc<SignedRecord> {
        self.local_signed.clone()
    }

    /// This node's current signed membership identity.
    pub fn local_member(&self) -> Arc<SignedMember> {
        self.local_member.clone()
    }

    /// The signed record held for `id` (as received, for forwarding and audits).
    pub fn signed_record(&self, id: &NodeId) -> Option<Arc<SignedRecord>> {
        if *id == self.me {
            return Some(self.local_signed.clone());
        }
        self.members
            .get(id)
            .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.local_member_info().incarnation
    }

    fn local_member_info(&self) -> MemberInfo {
        self.local_member
            .decode_unverified()
            .expect("own member info decodes")
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The local health multiplier (Lifeguard LHM), 0 when healthy.
    pub fn local_health(&self) -> u32 {
        self.lhm
    }

    /// A peer's score (0 when unknown).
    pub fn score(&self, peer: &NodeId) -> i32 {
        self.scores.get(peer)
    }

    /// The number of alive or suspect members, self included.
    pub fn live_count(&self) -> usize {
        1 + self.members.live()
    }

    /// The state of a member as seen here (None if unknown; self is always alive).
    pub fn state_of(&self, id: &NodeId) -> Option<MemberState> {
        if *id == self.me {
            return Some(if self.leaving {
                MemberState::Left
            } else {
                MemberState::Alive
            });
        }
        self.members.get(id).map(|e| e.state())
    }

    /// The version of the record held for `id`.
    pub fn record_version(&self, id: &NodeId) -> Option<Version> {
        if *id == self.me {
            return Some(self.local.version());
        }
        self.members.get(id).and_then(|e| e.record_version())
    }

    /// The record held for `id`.
    pub fn record(&self, id: &NodeId) -> Option<Arc<NodeRecord>> {
        if *id == self.me {
            return Some(Arc::new(self.local.clone()));
        }
        self.members
            .get(id)
            .and_then(|e| e.record.as_ref().map(|(_, r)| r.clone()))
    }

    /// All members, self included.
    pub fn members(&self) -> Vec<MemberView> {
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(MemberView {
            node_id: self.me,
            addrs: self.addrs.clone(),
            state: self.state_of(&self.me).unwrap_or(MemberState::Alive),
            incarnation: self.incarnation(),
            record: Some(Arc::new(self.local.clone())),
        });
        out.extend(self.members.iter().map(|(id, e)| MemberView {
            node_id: *id,
            addrs: e.info.addrs.clone(),
            state: e.state(),
            incarnation: e.info.incarnation,
            record: e.record.as_ref().map(|(_, r)| r.clone()),
        }));
        out
    }

    /// Ids of members in a state, self excluded.
    pub fn ids_in_state(&self, state: MemberState) -> Box<dyn Iterator<Item = NodeId> + '_> {
        let members = &self.members;
        match state {
            // Dead and left members are indexed: no scan of the whole view.
            MemberState::Dead | MemberState::Left => Box::new(
                members
                    .down()
                    .keys()
                    .filter(move |id| members.get(id).is_some_and(|e| e.state() == state))
                    .copied(),
            ),
            _ => Box::new(
                members
                    .iter()
                    .filter(move |(_, e)| e.state() == state)
                    .map(|(id, _)| *id),
            ),
        }
    }

    /// Addresses of a member.
    pub fn addrs_of(&self, id: &NodeId) -> Vec<String> {
        self.members
            .get(id)
            .map(|e| e.info.addrs.clone())
            .unwrap_or_default()
    }

    /// Alive members (self included) whose record offers a capability matching `q`.
    pub fn find(&self, q: &CapabilityQuery) -> Vec<CapabilityMatch> {
        let local = (!self.leaving).then(|| (self.me, Arc::new(self.local.clone())));
        let others = self.members.iter().filter_map(|(id, e)| {
            if e.state() != MemberState::Alive {
                return None;
            }
            e.record.as_ref().map(|(_, r)| (*id, r.clone()))
        });
        local
            .into_iter()
            .chain(others)
            .filter_map(|(id, rec)| {
                let cap = rec
                    .agent
                    .as_ref()?
                    .capabilities
                    .iter()
                    .find(|c| c.name == q.capability && capability_matches(c, q))?
                    .clone();
                Some(CapabilityMatch {
                    node_id: id,
                    record: rec,
                    capability: cap,
                })
            })
            .collect()
    }

    /// True if any alive member (or self) offers the capability, ignoring constraints.
    pub fn offered(&self, capability: &str) -> bool {
        let q = CapabilityQuery {
            capability: capability.to_string(),
            ..Default::default()
        };
        !self.find(&q).is_empty()
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
        ) || (matches!(msg, Message::Sync { .. })
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

    // ---- membership plane ----

    fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as f64;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn piggyback(&mut self, to: NodeId) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.queue.select(
            to,
            self.cfg.piggyback_bytes_max,
            wire::UPDATES_PER_MESSAGE_MAX,
            limit,
        )
    }

    fn enqueue(&mut self, u: Update) {
        self.queue.push(u);
    }

    fn apply_updates(&mut self, from: NodeId, updates: Vec<Update>, now: Millis) {
        // Stale rumours (suspect/dead at an incarnation already refuted) are answered with the
        // refutation, so a late hearer does not keep a suspicion everyone else has dropped.
        let mut corrections = Vec::new();
        for u in &updates {
            if let Some((node, incarnation)) = u.rumour() {
                let (node, incarnation) = (&node, &incarnation);
                if let Some(e) = self.members.get(node) {
                    let refuted = *incarnation < e.info.incarnation
                        && matches!(e.state(), MemberState::Alive | MemberState::Suspect);
                    if refuted && *node != from && corrections.len() < wire::UPDATES_PER_MESSAGE_MAX
                    {
                        corrections.push(Update::Alive(e.signed.clone()));
                    }
                } else if *node == self.me && *incarnation < self.incarnation() {
                    corrections.push(Update::Alive(self.local_member.clone()));
                }
            }
        }
        if !corrections.is_empty() {
            self.send(
                from,
                Message::Gossip {
                    updates: corrections,
                },
            );
        }
        let refutations = self.stats.refutations;
        self.apply_each(from, updates, now);
        if self.stats.refutations > refutations {
            // Answer the accuser directly: it holds the wrong belief, possibly across a
            // just-healed partition that our own gossip does not reach yet.
            let updates = vec![Update::Alive(self.local_member.clone())];
            self.send(from, Message::Gossip { updates });
        }
    }

    fn apply_each(&mut self, from: NodeId, updates: Vec<Update>, now: Millis) {
        for u in updates {
            match u {
                Update::Alive(m) => self.apply_alive(from, m, now),
                // Unsigned rumours name an accuser anyone can forge: they only make us refute
                // (about us); about others they count for nothing.
                Update::Suspect {
                    node, incarnation, ..
                }
                | Update::Dead {
                    node, incarnation, ..
                } => {
                    if node == self.me {
                        self.refute_rumour(incarnation, now);
                    }
                }
                Update::Accuse(a) => self.on_accusation(from, a, now),
            }
        }
    }

    /// Refutes a suspect or dead rumour about us at our current incarnation (older ones are
    /// already answered by the incarnation we announced).
    fn refute_rumour(&mut self, inc: u64, now: Millis) {
        if !self.leaving && inc >= self.incarnation() {
            self.refute(inc, now);
        }
    }

    /// Our own accusation of `node`, signed once and reused.
    fn accusation(&mut self, node: NodeId, incarnation: u64, dead: bool) -> Arc<SignedAccusation> {
        if let Some(a) = self.own_accusations.get(&(node, incarnation, dead)) {
            return a.clone();
        }
        if self.own_accusations.len() >= OWN_ACCUSATIONS_MAX {
            self.own_accusations.clear();
        }
        let body = Accusation {
            node,
            incarnation,
            dead,
        };
        let a = Arc::new(Signed::sign(&self.key, ACCUSATION_CONTEXT, &body));
        self.own_accusations
            .insert((node, incarnation, dead), a.clone());
        a
    }

    /// A signed accusation: counts only if it verifies and its signer is a member.
    fn on_accusation(&mut self, from: NodeId, a: Arc<SignedAccusation>, now: Millis) {
        let accuser = a.signer;
        if accuser == self.me {
            return;
        }
        let body = match self.verifier.accusation(&a) {
            Ok(b) => b,
            Err(_) => return self.penalize(from, Penalty::BadSignature),
        };
        if body.node == self.me {
            return self.refute_rumour(body.incarnation, now);
        }
        if body.node == accuser || !self.is_member(&accuser) {
            return;
        }
        if body.dead {
            self.apply_dead(body.node, body.incarnation, accuser, Some(a), now);
        } else {
            self.apply_suspect(body.node, body.incarnation, accuser, Some(a), now);
        }
    }

    fn apply_alive(&mut self, from: NodeId, m: Arc<SignedMember>, now: Millis) {
        let subject = m.signer;
        if subject == self.me {
            // Someone replays our announcement; only a leave we did not make needs an answer.
            if let Ok(info) = m.decode_unverified() {
                if info.leaving && !self.leaving && info.incarnation >= self.incarnation() {
                    self.refute(info.incarnation, now);
                }
            }
            return;
        }
        if self.revoked.contains(&subject) {
            return;
        }
        // Cheap dedup before any signature check.
        if let Some(e) = self.members.get(&subject) {
            if e.signed.signature == m.signature {
                return;
            }
        }
        if self
            .pending
            .get(&subject)
            .is_some_and(|p| p.signature == m.signature)
        {
            return;
        }
        let Some(info) = self.verify_member(from, &m) else {
            return;
        };
        let Some(e) = self.members.get_mut(&subject) else {
            return self.admit_new_member(from, m, info, now);
        };
        let newer = info.key() > e.info.key();
        let revive = info.incarnation > e.info.incarnation;
        match e.state() {
            MemberState::Dead | MemberState::Left if !revive => return,
            _ if !newer && (!info.leaving || e.info.leaving) => return,
            _ => {}
        }
        let old_state = e.state();
        e.signed = m.clone();
        e.info = info.clone();
        if info.leaving {
            if old_state != MemberState::Left {
                self.members.set_state(&subject, MemberState::Left, now);
                self.suspicions.remove(&subject);
                self.tree_remove(&subject);
                self.emit(Event::Left(subject));
            }
        } else if revive && old_state != MemberState::Alive {
            self.members.set_state(&subject, MemberState::Alive, now);
            self.suspicions.remove(&subject);
            match old_state {
                MemberState::Suspect => self.emit(Event::Alive(subject)),
                _ => self.emit(Event::Joined(subject)),
            }
        }
        self.mark_stale(subject, now);
        self.enqueue(Update::Alive(m));
    }

    /// Checks a signed identity (size, signature, subject, limits); penalises `from` if bad.
    fn verify_member(&mut self, from: NodeId, m: &Arc<SignedMember>) -> Option<Arc<MemberInfo>> {
        if m.payload.len() + 96 > MEMBER_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        let info = match self.verifier.member(m) {
            Ok(i) => i,
            Err(_) => {
                self.penalize(from, Penalty::BadSignature);
                return None;
            }
        };
        if info.node_id != m.signer {
            self.penalize(from, Penalty::ForeignRecord);
            return None;
        }
        if info.check_limits().is_err() {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        Some(info)
    }

    fn admit_new_member(
        &mut self,
        from: NodeId,
        m: Arc<SignedMember>,
        info: Arc<MemberInfo>,
        now: Millis,
    ) {
        let subject = info.node_id;
        if info.leaving {
            return;
        }
        let record = self.orphans.remove(&subject);
        let admitted = match &self.cfg.admission {
            Admission::Open => true,
            Admission::Enforced { .. } => record.is_some(),
        };
        if !admitted {
            // Invisible until its admitted record arrives; ask the peer that told us.
            if self.pending.len() >= PENDING_MAX {
                if let Some(k) = self.pending.keys().next().copied() {
                    self.pending.remove(&k);
                }
            }
            let fresh = self.pending.insert(subject, m).is_none();
            if fresh {
                // A join seed answers pulls before we have admitted it (its Sync arrives first).
                let knows_us = self.is_member(&from) || self.join_seeds.contains(&from);
                let target = if knows_us { from } else { subject };
                self.request_pull(target, vec![subject], now);
            }
            return;
        }
        if self.members.len() >= self.cfg.members_max {
            return;
        }
        self.pending.remove(&subject);
        let has_record = record.is_some();
        self.members.insert(Entry::new(m.clone(), info, record));
        self.mark_stale(subject, now);
        self.emit(Event::Joined(subject));
        if has_record {
            self.emit(Event::Updated(subject));
        }
        self.enqueue(Update::Alive(m));
    }

    /// A suspicion of `node` at `inc` by `accuser`, with its signed accusation (None when we
    /// are the accuser: it is signed here).
    fn apply_suspect(
        &mut self,
        node: NodeId,
        inc: u64,
        accuser: NodeId,
        signed: Option<Arc<SignedAccusation>>,
        now: Millis,
    ) {
        if node == self.me {
            return self.refute_rumour(inc, now);
        }
        let n = self.live_count();
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if inc < e.info.incarnation {
            return;
        }
        let state = e.state();
        if matches!(state, MemberState::Dead | MemberState::Left) {
            return;
        }
        let new = match state {
            MemberState::Alive => {
                self.members.set_state(&node, MemberState::Suspect, now);
                let s = Suspicion::new(&self.cfg, n, accuser, now);
                self.suspicions.insert(node, s);
                self.emit(Event::Suspect(node));
                true
            }
            _ => self
                .suspicions
                .get_mut(&node)
                .is_some_and(|s| s.confirm(accuser)),
        };
        if new {
            // A new independent accusation: relay it, signed, so others count it too.
            let a = match signed {
                Some(a) => a,
                None => self.accusation(node, inc, false),
            };
            if let Some(s) = self.suspicions.get_mut(&node) {
                s.set_evidence(a.clone());
            }
            self.enqueue(Update::Accuse(a));
        }
    }

    /// A death declaration. Our own (`accuser` is us) makes the member dead; anyone else's is
    /// one more signed confirmation of the suspicion, and ends it at the Lifeguard minimum only
    /// if our own probe had failed too. So a member can be killed only by its accusers' timers
    /// or by several distinct signed accusations, never by one liar.
    fn apply_dead(
        &mut self,
        node: NodeId,
        inc: u64,
        accuser: NodeId,
        signed: Option<Arc<SignedAccusation>>,
        now: Millis,
    ) {
        if node == self.me {
            return self.refute_rumour(inc, now);
        }
        if accuser != self.me {
            let own = self
                .suspicions
                .get(&node)
                .is_some_and(|s| s.accused_by(&self.me));
            self.apply_suspect(node, inc, accuser, signed, now);
            if own {
                if let Some(s) = self.suspicions.get_mut(&node) {
                    s.saturate();
                }
            }
            return;
        }
        let Some(e) = self.members.get(&node) else {
            return;
        };
        if inc < e.info.incarnation || matches!(e.state(), MemberState::Dead | MemberState::Left) {
            return;
        }
        self.members.set_state(&node, MemberState::Dead, now);
        self.suspicions.remove(&node);
        self.tree_remove(&node);
        self.stale.remove(&node);
        self.emit(Event::Dead(node));
        let a = self.accusation(node, inc, true);
        self.enqueue(Update::Accuse(a));
    }

    /// Bumps our incarnation above `seen` and announces we are alive (Lifeguard: +1 LHM).
    fn refute(&mut self, seen: u64, _now: Millis) {
        let inc = self.incarnation().max(seen) + 1;
        self.stats.refutations += 1;
        self.lhm = (self.lhm + 1).min(self.cfg.lhm_max);
        self.resign_member(inc);
        self.enqueue(Update::Alive(self.local_member.clone()));
    }

    fn resign_member(&mut self, incarnation: u64) {
        let info = MemberInfo {
            node_id: self.me,
            addrs: self.addrs.clone(),
            incarnation,
            record_version: self.local.version(),
            record_hash: record_hash(&self.local_signed),
            leaving: self.leaving,
        };
        self.local_member = Arc::new(Signed::sign(&self.key, MEMBER_CONTEXT, &info));
    }

    fn tree_remove(&mut self, id: &NodeId) {
        self.eager.remove(id);
        self.lazy.remove(id);
        self.lazy_pending.remove(id);
    }

    // ---- SWIM probing ----

    fn scaled(&self, ms: u64) -> u64 {
        ms * (self.lhm as u64 + 1)
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        while let Some(id) = self.probe_soon.pop_first() {
            if self.is_member(&id) {
                return Some(id);
            }
        }
        for _ in 0..=self.members.len() {
            let i = self.probe_cycle.next(self.members.len(), &mut self.rng)?;
            if let Some(e) = self.members.nth(i).filter(|e| e.is_live()) {
                return Some(*e.id());
            }
        }
        None
    }

    fn start_probe(&mut self, now: Millis) {
        let period = self.scaled(self.cfg.protocol_period_ms);
        self.next_probe_at = now + period;
        let Some(target) = self.next_probe_target() else {
            return;
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut updates = self.piggyback(target);
        // memberlist: a ping to a suspect carries the suspicion, so a suspect whose first
        // notice was lost still learns it must refute before its timer runs out.
        if let Some(a) = self.suspicions.get(&target).and_then(|s| s.evidence()) {
            updates.truncate(wire::UPDATES_PER_MESSAGE_MAX - 1);
            updates.insert(0, Update::Accuse(a.clone()));
        }
        self.send(target, Message::Ping { seq, updates });
        self.probe = Some(Probe {
            target,
            seq,
            direct_deadline: now + self.scaled(self.cfg.probe_timeout_ms),
            period_end: now + period,
            indirect_sent: false,
            acked: false,
            nacks_expected: 0,
            nacks: 0,
        });
    }

    fn send_indirect(&mut self, now: Millis) {
        let Some(p) = self.probe.as_mut() else { return };
        p.indirect_sent = true;
        let (target, seq) = (p.target, p.seq);
        let chosen = self.random_alive(self.cfg.indirect_probes, &BTreeSet::from([target]));
        if let Some(p) = self.probe.as_mut() {
            p.nacks_expected = chosen.len() as u32;
        }
        for h in chosen {
            let updates = self.piggyback(h);
            self.send(
                h,
                Message::PingReq {
                    seq,
                    target,
                    updates,
                },
            );
        }
        let _ = now;
    }

    fn finish_probe(&mut self, now: Millis) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            self.lhm = self.lhm.saturating_sub(1);
            return;
        }
        // Lifeguard: missing nacks mean our own links or CPU may be at fault.
        let missed = p.nacks_expected.saturating_sub(p.nacks);
        let delta = if p.nacks_expected == 0 { 1 } else { missed };
        self.lhm = (self.lhm + delta).min(self.cfg.lhm_max);
        let Some(e) = self.members.get(&p.target) else {
            return;
        };
        if !matches!(e.state(), MemberState::Alive | MemberState::Suspect) {
            return;
        }
        // A failed probe of an already-suspect member is an independent confirmation.
        let inc = e.info.incarnation;
        self.stats.suspicions += 1;
        self.apply_suspect(p.target, inc, self.me, None, now);
        // Lifeguard: tell the suspect first, so it can refute quickly.
        let mut updates = vec![Update::Accuse(self.accusation(p.target, inc, false))];
        updates.extend(self.piggyback(p.target));
        self.send(p.target, Message::Gossip { updates });
    }

    fn on_ack(&mut self, from: NodeId, seq: u32) {
        if let Some(p) = self.probe.as_mut() {
            if p.seq == seq && !p.acked {
                p.acked = true;
                let _ = from;
                return;
            }
        }
        if let Some(r) = self.relays.remove(&seq) {
            let updates = self.piggyback(r.origin);
            self.send(
                r.origin,
                Message::Ack {
                    seq: r.origin_seq,
                    updates,
                },
            );
        }
    }

    fn relay_probe(&mut self, origin: NodeId, origin_seq: u32, target: NodeId, now: Millis) {
        if !self.is_member(&target) {
            self.send(origin, Message::Nack { seq: origin_seq });
            return;
        }
        if self.relays.len() >= RELAYS_MAX {
            if let Some(k) = self.relays.keys().next().copied() {
                self.relays.remove(&k);
            }
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.relays.insert(
            seq,
            Relay {
                origin,
                origin_seq,
                // Early enough that the nack reaches the origin before its period ends
                // (it sent the request at probe_timeout into a 2×probe_timeout period).
                nack_at: now + self.cfg.probe_timeout_ms / 2,
            },
        );
        let updates = self.piggyback(target);
        self.send(target, Message::Ping { seq, updates });
    }

    // ---- timers ----

    fn handle_tick(&mut self, now: Millis) {
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect_sent && now >= p.direct_deadline {
                self.send_indirect(now);
            }
        }
        if self.probe.as_ref().is_some_and(|p| now >= p.period_end) {
            self.finish_probe(now);
        }
        if now >= self.next_probe_at {
            if self.leaving {
                // A leaving node stops probing but its timer must still move on.
                self.next_probe_at = now + self.cfg.protocol_period_ms;
            } else {
                self.finish_probe(now);
                self.start_probe(now);
                self.housekeeping(now);
            }
        }
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| now >= r.nack_at)
            .map(|(s, _)| *s)
            .collect();
        for s in due {
            if let Some(r) = self.relays.remove(&s) {
                self.send(r.origin, Message::Nack { seq: r.origin_seq });
            }
        }
        let expired: Vec<NodeId> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline())
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            // One accuser, and not us: it may be a liar. Probe the suspect ourselves first (the
            // ping carries the accusation, so a live suspect refutes in its ack); if our probe
            // fails we are a second accuser and the verdict follows.
            let lone = self
                .suspicions
                .get(&id)
                .is_some_and(|s| s.accusers() < 2 && !s.accused_by(&self.me));
            if lone {
                if self.probe_soon.len() < RELAYS_MAX {
                    self.probe_soon.insert(id);
                }
                let wait = self.scaled(self.cfg.protocol_period_ms) + self.cfg.protocol_period_ms;
                if let Some(s) = self.suspicions.get_mut(&id) {
                    s.defer(now + wait);
                }
                continue;
            }
            if let Some(e) = self.members.get(&id) {
                let inc = e.info.incarnation;
                self.apply_dead(id, inc, self.me, None, now);
            }
            self.suspicions.remove(&id);
        }
        if now >= self.next_gossip_at {
            self.next_gossip_at = now + self.cfg.gossip_interval_ms;
            self.gossip_round(now);
            // Pull what Plumtree missed without waiting for the next anti-entropy round.
            if !self.stale.is_empty() {
                self.pulls.retain(|_, p| p.deadline > now);
                self.start_pulls(now);
            }
        }
        self.graft_missing(now);
        if now >= self.next_push_pull_at {
            self.next_push_pull_at = now + self.cfg.push_pull_interval_ms;
            self.sync_peers.retain(|_, until| *until > now);
            if let Some(peer) = self.random_alive(1, &BTreeSet::new()).first().copied() {
                self.send_digest(peer, true, Vec::new(), now);
            }
        }
        if now >= self.next_ae_at {
            self.next_ae_at = now + self.cfg.anti_entropy_interval_ms;
            self.pulls.retain(|_, p| p.deadline > now);
            self.start_pulls(now);
            self.maybe_refresh_load(now);
        }
    }

    fn housekeeping(&mut self, now: Millis) {
        let ttl = self.cfg.tombstone_ms;
        let gone: Vec<NodeId> = self
            .members
            .down()
            .iter()
            .filter(|(_, since)| now >= **since + ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.members.remove(&id);
        }
        self.scores.recover(self.cfg.score_recovery_per_period);
        // Gossip to one dead member so a healed partition notices it was wrongly declared dead.
        let dead: Vec<NodeId> = self.ids_in_state(MemberState::Dead).collect();
        let chosen = dead.choose(&mut self.rng).copied();
        if let Some((d, inc)) =
            chosen.and_then(|d| self.members.get(&d).map(|e| (d, e.info.incarnation)))
        {
            let mut updates = vec![Update::Accuse(self.accusation(d, inc, true))];
            updates.push(Update::Alive(self.local_member.clone()));
            updates.extend(self.piggyback(d));
            self.send(d, Message::Gossip { updates });
        }
        self.poked.clear();
    }

    /// A member we hold as dead or suspect just spoke to us: tell it, once per period, so it
    /// refutes with a higher incarnation. Heals partitions, and clears suspicions raised while
    /// we were cut off whose rumours ran out of retransmissions before reaching the suspect.
    fn poke_if_dead(&mut self, from: NodeId) {
        let Some(e) = self.members.get(&from) else {
            return;
        };
        let incarnation = e.info.incarnation;
        let state = e.state();
        if !matches!(state, MemberState::Dead | MemberState::Suspect)
            || self.poked.len() >= RELAYS_MAX
            || !self.poked.insert(from)
        {
            return;
        }
        let update = match state {
            MemberState::Dead => Update::Accuse(self.accusation(from, incarnation, true)),
            _ => match self.suspicions.get(&from).and_then(|s| s.evidence()) {
                Some(a) => Update::Accuse(a.clone()),
                None => return,
            },
        };
        {
            let mut updates = vec![update];
            updates.extend(self.piggyback(from));
            self.send(from, Message::Gossip { updates });
        }
    }

    /// Up to `n` distinct alive members not in `exclude`, uniformly at random. Samples table
    /// positions (O(n) for a large view, where most members are alive) and falls back to a
    /// scan when the view is small or mostly down.
    fn random_alive(&mut self, n: usize, exclude: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let len = self.members.len();
        if n == 0 || len == 0 {
            return Vec::new();
        }
        if len >= 64 && self.members.live() * 2 >= len {
            let mut out: Vec<NodeId> = Vec::with_capacity(n);
            for _ in 0..(8 * n + 32) {
                let i = self.rng.gen_range(0..len);
                let Some(e) = self.members.nth(i) else {
                    continue;
                };
                let id = *e.id();
                if e.state() == MemberState::Alive && !exclude.contains(&id) && !out.contains(&id) {
                    out.push(id);
                    if out.len() == n {
                        return out;
                    }
                }
            }
        }
        let mut ids: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(id, e)| e.state() == MemberState::Alive && !exclude.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let k = n.min(ids.len());
        let (chosen, _) = ids.partial_shuffle(&mut self.rng, k);
        chosen.to_vec()
    }

    fn gossip_round(&mut self, _now: Millis) {
        let hot = self.revoked.take_hot();
        if !hot.is_empty() {
            for t in self.random_alive(self.cfg.gossip_fanout, &BTreeSet::new()) {
                self.send(t, Message::Revocations { list: hot.clone() });
            }
        }
        if self.queue.is_empty() {
            return;
        }
        let targets = self.random_alive(self.cfg.gossip_fanout, &BTreeSet::new());
        for t in targets {
            let updates = self.piggyback(t);
            if updates.is_empty() {
                break;
            }
            self.send(t, Message::Gossip { updates });
        }
    }

    // ---- join and leave ----

    fn join(&mut self, seeds: Vec<NodeId>, _now: Millis) {
        let me = self.me;
        for s in seeds.into_iter().filter(|s| *s != me).take(JOIN_SEEDS_MAX) {
            if self.join_seeds.len() < JOIN_SEEDS_MAX {
                self.join_seeds.insert(s);
            }
            self.send(
                s,
                Message::Join {
                    member: self.local_member.clone(),
                    record: self.local_signed.clone(),
                },
            );
        }
    }

    fn on_join(
        &mut self,
        from: NodeId,
        member: Arc<SignedMember>,
        record: Arc<SignedRecord>,
        now: Millis,
    ) {
        if member.signer != from || record.signer != from {
            return self.penalize(from, Penalty::ForeignRecord);
        }
        if !self.accept_record(from, record.clone(), now) && !self.has_admitted_record(&from) {
            return; // accept_record penalised it
        }
        self.apply_alive(from, member, now);
        if !self.is_member(&from) {
            return;
        }
        // Push-pull: send our view in chunks bounded by count and bytes.
        let all: Vec<Arc<SignedMember>> = std::iter::once(self.local_member.clone())
            .chain(
                self.members
                    .values()
                    .filter(|e| matches!(e.state(), MemberState::Alive | MemberState::Suspect))
                    .map(|e| e.signed.clone()),
            )
            .collect();
        self.send_sync(from, all);
        for list in self.revoked.chunks() {
            self.send(from, Message::Revocations { list });
        }
    }

    /// Sends identities in `Sync` chunks bounded by count and bytes.
    fn send_sync(&mut self, to: NodeId, members: Vec<Arc<SignedMember>>) {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        let budget = self.cfg.frame_bytes_max / 2;
        let per_frame = self.cfg.sync_members_per_frame.min(wire::SYNC_MEMBERS_MAX);
        for m in members {
            bytes += m.payload.len() + 100;
            chunk.push(m);
            if chunk.len() >= per_frame || bytes >= budget {
                let members = std::mem::take(&mut chunk);
                self.send(to, Message::Sync { members });
                bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.send(to, Message::Sync { members: chunk });
        }
    }

    // ---- membership anti-entropy (push-pull by digest) ----

    /// Sends `to` our digest: ourselves, then a window of live members that rotates through
    /// the table, so repeated exchanges cover any size of view with bounded messages.
    fn send_digest(&mut self, to: NodeId, reply: bool, wants: Vec<NodeId>, now: Millis) {
        let max = self
            .cfg
            .push_pull_digest_max
            .clamp(1, wire::DIGEST_ENTRIES_MAX);
        let mut entries = vec![(self.me, self.incarnation())];
        let len = self.members.len();
        let start = if len == 0 {
            0
        } else {
            self.push_pull_cursor % len
        };
        let mut scanned = 0;
        while scanned < len && entries.len() < max {
            if let Some(e) = self.members.nth((start + scanned) % len) {
                if matches!(e.state(), MemberState::Alive | MemberState::Suspect) && *e.id() != to {
                    entries.push((*e.id(), e.info.incarnation));
                }
            }
            scanned += 1;
        }
        self.push_pull_cursor = start + scanned;
        let wants: Vec<NodeId> = wants.into_iter().take(wire::DIGEST_ENTRIES_MAX).collect();
        if reply || !wants.is_empty() {
            // Its answer comes as `Sync`; take it even if `to` is not a member here yet.
            if self.sync_peers.len() >= SYNC_PEERS_MAX && !self.sync_peers.contains_key(&to) {
                if let Some(k) = self.sync_peers.keys().next().copied() {
                    self.sync_peers.remove(&k);
                }
            }
            let until = now + 4 * self.cfg.probe_timeout_ms;
            self.sync_peers.insert(to, until);
        }
        self.send(
            to,
            Message::Digest {
                entries,
                wants,
                reply,
            },
        );
    }

    /// Our signed identity of `id` (or our own), if we hold it alive or suspect.
    fn live_identity(&self, id: &NodeId) -> Option<Arc<SignedMember>> {
        if *id == self.me {
            return Some(self.local_member.clone());
        }
        self.members
            .get(id)
            .filter(|e| matches!(e.state(), MemberState::Alive | MemberState::Suspect))
            .map(|e| e.signed.clone())
    }

    /// A peer's digest: send it what it lacks or holds older, ask for what we lack.
    fn on_digest(
        &mut self,
        from: NodeId,
        entries: Vec<(NodeId, u64)>,
        wants: Vec<NodeId>,
        reply: bool,
        now: Millis,
    ) {
        let member = self.is_member(&from);
        let mut newer: BTreeMap<NodeId, Arc<SignedMember>> = BTreeMap::new();
        // A stranger gets only our own identity (it needs it to admit us); a member gets
        // every identity it asked for or holds older: at most two digests' worth.
        for id in wants.iter().filter(|id| member || **id == self.me) {
            if let Some(m) = self.live_identity(id) {
                newer.insert(*id, m);
            }
        }
        let mut wanted = Vec::new();
        for (id, inc) in &entries {
            if self.revoked.contains(id) {
                continue;
            }
            let held = if *id == self.me {
                Some(self.incarnation())
            } else {
                self.members.get(id).map(|e| e.info.incarnation)
            };
            match held {
                Some(h) if h > *inc && member => {
                    if let Some(m) = self.live_identity(id) {
                        newer.insert(*id, m);
                    }
                }
                Some(h) if h >= *inc => {}
                // Unknown here (a pending identity still waits for its record), or older.
                _ if self.pending.contains_key(id) => {}
                _ => wanted.push(*id),
            }
        }
        if !newer.is_empty() {
            self.send_sync(from, newer.into_values().collect());
        }
        if reply {
            self.send_digest(from, false, wanted, now);
        } else if !wanted.is_empty() {
            // The last leg: only wants, which never produce wants in return.
            if self.sync_peers.len() < SYNC_PEERS_MAX || self.sync_peers.contains_key(&from) {
                self.sync_peers
                    .insert(from, now + 4 * self.cfg.probe_timeout_ms);
            }
            self.send(
                from,
                Message::Digest {
                    entries: Vec::new(),
                    wants: wanted,
                    reply: false,
                },
            );
        }
    }

    // ---- revocations ----

    /// True if the mesh root revoked `id` (as far as this node has heard).
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        self.revoked.contains(id)
    }

    /// The nodes revoked so far.
    pub fn revoked_ids(&self) -> Vec<NodeId> {
        self.revoked.ids().copied().collect()
    }

    /// The verified revocations held so far (for the driver to persist).
    pub fn revocations(&self) -> Vec<Arc<SignedRevocation>> {
        self.revoked.all().cloned().collect()
    }

    /// Verifies revocations (root signature and mesh; nothing else is trusted), applies the
    /// new ones and pushes them on. A forged one costs the sender score; a known one is a
    /// no-op, so replays change nothing. Open meshes have no root and ignore revocations.
    fn on_revocations(&mut self, from: NodeId, list: Vec<Arc<SignedRevocation>>) {
        let Admission::Enforced { root, mesh_id } = &self.cfg.admission else {
            return;
        };
        let (root, mesh_id) = (*root, mesh_id.clone());
        let mut fresh = Vec::new();
        for r in list {
            let Ok(claimed) = r.0.decode_unverified() else {
                self.penalize(from, Penalty::Decode);
                continue;
            };
            if self.revoked.contains(&claimed.node_id) {
                continue;
            }
            let Ok(rev) = r.verify(&root, &mesh_id) else {
                self.penalize(from, Penalty::BadSignature);
                continue;
            };
            let transmits = self.retransmit_limit();
            if self.revoked.insert(rev.node_id, r.clone(), transmits) {
                self.drop_revoked(rev.node_id);
                fresh.push(r);
            }
        }
        if fresh.is_empty() {
            return;
        }
        let exclude: BTreeSet<NodeId> = [from].into_iter().collect();
        for t in self.random_alive(REVOCATION_FANOUT, &exclude) {
            self.send(
                t,
                Message::Revocations {
                    list: fresh.clone(),
                },
            );
        }
    }

    fn drop_revoked(&mut self, id: NodeId) {
        if id == self.me {
            return;
        }
        self.members.remove(&id);
        self.pending.remove(&id);
        self.orphans.remove(&id);
        self.suspicions.remove(&id);
        self.stale.remove(&id);
        self.join_seeds.remove(&id);
        self.tree_remove(&id);
        self.missing.retain(|(o, _), _| *o != id);
        self.emit(Event::Revoked(id));
    }

    fn has_admitted_record(&self, id: &NodeId) -> bool {
        self.members.get(id).is_some_and(|e| e.record.is_some()) || self.orphans.contains_key(id)
    }

    fn leave(&mut self, _now: Millis) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        let inc = self.incarnation() + 1;
        self.resign_member(inc);
        let m = self.local_member.clone();
        self.enqueue(Update::Alive(m.clone()));
        let targets = self.random_alive(self.cfg.gossip_fanout * 2, &BTreeSet::new());
        for t in targets {
            self.send(
                t,
                Message::Gossip {
                    updates: vec![Update::Alive(m.clone())],
                },
            );
        }
    }

    // ---- local record ----

    fn update_local(&mut self, u: RecordUpdate, now: Millis) {
        match u {
            RecordUpdate::Load { in_flight } => {
                self.local.in_flight = in_flight;
                let cap = self.local.max_concurrency.max(1) as f64;
                let delta = (in_flight as f64 - self.published_load as f64).abs() / cap;
                let to_idle = in_flight == 0 && self.published_load != 0;
                if delta >= self.cfg.load_hysteresis || to_idle {
                    self.publish(now);
                }
                return;
            }
            RecordUpdate::Agent(a) => self.local.agent = a,
            RecordUpdate::Health(h) => self.local.health = h,
            RecordUpdate::Priority(p) => self.local.priority = p,
            RecordUpdate::Cert(c) => self.local.cert = c,
            RecordUpdate::MaxConcurrency(m) => self.local.max_concurrency = m,
            RecordUpdate::Ext { key, value } => match value {
                Some(v) => {
                    if self.local.ext.len() < crate::record::EXTENSIONS_MAX
                        || self.local.ext.contains_key(&key)
                    {
                        self.local.ext.insert(key, v);
                    }
                }
                None => {
                    self.local.ext.remove(&key);
                }
            },
        }
        self.publish(now);
    }

    fn maybe_refresh_load(&mut self, now: Millis) {
        if self.local.in_flight != self.published_load
            && now >= self.last_publish + self.cfg.load_refresh_ms
        {
            self.publish(now);
        }
    }

    /// Signs a new record version and spreads it: membership announces the version, Plumtree
    /// pushes the record.
    fn publish(&mut self, now: Millis) {
        self.local.seq += 1;
        self.local.incarnation = self.incarnation();
        if self.local.check_limits().is_err() {
            self.local.seq -= 1;
            return;
        }
        let signed = Arc::new(Signed::sign(&self.key, RECORD_CONTEXT, &self.local));
        if signed.payload.len() + 96 > RECORD_BYTES_MAX {
            self.local.seq -= 1;
            return;
        }
        self.local_signed = signed.clone();
        self.published_load = self.local.in_flight;
        self.last_publish = now;
        let inc = self.incarnation();
        self.resign_member(inc);
        self.enqueue(Update::Alive(self.local_member.clone()));
        self.broadcast_record(signed, None);
    }

    // ---- record plane: Plumtree push ----

    /// Tops up the tree neighbours (eager plus lazy) when members were lost. Pruned links stay
    /// lazy: refilling the eager set after prunes would undo the tree.
    fn ensure_eager(&mut self) {
        let want = self.cfg.eager_peers;
        let have = self.eager.len() + self.lazy.len();
        let floor = self.cfg.eager_peers_min.max(1);
        if have >= want && self.eager.len() >= floor {
            return;
        }
        let exclude: BTreeSet<NodeId> = self.eager.union(&self.lazy).copied().collect();
        let n = want
            .saturating_sub(have)
            .max(floor.saturating_sub(self.eager.len()));
        for id in self.random_alive(n, &exclude) {
            self.eager.insert(id);
        }
    }

    fn broadcast_record(&mut self, rec: Arc<SignedRecord>, from: Option<NodeId>) {
        self.ensure_eager();
        let origin = rec.signer;
        let version = match self.record_version(&origin) {
            Some(v) => v,
            None => return,
        };
        let eager: Vec<NodeId> = self
            .eager
            .iter()
            .filter(|p| Some(**p) != from && **p != origin)
            .copied()
            .collect();
        for p in &eager {
            self.send(
                *p,
                Message::Record {
                    record: rec.clone(),
                },
            );
        }
        let mut lazy: Vec<NodeId> = self
            .lazy
            .iter()
            .filter(|p| Some(**p) != from && **p != origin)
            .copied()
            .collect();
        lazy.shuffle(&mut self.rng);
        lazy.truncate(self.cfg.lazy_peers);
        if lazy.len() < self.cfg.lazy_peers {
            let mut exclude: BTreeSet<NodeId> = self.eager.iter().copied().collect();
            exclude.extend(lazy.iter().copied());
            exclude.insert(origin);
            if let Some(f) = from {
                exclude.insert(f);
            }
            let more = self.random_alive(self.cfg.lazy_peers - lazy.len(), &exclude);
            lazy.extend(more);
        }
        for p in lazy {
            let q = self.lazy_pending.entry(p).or_default();
            if q.len() < wire::IHAVE_ENTRIES_MAX {
                q.push((origin, version));
            }
        }
    }

    fn flush_lazy(&mut self) {
        let pending = std::mem::take(&mut self.lazy_pending);
        for (p, entries) in pending {
            if self.is_member(&p) {
                self.send(p, Message::IHave { entries });
            }
        }
    }

    /// Verifies and stores a record. Returns true if it was new.
    fn accept_record(&mut self, from: NodeId, rec: Arc<SignedRecord>, now: Millis) -> bool {
        self.stats.record_copies_in += 1;
        if rec.payload.len() + 96 > RECORD_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return false;
        }
        let origin = rec.signer;
        if origin == self.me {
            return false;
        }
        if self.revoked.contains(&origin) {
            return false;
        }
        // Cheap duplicate check before verifying.
        if let Some((held, _)) = self
            .members
            .get(&origin)
            .and_then(|e| e.record.as_ref())
            .or_else(|| self.orphans.get(&origin))
        {
            if held.signature == rec.signature {
                return false;
            }
        }
        let Some(decoded) = self.verify_record(from, &rec, now) else {
            return false;
        };
        let held = self
            .members
            .get(&origin)
            .and_then(|e| e.record_version())
            .or_else(|| self.orphans.get(&origin).map(|(_, r)| r.version()));
        if held.is_some_and(|v| v >= decoded.version()) {
            return false; // an equal or older version never replaces a newer one
        }
        self.stats.records_new += 1;
        let version = decoded.version();
        if let Some(e) = self.members.get_mut(&origin) {
            e.record = Some((rec, decoded));
            let member_version = e.info.record_version;
            if version >= member_version {
                self.stale.remove(&origin);
            }
            self.emit(Event::Updated(origin));
        } else if let Some(m) = self.pending.remove(&origin) {
            self.orphans_insert(origin, rec, decoded);
            self.apply_alive(from, m, now);
        } else {
            self.orphans_insert(origin, rec, decoded);
        }
        self.missing
            .retain(|(o, v), _| !(*o == origin && *v <= version));
        true
    }

    /// Checks a signed record (signature, origin, limits, admission); penalises `from` if bad.
    fn verify_record(
        &mut self,
        from: NodeId,
        rec: &Arc<SignedRecord>,
        now: Millis,
    ) -> Option<Arc<NodeRecord>> {
        let origin = rec.signer;
        if rec.payload.len() + 96 > RECORD_BYTES_MAX {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        let decoded = match self.verifier.record(rec) {
            Ok(r) => r,
            Err(_) => {
                self.penalize(from, Penalty::BadSignature);
                return None;
            }
        };
        if decoded.node_id != origin {
            self.penalize(from, Penalty::ForeignRecord);
            return None;
        }
        if decoded.check_limits().is_err() {
            self.penalize(from, Penalty::Oversize);
            return None;
        }
        if let Admission::Enforced { root, mesh_id } = &self.cfg.admission {
            let ok = self
                .verifier
                .record_admitted(&decoded, root, mesh_id, now / 1000);
            if !ok {
                self.penalize(from, Penalty::Unadmitted);
                return None;
            }
        }
        Some(decoded)
    }

    fn orphans_insert(&mut self, id: NodeId, rec: Arc<SignedRecord>, dec: Arc<NodeRecord>) {
        if self.orphans.len() >= ORPHANS_MAX && !self.orphans.contains_key(&id) {
            if let Some(k) = self.orphans.keys().next().copied() {
                self.orphans.remove(&k);
            }
        }
        self.orphans.insert(id, (rec, dec));
    }

    fn on_record(&mut self, from: NodeId, rec: Arc<SignedRecord>, eager: bool, now: Millis) {
        let new = self.accept_record(from, rec.clone(), now);
        if !eager {
            return;
        }
        if new {
            if !self.eager.contains(&from) && self.is_member(&from) {
                self.lazy.remove(&from);
                self.eager.insert(from);
            }
            self.broadcast_record(rec, Some(from));
        } else if self.eager.len() > self.cfg.eager_peers_min && self.eager.remove(&from) {
            // Plumtree: a duplicate on an eager link prunes it to lazy, down to a floor of
            // eager links that keeps the tree shallow for every sender, not just the first.
            if self.lazy.len() < self.cfg.tree_peers_max {
                self.lazy.insert(from);
            }
            self.send(from, Message::Prune);
        }
    }

    fn on_ihave(&mut self, from: NodeId, entries: Vec<(NodeId, Version)>, now: Millis) {
        for (origin, version) in entries {
            if origin == self.me || self.record_version(&origin).is_some_and(|v| v >= version) {
                continue;
            }
            if self
                .orphans
                .get(&origin)
                .is_some_and(|(_, r)| r.version() >= version)
            {
                continue;
            }
            if let Some(m) = self.missing.get_mut(&(origin, version)) {
                if m.from.len() < 4 && !m.from.contains(&from) {
                    m.from.push(from);
                }
            } else if self.missing.len() < MISSING_MAX {
                self.missing.insert(
                    (origin, version),
                    Missing {
                        deadline: now + self.cfg.graft_timeout_ms,
                        from: vec![from],
                    },
                );
            }
        }
    }

    fn graft_missing(&mut self, now: Millis) {
        let due: Vec<(NodeId, Version)> = self
            .missing
            .iter()
            .filter(|(_, m)| now >= m.deadline)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(m) = self.missing.get_mut(&key) else {
                continue;
            };
            if m.from.is_empty() {
                self.missing.remove(&key);
                continue;
            }
            let peer = m.from.remove(0);
            m.deadline = now + self.cfg.graft_timeout_ms;
            if self.is_member(&peer) {
                self.lazy.remove(&peer);
                self.eager.insert(peer);
                self.send(peer, Message::Graft { entries: vec![key] });
            }
        }
    }

    fn on_graft(&mut self, from: NodeId, entries: Vec<(NodeId, Version)>) {
        self.lazy.remove(&from);
        self.eager.insert(from);
        for (origin, _) in entries {
            let rec = if origin == self.me {
                Some(self.local_signed.clone())
            } else {
                self.members
                    .get(&origin)
                    .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
            };
            if let Some(record) = rec {
                self.send(from, Message::Record { record });
            }
        }
    }

    // ---- record plane: anti-entropy pull ----

    fn mark_stale(&mut self, id: NodeId, now: Millis) {
        let Some(e) = self.members.get(&id) else {
            return;
        };
        let behind = e.record_version().is_none_or(|v| v < e.info.record_version);
        if behind && matches!(e.state(), MemberState::Alive | MemberState::Suspect) {
            self.stale.entry(id).or_insert(now);
        } else {
            self.stale.remove(&id);
        }
    }

    fn request_pull(&mut self, peer: NodeId, ids: Vec<NodeId>, now: Millis) {
        self.seq = self.seq.wrapping_add(1);
        let req = self.seq;
        self.pulls.insert(
            req,
            PullReq {
                deadline: now + 2 * self.cfg.probe_timeout_ms,
                ids: ids.clone(),
            },
        );
        self.send(peer, Message::Pull { req, ids });
    }

    fn start_pulls(&mut self, now: Millis) {
        // Give Plumtree a chance first: only entries stale for longer than a graft round.
        let grace = self.cfg.graft_timeout_ms;
        let in_flight: BTreeSet<NodeId> = self
            .pulls
            .values()
            .flat_map(|p| p.ids.iter().copied())
            .collect();
        let mut wanted: Vec<NodeId> = self
            .stale
            .iter()
            .filter(|(id, since)| now >= **since + grace && !in_flight.contains(id))
            .map(|(id, _)| *id)
            .collect();
        // Members still waiting for an admitted record: a lost pull must not leave them
        // invisible for good.
        wanted.extend(
            self.pending
                .keys()
                .filter(|id| !in_flight.contains(id))
                .take(self.cfg.pull_batch_max * self.cfg.pulls_in_flight_max)
                .copied(),
        );
        while self.pulls.len() < self.cfg.pulls_in_flight_max && !wanted.is_empty() {
            let n = self
                .cfg
                .pull_batch_max
                .min(PULL_RECORDS_MAX)
                .min(wanted.len());
            let batch: Vec<NodeId> = wanted.drain(..n).collect();
            let peer = match self
                .random_alive(1, &batch.iter().copied().collect())
                .first()
            {
                Some(p) => *p,
                None => batch[0],
            };
            self.request_pull(peer, batch, now);
        }
    }

    fn on_pull(&mut self, from: NodeId, req: u32, ids: Vec<NodeId>) {
        let budget = self.cfg.frame_bytes_max - 1024;
        let mut bytes = 0;
        let mut records = Vec::new();
        for id in ids.into_iter().take(PULL_RECORDS_MAX) {
            let rec = if id == self.me {
                Some(self.local_signed.clone())
            } else {
                self.members
                    .get(&id)
                    .and_then(|e| e.record.as_ref().map(|(s, _)| s.clone()))
            };
            if let Some(r) = rec {
                bytes += r.payload.len() + 100;
                if bytes > budget {
                    break;
                }
                records.push(r);
            }
        }
        self.send(from, Message::PullResp { req, records });
    }
}

fn capability_matches(c: &Capability, q: &CapabilityQuery) -> bool {
    if q.min_proficiency.is_some_and(|min| c.proficiency < min) {
        return false;
    }
    q.attrs
        .iter()
        .all(|(k, v)| c.attributes.get(k).is_some_and(|a| a.matches(v)))
}
