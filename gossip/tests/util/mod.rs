//! A tiny deterministic harness: N gossip nodes under enforced admission, a virtual clock and a
//! fixed-latency message queue. No sockets, no sleeps: time only moves when the harness moves
//! it, to the next timer or the next delivery. (The full network model lives in `sim/`.)

#![allow(dead_code)] // each test binary uses a different part of the harness

use agentmesh_crypto::{AdmissionCert, Keypair, NodeId, SignedCert};
use agentmesh_gossip::{
    Admission, AgentInfo, Config, Event, Gossip, Input, MemberState, Message, NodeRecord,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// The mesh every harness node is admitted to.
pub const MESH_ID: &str = "test-mesh";
/// The virtual clock starts here (a plausible UNIX time in ms, so certificates make sense).
pub const START_MS: u64 = 1_700_000_000_000;
/// One-way delivery latency of every message.
pub const LATENCY_MS: u64 = 5;
/// Steps allowed per `drive_until` before it declares a livelock (time not advancing).
const STEPS_MAX: u64 = 2_000_000;

/// A certificate window around the start of the clock: valid for a day.
pub fn valid_window() -> (u64, u64) {
    let now_s = START_MS / 1000;
    (now_s - 3600, now_s + 86_400)
}

/// A message filter for [`Net::drop_if`].
pub type DropFn = Box<dyn Fn(u64, usize, usize, &Message) -> bool>;

/// The harness: nodes, the clock, in-flight messages and what each node emitted.
pub struct Net {
    /// Virtual time in ms.
    pub now: u64,
    /// The nodes, by index.
    pub nodes: Vec<Gossip>,
    /// Their keys, by index.
    pub keys: Vec<Keypair>,
    /// Their ids, by index.
    pub ids: Vec<NodeId>,
    /// Events each node emitted, by index.
    pub events: Vec<Vec<(u64, Event)>>,
    /// The mesh root key.
    pub root: Keypair,
    /// The configuration every node was built with.
    pub cfg: Config,
    /// Nodes whose traffic is dropped in both directions (they keep running).
    pub isolated: BTreeSet<usize>,
    /// Nodes that stopped: not ticked, nothing delivered to or from them.
    pub stopped: BTreeSet<usize>,
    /// Messages dropped by isolation or stops.
    pub dropped: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Drops a message when it returns true: `(now, from, to, message)` (a lossy link).
    pub drop_if: Option<DropFn>,
    index: BTreeMap<NodeId, usize>,
    queue: BTreeMap<(u64, u64), (usize, usize, Message)>,
    next_msg: u64,
    rng: ChaCha8Rng,
}

impl Net {
    /// `n` admitted nodes with LAN defaults and agents named `agent-<i>`, not yet joined.
    pub fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, |_| {})
    }

    /// Like [`Net::new`], with the LAN config adjusted by `tweak`.
    pub fn with_config(n: usize, seed: u64, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let root = keypair(&mut rng);
        let mut cfg = Config::lan(Admission::Enforced {
            root: root.node_id(),
            mesh_id: MESH_ID.to_string(),
        });
        tweak(&mut cfg);
        let mut net = Net {
            now: START_MS,
            nodes: Vec::new(),
            keys: Vec::new(),
            ids: Vec::new(),
            events: Vec::new(),
            root,
            cfg,
            isolated: BTreeSet::new(),
            stopped: BTreeSet::new(),
            dropped: 0,
            delivered: 0,
            drop_if: None,
            index: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_msg: 0,
            rng,
        };
        for i in 0..n {
            let key = keypair(&mut net.rng);
            let (nb, na) = valid_window();
            let cert = net.cert(&key.node_id(), nb, na);
            let mut rec = NodeRecord::new(key.node_id());
            rec.cert = Some(cert);
            rec.agent = Some(AgentInfo {
                name: format!("agent-{i}"),
                capabilities: vec![],
            });
            net.spawn(key, rec);
        }
        net
    }

    /// A certificate for `node` signed by the mesh root.
    pub fn cert(&self, node: &NodeId, not_before_s: u64, not_after_s: u64) -> SignedCert {
        cert_signed_by(&self.root, MESH_ID, node, not_before_s, not_after_s)
    }

    /// A fresh key from the harness RNG (deterministic per seed).
    pub fn fresh_key(&mut self) -> Keypair {
        keypair(&mut self.rng)
    }

    /// Adds a node with this key and record template; returns its index.
    pub fn spawn(&mut self, key: Keypair, record: NodeRecord) -> usize {
        let i = self.nodes.len();
        let seed = self.rng.next_u64();
        let addrs = vec![format!("/ip4/10.0.0.{}/udp/4000/quic-v1", i + 1)];
        let g = Gossip::new(self.cfg.clone(), key.clone(), addrs, record, seed, self.now)
            .expect("valid node");
        self.index.insert(key.node_id(), i);
        self.ids.push(key.node_id());
        self.keys.push(key);
        self.nodes.push(g);
        self.events.push(Vec::new());
        i
    }

    /// Node `i` crashes and starts again at once with the same key and record template but
    /// no state (kill -9 and restart): a new incarnation, an empty view. Not joined yet.
    pub fn restart(&mut self, i: usize) {
        let seed = self.rng.next_u64();
        let old = self.nodes[i].local_record().clone();
        let mut rec = NodeRecord::new(old.node_id);
        rec.cert = old.cert.clone();
        rec.agent = old.agent.clone();
        let addrs = vec![format!("/ip4/10.0.0.{}/udp/4000/quic-v1", i + 1)];
        self.nodes[i] = Gossip::new(
            self.cfg.clone(),
            self.keys[i].clone(),
            addrs,
            rec,
            seed,
            self.now,
        )
        .expect("valid node");
        self.queue.retain(|_, (from, to, _)| *from != i && *to != i);
    }

    /// Every node but `seed` joins through node `seed`; outputs are queued.
    pub fn join_all_through(&mut self, seed: usize) {
        for i in 0..self.nodes.len() {
            if i != seed {
                self.join(i, seed);
            }
        }
    }

    /// Node `i` joins through node `seed`.
    pub fn join(&mut self, i: usize, seed: usize) {
        let seeds = vec![self.ids[seed]];
        self.input(i, Input::Join { seeds });
    }

    /// Feeds an input to node `i` at the current time and queues what it sends.
    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        self.nodes[i].handle(input, now);
        self.flush(i);
    }

    /// Delivers `msg` to node `to` as if node `from` sent it now (bypassing the queue).
    pub fn inject(&mut self, from: usize, to: usize, msg: Message) {
        let from = self.ids[from];
        self.input(to, Input::Message { from, msg });
    }

    /// Drains node `i`'s outputs: messages into the queue, events into `events[i]`.
    pub fn flush(&mut self, i: usize) {
        while let Some(ev) = self.nodes[i].poll_event() {
            self.events[i].push((self.now, ev));
        }
        while let Some((to, msg)) = self.nodes[i].poll_message() {
            let Some(&j) = self.index.get(&to) else {
                self.dropped += 1;
                continue;
            };
            let lost = self
                .drop_if
                .as_ref()
                .is_some_and(|f| f(self.now, i, j, &msg));
            if self.cut(i, j) || lost {
                self.dropped += 1;
                continue;
            }
            self.next_msg += 1;
            self.queue
                .insert((self.now + LATENCY_MS, self.next_msg), (i, j, msg));
        }
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        [a, b]
            .iter()
            .any(|x| self.isolated.contains(x) || self.stopped.contains(x))
    }

    /// The time of the next thing to happen: a delivery or a live node's timer.
    fn next_time(&self) -> u64 {
        let timers = (0..self.nodes.len())
            .filter(|i| !self.stopped.contains(i))
            .map(|i| self.nodes[i].next_timeout());
        let delivery = self.queue.keys().next().map(|(t, _)| *t);
        timers.chain(delivery).min().unwrap_or(u64::MAX)
    }

    /// Advances to the next event time and processes everything due then.
    pub fn step(&mut self) {
        let t = self.next_time().max(self.now);
        self.now = t;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let (from, to, msg) = entry.remove();
            if self.cut(from, to) {
                self.dropped += 1;
                continue;
            }
            self.delivered += 1;
            if std::env::var_os("GOSSIP_TRACE").is_some() {
                eprintln!("+{} {from}->{to} {:?}", t - START_MS, msg);
            }
            let from = self.ids[from];
            self.nodes[to].handle(Input::Message { from, msg }, t);
            self.flush(to);
        }
        for i in 0..self.nodes.len() {
            if !self.stopped.contains(&i) && self.nodes[i].next_timeout() <= t {
                self.nodes[i].handle(Input::Tick, t);
                self.flush(i);
            }
        }
    }

    /// Runs until `cond` holds, or panics once `max_ms` of virtual time pass (a liveness
    /// failure) or time stops advancing (a livelock). Returns the virtual ms it took.
    pub fn drive_until(
        &mut self,
        max_ms: u64,
        what: &str,
        mut cond: impl FnMut(&Net) -> bool,
    ) -> u64 {
        let start = self.now;
        let deadline = start + max_ms;
        let mut steps_at_same_time = 0u64;
        let mut last = self.now;
        loop {
            if cond(self) {
                return self.now - start;
            }
            assert!(
                self.now <= deadline,
                "`{what}` did not hold within {max_ms} ms (virtual)\n{}",
                self.describe()
            );
            self.step();
            if self.now == last {
                steps_at_same_time += 1;
                assert!(
                    steps_at_same_time < STEPS_MAX,
                    "livelock: time stuck at +{} ms while waiting for `{what}`",
                    self.now - start
                );
            } else {
                steps_at_same_time = 0;
                last = self.now;
            }
        }
    }

    /// Runs for `ms` of virtual time, asserting after every step that `invariant` holds.
    pub fn run_checking(&mut self, ms: u64, what: &str, mut invariant: impl FnMut(&Net) -> bool) {
        let end = self.now + ms;
        let mut steps = 0u64;
        while self.now < end {
            assert!(
                invariant(self),
                "invariant `{what}` broken at +{} ms",
                ms - (end - self.now)
            );
            self.step();
            steps += 1;
            assert!(steps < STEPS_MAX * 10, "livelock while running {ms} ms");
        }
        assert!(invariant(self), "invariant `{what}` broken at the end");
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_checking(ms, "none", |_| true);
    }

    /// Indices of nodes still running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| !self.stopped.contains(i))
            .collect()
    }

    /// True if every running node other than `subject` sees it in `state`.
    pub fn all_see(&self, subject: usize, state: MemberState) -> bool {
        self.live()
            .into_iter()
            .filter(|&i| i != subject)
            .all(|i| self.nodes[i].state_of(&self.ids[subject]) == Some(state))
    }

    /// True if every running node sees every other running node alive and holds its current
    /// record.
    pub fn converged(&self) -> bool {
        let live = self.live();
        live.iter().all(|&i| {
            live.iter().filter(|&&j| j != i).all(|&j| {
                let id = self.ids[j];
                self.nodes[i].state_of(&id) == Some(MemberState::Alive)
                    && self.nodes[i].record_version(&id)
                        == Some(self.nodes[j].local_record().version())
            })
        })
    }

    /// Joins every node through node 0 and waits until the view converges.
    pub fn converge(&mut self) -> u64 {
        self.join_all_through(0);
        self.drive_until(10_000, "initial convergence", |n| n.converged())
    }

    /// Each node's view, one line per node: the state and record version it holds of every
    /// node, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, g) in self.nodes.iter().enumerate() {
            let mut line = format!("node {i} inc {} sees:", g.incarnation());
            for (j, id) in self.ids.iter().enumerate().filter(|(j, _)| *j != i) {
                let st = g.state_of(id).map_or("-", |s| s.as_str());
                let v = g.record_version(id).map_or("none".into(), |v| {
                    format!("{}.{}", v.incarnation % 100_000, v.seq)
                });
                line += &format!(" {j}={st}/{v}");
            }
            out += &line;
            out.push('\n');
        }
        out
    }

    /// True if node `i` ever emitted an event equal to `ev`.
    pub fn saw(&self, i: usize, ev: &Event) -> bool {
        self.events[i].iter().any(|(_, e)| e == ev)
    }

    /// Penalty reasons node `i` emitted about `peer`, in order.
    pub fn penalties(&self, i: usize, peer: usize) -> Vec<String> {
        let peer = self.ids[peer];
        self.events[i]
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Penalized { peer: p, reason } if *p == peer => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A keypair drawn from a seeded RNG.
pub fn keypair(rng: &mut ChaCha8Rng) -> Keypair {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    Keypair::from_secret(secret)
}

/// A certificate for `node` in `mesh_id`, signed by `root`.
pub fn cert_signed_by(
    root: &Keypair,
    mesh_id: &str,
    node: &NodeId,
    not_before_s: u64,
    not_after_s: u64,
) -> SignedCert {
    AdmissionCert {
        mesh_id: mesh_id.to_string(),
        node_id: *node,
        roles: vec!["agent".to_string()],
        not_before: not_before_s,
        not_after: not_after_s,
    }
    .sign(root)
    .expect("cert within limits")
}
