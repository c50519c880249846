//! Every limit and timing of the gossip layer, in one place, with LAN and WAN profiles.

use agentmesh_crypto::NodeId;

/// Who may join: an admission root, or anyone (demos only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Anyone may join; records need no certificate. For demos; the node warns loudly.
    Open,
    /// Records must carry a certificate for `mesh_id` signed by `root`.
    Enforced {
        /// The mesh root public key.
        root: NodeId,
        /// The mesh id certificates must name.
        mesh_id: String,
    },
}

/// Gossip configuration. Names carry their unit last (`_ms`, `_bytes`, `_max`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Admission rule applied to every record.
    pub admission: Admission,
    /// SWIM protocol period: one probe per period.
    pub protocol_period_ms: u64,
    /// Time to wait for a direct ack before indirect probes.
    pub probe_timeout_ms: u64,
    /// Number of indirect probes (`k`).
    pub indirect_probes: usize,
    /// Lifeguard suspicion minimum multiplier α: `min = α · log10(max(N,10)) · period`.
    pub suspicion_alpha: f64,
    /// Lifeguard suspicion maximum multiplier β: `max = β · min`.
    pub suspicion_beta: f64,
    /// Independent confirmations expected (`K`) before the timeout reaches its minimum.
    pub suspicion_confirmations_k: u32,
    /// Lifeguard local health multiplier ceiling (LHM saturates here).
    pub lhm_max: u32,
    /// Dedicated gossip round interval.
    pub gossip_interval_ms: u64,
    /// Members contacted per gossip round.
    pub gossip_fanout: usize,
    /// Retransmission multiplier λ: each update is sent about `λ·ceil(log10(N+1))` times.
    pub retransmit_mult: u32,
    /// Bytes of piggybacked updates per message.
    pub piggyback_bytes_max: usize,
    /// Largest frame accepted or produced.
    pub frame_bytes_max: usize,
    /// Most members tracked (live and tombstoned).
    pub members_max: usize,
    /// How long dead and left members are remembered.
    pub tombstone_ms: u64,
    /// Plumtree eager-push peers chosen at start.
    pub eager_peers: usize,
    /// Eager links never pruned below this many (keeps trees shallow for many senders).
    pub eager_peers_min: usize,
    /// Most Plumtree neighbours (eager plus lazy) kept.
    pub tree_peers_max: usize,
    /// Lazy (IHAVE) peers per record.
    pub lazy_peers: usize,
    /// How long an IHAVE waits for the record before grafting.
    pub graft_timeout_ms: u64,
    /// Interval of anti-entropy pulls.
    pub anti_entropy_interval_ms: u64,
    /// Most records asked for in one pull request.
    pub pull_batch_max: usize,
    /// Pull requests in flight at once.
    pub pulls_in_flight_max: usize,
    /// Members per push-pull (state sync) frame.
    pub sync_members_per_frame: usize,
    /// Interval of membership anti-entropy: a digest exchange with one random member, so two
    /// members that missed each other's announcements (a restart, a healed partition, an
    /// expired tombstone) still learn of each other.
    pub push_pull_interval_ms: u64,
    /// Members listed in one membership digest (a rotating window over the table; at most
    /// [`crate::wire::DIGEST_ENTRIES_MAX`]).
    pub push_pull_digest_max: usize,
    /// Relative change in `in_flight` (vs max_concurrency) that publishes a new record.
    pub load_hysteresis: f64,
    /// A changed load is published at least this often even below hysteresis.
    pub load_refresh_ms: u64,
    /// Score below which a peer's messages are ignored.
    pub score_ignore_below: i32,
    /// Score recovered per protocol period (forgiveness).
    pub score_recovery_per_period: i32,
    /// Most peers whose score is remembered.
    pub scores_max: usize,
    /// Most pending piggyback updates.
    pub broadcast_queue_max: usize,
    /// Most outputs buffered before the driver drains them.
    pub outputs_max: usize,
}

impl Config {
    /// Defaults for a LAN or a single data centre (500 ms period, 250 ms probe timeout).
    pub fn lan(admission: Admission) -> Self {
        Config {
            admission,
            // Issue 16 (sim/README.md, "Failure detection"): a 500 ms period with α = 1.6 keeps
            // the minimum suspicion at 2.4 s for 1,000 members (as 1 s with α = 0.8 did) but
            // probes a crashed member and gathers its confirmations twice as fast: crash
            // detection at 1,000 nodes p50 4.1–4.5 s, p99 ≤ 6.2 s over seeds 1–10, against
            // 5.7–6.3 s / up to 12.6 s. Cost: +1 % bytes idle, +17–20 % under record updates or
            // a crash, and stalls of roughly 3.5–4 s are declared dead (then refuted).
            protocol_period_ms: 500,
            probe_timeout_ms: 250,
            indirect_probes: 3,
            suspicion_alpha: 1.6,
            suspicion_beta: 3.0,
            suspicion_confirmations_k: 3,
            lhm_max: 8,
            gossip_interval_ms: 200,
            gossip_fanout: 3,
            retransmit_mult: 4,
            piggyback_bytes_max: 1200,
            frame_bytes_max: 64 * 1024,
            members_max: 100_000,
            tombstone_ms: 60_000,
            eager_peers: 4,
            eager_peers_min: 3,
            tree_peers_max: 12,
            // Each node announces every record to 12 peers, so a node misses all of them with
            // probability ≈ e^-12 per update; at 6 (e^-6 ≈ 0.25 %) a few nodes per update at
            // 1,000 nodes waited for the anti-entropy pull (convergence max ~1 s instead of 0.5 s).
            lazy_peers: 12,
            graft_timeout_ms: 150,
            anti_entropy_interval_ms: 1000,
            pull_batch_max: 32,
            pulls_in_flight_max: 4,
            sync_members_per_frame: 256,
            // A missed member is found within one or two exchanges on small meshes; on large
            // ones the window rotates through the table (about 2·64·40 B per exchange).
            push_pull_interval_ms: 5_000,
            push_pull_digest_max: 64,
            load_hysteresis: 0.2,
            load_refresh_ms: 10_000,
            score_ignore_below: -100,
            score_recovery_per_period: 1,
            scores_max: 4096,
            broadcast_queue_max: 4096,
            outputs_max: 65_536,
        }
    }

    /// Defaults for links across regions: slower period, longer timeouts (not retuned by
    /// issue 16: round trips of 100–300 ms and more loss need the longer probe timeout, and
    /// the simulator's 10–50 ms links say nothing about them).
    pub fn wan(admission: Admission) -> Self {
        Config {
            protocol_period_ms: 2000,
            probe_timeout_ms: 1500,
            suspicion_alpha: 2.0,
            gossip_interval_ms: 500,
            gossip_fanout: 4,
            graft_timeout_ms: 1000,
            anti_entropy_interval_ms: 3000,
            push_pull_interval_ms: 15_000,
            ..Config::lan(admission)
        }
    }
}
