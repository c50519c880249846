//! The simulated world: nodes, a modelled network, a virtual clock and an event queue.
//! Iteration is over `BTreeMap`s and `Vec`s only, and all randomness comes from one seeded
//! ChaCha RNG, so one seed gives one run, byte for byte.

use agentmesh_crypto::{AdmissionCert, Keypair, NodeId};
use agentmesh_gossip::state::Millis;
use agentmesh_gossip::{
    Admission, AgentInfo, Capability, Config, Event, Gossip, Input, MemberState, Message,
    NodeRecord, RecordUpdate, SignedMember, SignedRecord, Version,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::adversary::Adversary;
use crate::cache::CachingVerifier;
use crate::queue::TimeQueue;

/// The virtual epoch: 2027-01-15, so certificates are checked against a realistic clock.
pub const EPOCH_MS: Millis = 1_800_000_000_000;
/// The simulated mesh id.
pub const MESH_ID: &str = "sim";
/// Seed of the key of the template node that verifies the converged start's view once.
const TEMPLATE_SEED: u64 = 0x5eed_7e47;

/// Link behaviour.
#[derive(Debug, Clone)]
pub struct NetModel {
    /// Minimum one-way latency.
    pub latency_ms_min: u64,
    /// Maximum one-way latency (uniform in between).
    pub latency_ms_max: u64,
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
}

impl Default for NetModel {
    fn default() -> Self {
        NetModel {
            latency_ms_min: 10,
            latency_ms_max: 50,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// Something scheduled to happen.
#[derive(Debug, Clone)]
pub enum Action {
    /// The node stops at once (kill -9).
    Crash(usize),
    /// A crashed node starts again with a new incarnation and rejoins through a seed.
    Restart(usize),
    /// The node stops processing until the given time (a starved CPU).
    Stall(usize, Millis),
    /// Nodes are split into groups; messages between groups are dropped.
    Partition(Vec<u8>),
    /// All groups are joined again.
    Heal,
    /// The node changes its agent record.
    UpdateRecord(usize),
    /// The node leaves gracefully.
    Leave(usize),
    /// A not-yet-started node joins through a seed.
    Join(usize),
    /// An adversary acts.
    Adversary(usize),
}

enum Kind {
    Deliver {
        to: usize,
        from: usize,
        msg: Message,
    },
    Wake(usize),
    StallEnd(usize),
    Act(Action),
}

/// One simulated node.
pub struct SimNode {
    /// Its identity.
    pub id: NodeId,
    key: Keypair,
    /// The state machine, None while crashed or not yet started.
    pub g: Option<Gossip>,
    wake_at: Option<Millis>,
    stalled_until: Millis,
    stall_buf: Vec<(usize, Message)>,
    /// Partition group.
    pub group: u8,
    /// Misbehaviour, if any.
    pub adversary: Option<Adversary>,
    /// True if this node ever crashed, stalled or left (so its death is not "false").
    pub faulty: bool,
    /// True if this node ever stalled.
    pub stalled: bool,
    /// Record updates made (drives distinct record contents).
    updates: u32,
}

/// Observations the scenario turns into figures.
pub trait Observer {
    /// A node emitted an event at `t`.
    fn event(&mut self, world: &World, at: usize, ev: &Event, t: Millis);
}

/// The simulated world.
pub struct World {
    /// Nodes by index.
    pub nodes: Vec<SimNode>,
    /// Index by node id.
    pub index: BTreeMap<NodeId, usize>,
    /// Current virtual time.
    pub now: Millis,
    /// Network model.
    pub net: NetModel,
    /// Gossip configuration every node uses.
    pub cfg: Config,
    root: Keypair,
    rng: ChaCha8Rng,
    queue: TimeQueue<Kind>,
    verifier: Arc<CachingVerifier>,
    partitioned: bool,
    /// Events processed (for progress and budgets).
    pub steps: u64,
    /// Every record version each honest origin actually signed (digest by version).
    pub signed_by_origin: BTreeMap<(NodeId, Version), [u8; 32]>,
    /// Invariant violations seen.
    pub violations: Vec<String>,
    first_records: BTreeMap<usize, Arc<SignedRecord>>,
}

impl World {
    /// A world of `n` node slots (nodes start later via [`World::start_converged`] or joins).
    pub fn new(n: usize, seed: u64, cfg_fn: impl Fn(Admission) -> Config, net: NetModel) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let root = Keypair::generate(&mut rng);
        let cfg = cfg_fn(Admission::Enforced {
            root: root.node_id(),
            mesh_id: MESH_ID.to_string(),
        });
        let mut nodes = Vec::with_capacity(n);
        let mut index = BTreeMap::new();
        for i in 0..n {
            let key = Keypair::generate(&mut rng);
            let id = key.node_id();
            index.insert(id, i);
            nodes.push(SimNode {
                id,
                key,
                g: None,
                wake_at: None,
                stalled_until: 0,
                stall_buf: Vec::new(),
                group: 0,
                adversary: None,
                faulty: false,
                stalled: false,
                updates: 0,
            });
        }
        World {
            nodes,
            index,
            now: EPOCH_MS,
            net,
            cfg,
            root,
            rng,
            queue: TimeQueue::default(),
            verifier: Arc::new(CachingVerifier::default()),
            partitioned: false,
            steps: 0,
            signed_by_origin: BTreeMap::new(),
            violations: Vec::new(),
            first_records: BTreeMap::new(),
        }
    }

    fn template(&self, i: usize) -> NodeRecord {
        let id = self.nodes[i].id;
        let cert = AdmissionCert {
            mesh_id: MESH_ID.to_string(),
            node_id: id,
            roles: vec!["agent".to_string()],
            not_before: 0,
            not_after: u64::MAX / 2,
        }
        .sign(&self.root)
        .expect("cert within limits");
        let mut r = NodeRecord::new(id);
        r.cert = Some(cert);
        r.agent = Some(agent_for(i, 0));
        r
    }

    /// Builds node `i`'s state machine at the current time (without joining).
    pub fn boot(&mut self, i: usize) {
        let rec = self.template(i);
        let key = self.nodes[i].key.clone();
        let addrs = vec![format!("/sim/{i}")];
        let seed = self.rng.gen();
        let g = Gossip::new(self.cfg.clone(), key, addrs, rec, seed, self.now)
            .expect("sim record within limits")
            .with_verifier(self.verifier.clone());
        self.note_signed(i, &g);
        self.first_records
            .entry(i)
            .or_insert_with(|| g.local_signed_record());
        self.nodes[i].g = Some(g);
        self.nodes[i].wake_at = None;
        self.reschedule(i);
    }

    fn note_signed(&mut self, i: usize, g: &Gossip) {
        let r = g.local_signed_record();
        let v = g.local_record().version();
        self.signed_by_origin
            .insert((self.nodes[i].id, v), r.digest());
    }

    /// Starts nodes `0..n` with a fully converged view, as after a long quiet period.
    pub fn start_converged(&mut self, n: usize) {
        for i in 0..n {
            self.boot(i);
        }
        let entries: Vec<(Arc<SignedMember>, Arc<SignedRecord>)> = (0..n)
            .map(|i| {
                let g = self.nodes[i].g.as_ref().expect("booted");
                (own_member(g), g.local_signed_record())
            })
            .collect();
        // Sorted by id, so the table is built by appending.
        let mut entries = entries;
        entries.sort_by_key(|e| e.0.signer);
        // One node outside the mesh verifies the view once; every node starts from it and
        // shares its storage until it changes an entry (N tables of N entries would not fit
        // at 10,000 nodes). The template's key comes from its own RNG so the world's random
        // stream, and so the run, is the one a per-node bootstrap gives.
        let mut trng = ChaCha8Rng::seed_from_u64(TEMPLATE_SEED);
        let tkey = Keypair::generate(&mut trng);
        let trec = NodeRecord::new(tkey.node_id());
        let mut template = Gossip::new(self.cfg.clone(), tkey, vec![], trec, 0, self.now)
            .expect("template record within limits")
            .with_verifier(self.verifier.clone());
        let from = self.nodes[0].id;
        template.bootstrap(from, &entries, self.now);
        let view = template.shared_view();
        for i in 0..n {
            if let Some(g) = self.nodes[i].g.as_mut() {
                g.bootstrap_shared(&view);
            }
        }
    }

    /// Schedules an action.
    pub fn schedule(&mut self, at: Millis, a: Action) {
        self.push(at, Kind::Act(a));
    }

    fn push(&mut self, t: Millis, kind: Kind) {
        self.queue.push(t, kind);
    }

    fn reschedule(&mut self, i: usize) {
        let Some(g) = self.nodes[i].g.as_ref() else {
            return;
        };
        let t = g.next_timeout().max(self.now);
        let t = t.max(self.nodes[i].stalled_until);
        if self.nodes[i].wake_at.is_none_or(|w| t < w || w < self.now) {
            self.nodes[i].wake_at = Some(t);
            self.push(t, Kind::Wake(i));
        }
    }

    /// True if node `i` is running (started, not crashed).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].g.is_some()
    }

    /// Runs until `until`, calling the observer for every gossip event.
    pub fn run_until(&mut self, until: Millis, obs: &mut dyn Observer) {
        while let Some(t) = self.queue.peek_time() {
            if t > until {
                break;
            }
            let Some((t, kind)) = self.queue.pop() else {
                break;
            };
            self.now = t;
            self.steps += 1;
            match kind {
                Kind::Deliver { to, from, msg } => self.deliver(to, from, msg, obs),
                Kind::Wake(i) => {
                    if self.nodes[i].wake_at == Some(t) {
                        self.nodes[i].wake_at = None;
                        self.input(i, Input::Tick, obs);
                    }
                }
                Kind::StallEnd(i) => self.stall_end(i, obs),
                Kind::Act(a) => self.act(a, obs),
            }
        }
        self.now = until;
    }

    fn deliver(&mut self, to: usize, from: usize, msg: Message, obs: &mut dyn Observer) {
        if self.nodes[to].g.is_none() {
            return;
        }
        if self.now < self.nodes[to].stalled_until {
            if self.nodes[to].stall_buf.len() < 10_000 {
                self.nodes[to].stall_buf.push((from, msg));
            }
            return;
        }
        let from_id = self.nodes[from].id;
        self.input(to, Input::Message { from: from_id, msg }, obs);
    }

    /// Feeds one input and routes everything it produced.
    pub fn input(&mut self, i: usize, input: Input, obs: &mut dyn Observer) {
        let now = self.now;
        let Some(g) = self.nodes[i].g.as_mut() else {
            return;
        };
        g.handle(input, now);
        self.drain(i, obs);
    }

    fn drain(&mut self, i: usize, obs: &mut dyn Observer) {
        loop {
            let Some(g) = self.nodes[i].g.as_mut() else {
                return;
            };
            if let Some(ev) = g.poll_event() {
                self.check_event(i, &ev);
                obs.event(self, i, &ev, self.now);
                continue;
            }
            let Some((to, msg)) = g.poll_message() else {
                break;
            };
            if let Some(&j) = self.index.get(&to) {
                self.transmit(i, j, msg);
            }
        }
        self.reschedule(i);
    }

    /// Sends a message through the network model.
    pub fn transmit(&mut self, from: usize, to: usize, msg: Message) {
        if self.partitioned && self.nodes[from].group != self.nodes[to].group {
            return;
        }
        if self.net.loss > 0.0 && self.rng.gen_bool(self.net.loss) {
            return;
        }
        let copies = if self.net.duplicate > 0.0 && self.rng.gen_bool(self.net.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lat = self
                .rng
                .gen_range(self.net.latency_ms_min..=self.net.latency_ms_max);
            self.push(
                self.now + lat,
                Kind::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn stall_end(&mut self, i: usize, obs: &mut dyn Observer) {
        let buf = std::mem::take(&mut self.nodes[i].stall_buf);
        for (from, msg) in buf {
            let from_id = self.nodes[from].id;
            self.input(i, Input::Message { from: from_id, msg }, obs);
        }
        self.nodes[i].wake_at = None;
        self.input(i, Input::Tick, obs);
    }

    /// Applies an action now.
    pub fn act(&mut self, a: Action, obs: &mut dyn Observer) {
        match a {
            Action::Crash(i) => {
                self.nodes[i].g = None;
                self.nodes[i].faulty = true;
            }
            Action::Restart(i) => {
                self.boot(i);
                let seed = self.random_up_peer(i);
                if let Some(s) = seed {
                    let sid = self.nodes[s].id;
                    self.input(i, Input::Join { seeds: vec![sid] }, obs);
                }
            }
            Action::Join(i) => {
                if self.nodes[i].g.is_none() {
                    self.boot(i);
                }
                if let Some(s) = self.random_up_peer(i) {
                    let sid = self.nodes[s].id;
                    self.input(i, Input::Join { seeds: vec![sid] }, obs);
                }
            }
            Action::Stall(i, until) => {
                if self.nodes[i].g.is_some() {
                    self.nodes[i].stalled_until = until;
                    self.nodes[i].faulty = true;
                    self.nodes[i].stalled = true;
                    self.push(until, Kind::StallEnd(i));
                }
            }
            Action::Partition(groups) => {
                for (n, g) in self.nodes.iter_mut().zip(groups) {
                    n.group = g;
                }
                self.partitioned = true;
            }
            Action::Heal => self.partitioned = false,
            Action::UpdateRecord(i) => {
                if self.nodes[i].g.is_none() || self.now < self.nodes[i].stalled_until {
                    return;
                }
                self.nodes[i].updates += 1;
                let agent = agent_for(i, self.nodes[i].updates);
                self.input(i, Input::Update(RecordUpdate::Agent(Some(agent))), obs);
                if let Some(g) = self.nodes[i].g.take() {
                    self.note_signed(i, &g);
                    self.nodes[i].g = Some(g);
                }
            }
            Action::Leave(i) => {
                self.nodes[i].faulty = true;
                self.input(i, Input::Leave, obs);
                // Give the leave time to go out, then stop the node.
                let at = self.now + 2 * self.cfg.gossip_interval_ms;
                self.schedule(at, Action::Crash(i));
            }
            Action::Adversary(i) => crate::adversary::act(self, i),
        }
    }

    fn random_up_peer(&mut self, not: usize) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != not && self.is_up(j) && self.nodes[j].adversary.is_none())
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.gen_range(0..up.len())])
    }

    /// The world's RNG (for scenarios and adversaries).
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// The mesh root key (security scenarios sign revocations and certificates with it).
    pub fn root(&self) -> &Keypair {
        &self.root
    }

    /// The key of node `i` (adversaries sign with their own key).
    pub fn key(&self, i: usize) -> &Keypair {
        &self.nodes[i].key
    }

    /// Invariant: an honest node only ever holds records their origin actually signed.
    fn check_event(&mut self, i: usize, ev: &Event) {
        let Event::Updated(origin) = ev else { return };
        let Some(&o) = self.index.get(origin) else {
            return;
        };
        if self.nodes[i].adversary.is_some() || self.nodes[o].adversary.is_some() {
            return;
        }
        let Some(g) = self.nodes[i].g.as_ref() else {
            return;
        };
        let (Some(v), Some(held)) = (g.record_version(origin), g.signed_record(origin)) else {
            return;
        };
        // Same version is not enough: the bytes held must be the very envelope signed.
        let msg = match self.signed_by_origin.get(&(*origin, v)) {
            None => format!(
                "node {i} accepted a record of node {o} at {v:?} that its origin never signed"
            ),
            Some(d) if *d != held.digest() => format!(
                "node {i} holds a record of node {o} at {v:?} whose digest differs from the one \
                 its origin signed"
            ),
            Some(_) => return,
        };
        if self.violations.len() < 100 {
            self.violations.push(msg);
        }
    }

    /// The first record node `i` ever signed (for replay attacks).
    pub fn first_record(&self, i: usize) -> Option<Arc<SignedRecord>> {
        self.first_records.get(&i).cloned()
    }

    /// Live, honest node indices.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.is_up(i) && self.nodes[i].adversary.is_none())
            .collect()
    }

    /// Live nodes that at least one live node considers dead, and by how many.
    pub fn falsely_dead(&self) -> BTreeMap<usize, usize> {
        let live = self.live();
        let mut out = BTreeMap::new();
        for &i in &live {
            let Some(g) = self.nodes[i].g.as_ref() else {
                continue;
            };
            for id in g.ids_in_state(MemberState::Dead) {
                if let Some(&j) = self.index.get(&id) {
                    if j != i && self.is_up(j) && self.nodes[j].adversary.is_none() {
                        *out.entry(j).or_insert(0) += 1;
                    }
                }
            }
        }
        out
    }

    /// Adds an invariant violation.
    pub fn violation(&mut self, msg: String) {
        if self.violations.len() < 100 {
            self.violations.push(msg);
        }
    }

    /// Sum of a stat over live nodes.
    pub fn sum_stats(&self, f: impl Fn(&agentmesh_gossip::Stats) -> u64) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.g.as_ref())
            .map(|g| f(g.stats()))
            .sum()
    }

    /// Verifications actually performed (cache misses) and requested.
    pub fn verify_counts(&self) -> (u64, u64) {
        self.verifier.counts()
    }
}

fn own_member(g: &Gossip) -> Arc<SignedMember> {
    // The local announcement is the first entry of a fresh sync; rebuild it via members().
    g.local_member()
}

/// The demo agent for node `i` at revision `rev`: a few capabilities, some shared.
pub fn agent_for(i: usize, rev: u32) -> AgentInfo {
    let caps = [
        "inventory.query",
        "pricing.quote",
        "text.summarize",
        "risk.score",
    ];
    let mut attributes = BTreeMap::new();
    attributes.insert(
        "region".to_string(),
        agentmesh_gossip::AttrValue::One(["eu", "us", "ap"][i % 3].to_string()),
    );
    AgentInfo {
        name: format!("agent-{i}"),
        capabilities: vec![
            Capability {
                name: caps[i % caps.len()].to_string(),
                proficiency: agentmesh_gossip::Proficiency::Experienced,
                attributes,
                cost: 1.0 + (rev % 7) as f64,
                ..Default::default()
            },
            Capability {
                name: caps[(i + 1) % caps.len()].to_string(),
                proficiency: agentmesh_gossip::Proficiency::Novice,
                attributes: BTreeMap::new(),
                cost: 2.0,
                ..Default::default()
            },
        ],
    }
}
