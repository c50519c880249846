//! The tamper-evident audit log: one JSON line per call per side (inbound and outbound), allowed
//! or denied, hash-chained (`seq`, `prev`; see `agentmesh_crypto::audit`) with periodic
//! checkpoints signed by the node key.
//!
//! Files: `<dir>/audit.jsonl` is written; when it reaches `rotate_bytes` it is renamed
//! `audit-<first seq, 20 digits>.jsonl` and a new `audit.jsonl` continues the same chain (its
//! first entry's `prev` is the hash of the previous file's last entry).
//!
//! Durability (`fsync`):
//! - `always`: every entry is fsynced before the call it records is answered; nothing
//!   acknowledged is lost in a crash (costs one fsync per call side).
//! - `interval` (default): fsync at most every `fsync_interval_ms` (default 1000) and at every
//!   checkpoint and rotation; a crash loses at most that window.
//! - `never`: leave it to the OS.
//!
//! A torn last line (crash mid-write) is cut off at start; the chain resumes from the last
//! whole entry. Entries go through a bounded queue (`queue_max`) to one writer thread. When it
//! is full, `on_full` decides: `record_gap` (default) counts what could not be queued and the
//! writer writes a `gap` entry (how many, first and last call time) into the chain, followed
//! by a signed checkpoint; `refuse_call` additionally refuses new calls while the queue is
//! full (each call reserves its entry before it runs; `AuditLog::reserve`), so a fail-closed
//! deployment never serves a call it could not record.
//!
//! Entry 0 of a log is a `genesis` entry signed by the node (node id, certificate hash, start
//! time); a verifier that knows the node refuses a log that does not start with it.

pub use super::audit_line::{parse_line, AuditLine, LineError};
pub use super::audit_query::{query_files, AuditQuery};
pub use super::audit_verify::{verify_files, VerifyFailure, VerifyOpts, VerifyReport, Witnessed};
use agentmesh_crypto::audit::{line_hash, ChainHash};
use agentmesh_crypto::{Checkpoint, Genesis, Keypair, Signature, GENESIS};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default and largest `queue_max`: entries waiting for the writer thread.
pub const AUDIT_QUEUE_MAX: usize = 65_536;
/// Queue slots kept for flush requests beyond `queue_max`.
const FLUSH_SLOTS_MAX: usize = 64;
/// Shortest time between two gap entries while the writer cannot keep up, in ms (bounds how
/// much of the log gap entries and their checkpoints can take).
pub const GAP_ENTRY_INTERVAL_MS: u64 = 100;
/// Longest audit line read back (verify, query), in bytes.
pub const AUDIT_LINE_BYTES_MAX: usize = 16 * 1024;
/// Longest free-text field written (agent names, error messages), in bytes.
pub const AUDIT_FIELD_LEN_MAX: usize = 256;
/// Default rotation size.
pub const ROTATE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default entries between signed checkpoints.
pub const CHECKPOINT_EVERY_DEFAULT: u64 = 1000;
/// Default time between checkpoints when entries trickle in.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Default fsync interval.
pub const FSYNC_INTERVAL_MS_DEFAULT: u64 = 1000;
/// Most entries a query returns.
pub const QUERY_RESULTS_MAX: usize = 10_000;
/// Name of the file being written.
pub const CURRENT_FILE: &str = "audit.jsonl";

/// When the writer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before acknowledging each entry.
    Always,
    /// At most every `fsync_interval_ms`, and at checkpoints and rotation.
    #[default]
    Interval,
    /// Never explicitly.
    Never,
}

/// What happens when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Serve the call; the chain records a signed gap entry with how many entries were lost.
    #[default]
    RecordGap,
    /// Refuse new calls (`audit_unavailable`) until the writer catches up (fail closed).
    RefuseCall,
}

/// `[audit]` in `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the log files (relative to the config file).
    pub dir: PathBuf,
    /// Durability policy.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// fsync period for `interval`.
    #[serde(default = "d_fsync_ms")]
    pub fsync_interval_ms: u64,
    /// Rotate when the current file reaches this size.
    #[serde(default = "d_rotate")]
    pub rotate_bytes: u64,
    /// Write a signed checkpoint every this many entries.
    #[serde(default = "d_cp_every")]
    pub checkpoint_every: u64,
    /// … or this often, if anything was written since the last one.
    #[serde(default = "d_cp_ms")]
    pub checkpoint_interval_ms: u64,
    /// Record the SHA-256 of request bodies (bodies themselves are never logged).
    #[serde(default)]
    pub hash_bodies: bool,
    /// When the queue is full: `record_gap` or `refuse_call`.
    #[serde(default)]
    pub on_full: OnFull,
    /// Entries waiting for the writer at most (1 ..= [`AUDIT_QUEUE_MAX`]).
    #[serde(default = "d_queue")]
    pub queue_max: usize,
}

fn d_queue() -> usize {
    AUDIT_QUEUE_MAX
}

fn d_fsync_ms() -> u64 {
    FSYNC_INTERVAL_MS_DEFAULT
}
fn d_rotate() -> u64 {
    ROTATE_BYTES_DEFAULT
}
fn d_cp_every() -> u64 {
    CHECKPOINT_EVERY_DEFAULT
}
fn d_cp_ms() -> u64 {
    CHECKPOINT_INTERVAL_MS_DEFAULT
}

impl AuditConfig {
    /// Defaults with the log in `dir`.
    pub fn in_dir(dir: PathBuf) -> Self {
        AuditConfig {
            dir,
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: FSYNC_INTERVAL_MS_DEFAULT,
            rotate_bytes: ROTATE_BYTES_DEFAULT,
            checkpoint_every: CHECKPOINT_EVERY_DEFAULT,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
            hash_bodies: false,
            on_full: OnFull::default(),
            queue_max: AUDIT_QUEUE_MAX,
        }
    }

    /// Checks the limits; `(key, message)` on error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.rotate_bytes < 4096 {
            return Err(("audit.rotate_bytes".into(), "must be at least 4096".into()));
        }
        if self.checkpoint_every == 0 {
            return Err(("audit.checkpoint_every".into(), "must be at least 1".into()));
        }
        if self.queue_max == 0 || self.queue_max > AUDIT_QUEUE_MAX {
            return Err((
                "audit.queue_max".into(),
                format!("must be 1 ..= {AUDIT_QUEUE_MAX}"),
            ));
        }
        if self.fsync_interval_ms == 0 || self.checkpoint_interval_ms == 0 {
            return Err((
                "audit.fsync_interval_ms".into(),
                "intervals must be at least 1 ms".into(),
            ));
        }
        Ok(())
    }
}

/// Which side of a call an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// This node called out (or called its own agent).
    Outbound,
    /// A peer called this node's agent.
    Inbound,
}

/// One call, as the call paths report it. The writer adds `seq`, `prev` and `kind`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Wall-clock time the call started, unix ms.
    pub time_ms: u64,
    /// `outbound` or `inbound`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    /// Call id (hex).
    pub call_id: String,
    /// Caller node id.
    pub caller_node: String,
    /// Caller agent name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_agent: Option<String>,
    /// Callee node id (empty if no candidate was chosen).
    pub callee_node: String,
    /// Callee agent name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee_agent: Option<String>,
    /// Capability.
    pub capability: String,
    /// `allow`, `deny` or `audit_only_deny`.
    pub decision: String,
    /// The rule that decided.
    pub rule: String,
    /// `ok` (agent status < 500), `agent_error`, or the error code.
    pub outcome: String,
    /// Agent HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Time to the answer's head (or the error), ms.
    pub latency_ms: f64,
    /// W3C trace id from `traceparent`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// SHA-256 of the request body, if `hash_bodies`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// `agentmesh_audit_entries_total`.
    pub entries_total: AtomicU64,
    /// `agentmesh_audit_dropped_total`: entries that could not be queued (each is also counted
    /// in a gap entry) or that the writer failed to write.
    pub dropped_total: AtomicU64,
    /// `agentmesh_audit_checkpoints_total`.
    pub checkpoints_total: AtomicU64,
    /// `agentmesh_audit_gap_entries_total`.
    pub gap_entries_total: AtomicU64,
    /// `agentmesh_audit_refused_calls_total` (`on_full = "refuse_call"`).
    pub refused_calls_total: AtomicU64,
}

/// Entries lost since the last gap entry.
#[derive(Debug, Default, Clone, Copy)]
struct GapAcc {
    lost: u64,
    from_ms: u64,
    to_ms: u64,
}

/// The newest signed checkpoint, as published to gossip for other nodes to witness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestCheckpoint {
    /// What was signed.
    pub checkpoint: Checkpoint,
    /// The node's signature.
    pub sig: Signature,
}

/// State shared by the handle and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    counters: std::sync::Arc<AuditCounters>,
    /// Reserved or queued entries (at most `queue_max`).
    queued: AtomicUsize,
    gap: std::sync::Mutex<GapAcc>,
    latest: std::sync::Mutex<Option<LatestCheckpoint>>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Msg {
    Entry(Box<CallRecord>, Option<tokio::sync::oneshot::Sender<()>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The audit log writer handle.
#[derive(Debug)]
pub struct AuditLog {
    tx: mpsc::SyncSender<Msg>,
    cfg: AuditConfig,
    shared: std::sync::Arc<Shared>,
    /// Counters.
    pub counters: std::sync::Arc<AuditCounters>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// One queue slot reserved for the entry of a call about to run (`on_full = "refuse_call"`).
/// Dropped unused, it frees the slot.
#[derive(Debug)]
pub struct AuditSlot {
    shared: std::sync::Arc<Shared>,
    used: bool,
}

impl Drop for AuditSlot {
    fn drop(&mut self) {
        if !self.used {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl AuditLog {
    /// Opens (or resumes) the log in `cfg.dir` and starts the writer thread. A new log starts
    /// with a genesis entry signed by `key` naming `cert_sha256` (zeros without certificate).
    pub fn open(
        cfg: AuditConfig,
        key: Keypair,
        cert_sha256: [u8; 32],
    ) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(&cfg.dir)?;
        let shared = std::sync::Arc::new(Shared::default());
        let mut w = Writer::resume(cfg.clone(), key, shared.clone())?;
        w.genesis_if_new(cert_sha256)?;
        let (tx, rx) = mpsc::sync_channel(cfg.queue_max + FLUSH_SLOTS_MAX);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))?;
        Ok(AuditLog {
            tx,
            cfg,
            counters: shared.counters.clone(),
            shared,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AuditConfig {
        &self.cfg
    }

    fn try_reserve(&self) -> bool {
        self.shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.cfg.queue_max).then_some(q + 1)
            })
            .is_ok()
    }

    /// Reserves the queue slot for a call's entry before the call runs. With `on_full =
    /// "refuse_call"` and a full queue, `None`: the caller refuses the call (and it is
    /// counted). With `record_gap` always `Some` (a slot if one is free).
    pub fn reserve(&self) -> Option<Option<AuditSlot>> {
        if self.try_reserve() {
            return Some(Some(AuditSlot {
                shared: self.shared.clone(),
                used: false,
            }));
        }
        match self.cfg.on_full {
            OnFull::RecordGap => Some(None),
            OnFull::RefuseCall => {
                self.counters
                    .refused_calls_total
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Appends an entry (using `slot` if the call reserved one). With `fsync = "always"` this
    /// resolves once the entry is durable. If no slot is free the entry is counted into the
    /// next gap entry, never silently dropped.
    pub async fn record_in(&self, slot: Option<AuditSlot>, rec: CallRecord) {
        let reserved = match slot {
            Some(mut s) => {
                s.used = true;
                true
            }
            None => self.try_reserve(),
        };
        if !reserved {
            self.lose(rec.time_ms);
            return;
        }
        let (ack, wait) = if self.cfg.fsync == FsyncPolicy::Always {
            let (t, r) = tokio::sync::oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if self
            .tx
            .try_send(Msg::Entry(Box::new(rec.clone()), ack))
            .is_err()
        {
            // Only if the writer thread died: the slot is never freed by it.
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.lose(rec.time_ms);
            return;
        }
        if let Some(w) = wait {
            let _ = w.await;
        }
    }

    /// Appends an entry without a reserved slot ([`AuditLog::record_in`]).
    pub async fn record(&self, rec: CallRecord) {
        self.record_in(None, rec).await
    }

    fn lose(&self, time_ms: u64) {
        self.counters.dropped_total.fetch_add(1, Ordering::Relaxed);
        let mut g = lock(&self.shared.gap);
        if g.lost == 0 {
            g.from_ms = time_ms;
            g.to_ms = time_ms;
            tracing::warn!("audit queue full; counting lost entries into a gap entry");
        }
        g.lost += 1;
        g.from_ms = g.from_ms.min(time_ms);
        g.to_ms = g.to_ms.max(time_ms);
    }

    /// The newest signed checkpoint written (for gossip).
    pub fn latest_checkpoint(&self) -> Option<LatestCheckpoint> {
        *lock(&self.shared.latest)
    }

    /// Writes pending gaps and a checkpoint and fsyncs (graceful shutdown, tests).
    pub async fn flush(&self) {
        let (t, r) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Msg::Flush(t)).is_ok() {
            let _ = r.await;
        }
    }

    /// The counters as `(metric name, value)` pairs.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("agentmesh_audit_entries_total", l(&c.entries_total)),
            ("agentmesh_audit_dropped_total", l(&c.dropped_total)),
            ("agentmesh_audit_checkpoints_total", l(&c.checkpoints_total)),
            ("agentmesh_audit_gap_entries_total", l(&c.gap_entries_total)),
            (
                "agentmesh_audit_refused_calls_total",
                l(&c.refused_calls_total),
            ),
        ]
    }
}

struct Writer {
    cfg: AuditConfig,
    key: Keypair,
    shared: std::sync::Arc<Shared>,
    last_gap: Instant,
    file: std::fs::File,
    file_bytes: u64,
    file_first_seq: u64,
    next_seq: u64,
    prev: ChainHash,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_fsync: Instant,
    dirty: bool,
}

/// The rotated files and the current one in `dir`, oldest first.
pub fn log_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    rotated.sort();
    let cur = dir.join(CURRENT_FILE);
    if cur.exists() {
        rotated.push(cur);
    }
    Ok(rotated)
}

/// Cuts a torn last line (no trailing newline) and returns the last whole line.
fn repair_tail(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if whole < bytes.len() {
        tracing::warn!(file = %path.display(), cut = bytes.len() - whole, "audit log: cutting a torn last line");
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(whole as u64)?;
        f.sync_all()?;
    }
    let body = &bytes[..whole.saturating_sub(1)];
    if body.is_empty() {
        return Ok(None);
    }
    let start = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    Ok(Some(body[start..].to_vec()))
}

impl Writer {
    fn resume(
        cfg: AuditConfig,
        key: Keypair,
        shared: std::sync::Arc<Shared>,
    ) -> std::io::Result<Writer> {
        let files = log_files(&cfg.dir)?;
        let mut next_seq = 0;
        let mut prev = GENESIS;
        for f in files.iter().rev() {
            if let Some(last) = repair_tail(f)? {
                let (l, e) = parse_line(&last).map_err(|e| {
                    std::io::Error::other(format!("{}: last entry: {e}", f.display()))
                })?;
                next_seq = l.seq + 1;
                prev = e.hash;
                break;
            }
        }
        let path = cfg.dir.join(CURRENT_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let file_bytes = file.metadata()?.len();
        let file_first_seq = if file_bytes == 0 {
            next_seq
        } else {
            first_seq(&path)?.unwrap_or(next_seq)
        };
        Ok(Writer {
            cfg,
            key,
            shared,
            last_gap: Instant::now(),
            file,
            file_bytes,
            file_first_seq,
            next_seq,
            prev,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_fsync: Instant::now(),
            dirty: false,
        })
    }

    /// A brand-new log starts with the node's signed genesis entry.
    fn genesis_if_new(&mut self, cert_sha256: [u8; 32]) -> std::io::Result<()> {
        if self.next_seq != 0 {
            return Ok(());
        }
        let g = Genesis {
            node: self.key.node_id(),
            cert_sha256,
            started_ms: now_unix_ms(),
        };
        let mut line = AuditLine::empty(0, &self.prev, "genesis");
        line.node = Some(g.node.to_string());
        line.cert_sha256 = Some(hex::encode(cert_sha256));
        line.started_ms = Some(g.started_ms);
        line.sig = Some(hex::encode(g.sign(&self.key).0));
        self.append(line)?;
        self.since_checkpoint += 1;
        self.sync()
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let c = self.shared.counters.clone();
        let c = &*c;
        let tick = Duration::from_millis(self.cfg.fsync_interval_ms.min(GAP_ENTRY_INTERVAL_MS));
        loop {
            let msg = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.gap(c, true);
                    let _ = self.checkpoint(c, true);
                    let _ = self.file.sync_all();
                    return;
                }
            };
            let res = match msg {
                Some(Msg::Entry(rec, ack)) => {
                    let r = self.gap(c, false).and_then(|_| self.entry(*rec, c));
                    self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                    r.map(|_| {
                        if let Some(a) = ack {
                            let _ = a.send(());
                        }
                    })
                }
                Some(Msg::Flush(ack)) => self
                    .gap(c, true)
                    .and_then(|_| self.checkpoint(c, true))
                    .and_then(|_| self.file.sync_all())
                    .map(|_| {
                        let _ = ack.send(());
                    }),
                None => self.gap(c, true).and_then(|_| self.timers(c)),
            };
            if let Err(e) = res {
                c.dropped_total.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log write failed");
            }
        }
    }

    /// Writes the entries lost since the last gap entry as one `gap` entry followed by a
    /// signed checkpoint: at most every [`GAP_ENTRY_INTERVAL_MS`] unless `now`.
    fn gap(&mut self, c: &AuditCounters, now: bool) -> std::io::Result<()> {
        if !now && self.last_gap.elapsed() < Duration::from_millis(GAP_ENTRY_INTERVAL_MS) {
            return Ok(());
        }
        let g = std::mem::take(&mut *lock(&self.shared.gap));
        if g.lost == 0 {
            return Ok(());
        }
        self.last_gap = Instant::now();
        let mut line = AuditLine::empty(self.next_seq, &self.prev, "gap");
        line.lost = Some(g.lost);
        line.lost_from_ms = Some(g.from_ms);
        line.lost_to_ms = Some(g.to_ms);
        if let Err(e) = self.append(line) {
            // Put the count back so the next gap entry still accounts for it.
            let mut acc = lock(&self.shared.gap);
            acc.lost += g.lost;
            return Err(e);
        }
        c.gap_entries_total.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            lost = g.lost,
            "audit: wrote a gap entry for entries the queue could not hold"
        );
        self.since_checkpoint += 1;
        self.checkpoint(c, false)
    }

    fn timers(&mut self, c: &AuditCounters) -> std::io::Result<()> {
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed()
                >= Duration::from_millis(self.cfg.checkpoint_interval_ms)
        {
            self.checkpoint(c, true)?;
        }
        if self.dirty
            && self.cfg.fsync == FsyncPolicy::Interval
            && self.last_fsync.elapsed() >= Duration::from_millis(self.cfg.fsync_interval_ms)
        {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.last_fsync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn entry(&mut self, mut rec: CallRecord, c: &AuditCounters) -> std::io::Result<()> {
        for v in [&mut rec.caller_agent, &mut rec.callee_agent]
            .into_iter()
            .flatten()
        {
            *v = crate::net::call_proto::truncate(v, AUDIT_FIELD_LEN_MAX);
        }
        rec.outcome = crate::net::call_proto::truncate(&rec.outcome, AUDIT_FIELD_LEN_MAX);
        let mut line = AuditLine::empty(self.next_seq, &self.prev, "call");
        line.call = Some(rec);
        self.append(line)?;
        c.entries_total.fetch_add(1, Ordering::Relaxed);
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint(c, true)?;
        }
        if self.cfg.fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        self.timers(c)
    }

    /// Writes a signed checkpoint over everything before it (fsynced if `sync` and the
    /// policy fsyncs at all).
    fn checkpoint(&mut self, c: &AuditCounters, sync: bool) -> std::io::Result<()> {
        if self.since_checkpoint == 0 {
            return Ok(());
        }
        let cp = Checkpoint {
            size: self.next_seq,
            head: self.prev,
        };
        let sig = cp.sign(&self.key);
        let mut line = AuditLine::empty(self.next_seq, &self.prev, "checkpoint");
        line.size = Some(cp.size);
        line.head = Some(hex::encode(cp.head));
        line.signer = Some(self.key.node_id().to_string());
        line.sig = Some(hex::encode(sig.0));
        self.append(line)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        c.checkpoints_total.fetch_add(1, Ordering::Relaxed);
        if sync && self.cfg.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        // Published only once durable (or as durable as the policy makes anything).
        *lock(&self.shared.latest) = Some(LatestCheckpoint {
            checkpoint: cp,
            sig,
        });
        Ok(())
    }

    fn append(&mut self, line: AuditLine) -> std::io::Result<()> {
        if self.file_bytes >= self.cfg.rotate_bytes {
            self.rotate()?;
        }
        let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        self.prev = line_hash(&bytes);
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        self.file_bytes += bytes.len() as u64;
        self.next_seq += 1;
        self.dirty = true;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let cur = self.cfg.dir.join(CURRENT_FILE);
        let to = self
            .cfg
            .dir
            .join(format!("audit-{:020}.jsonl", self.file_first_seq));
        std::fs::rename(&cur, &to)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cur)?;
        self.file_bytes = 0;
        self.file_first_seq = self.next_seq;
        tracing::info!(rotated = %to.display(), "audit log rotated");
        Ok(())
    }
}

fn first_seq(path: &Path) -> std::io::Result<Option<u64>> {
    let f = std::fs::File::open(path)?;
    let mut r = std::io::BufReader::new(f);
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(parse_line(&line).ok().map(|(l, _)| l.seq))
}

/// The trace id (32 hex) of a W3C `traceparent`, if well-formed.
pub fn trace_id(traceparent: Option<&str>) -> Option<String> {
    let t = traceparent?;
    let id = t.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Lower-case hex SHA-256 of `body`.
pub fn body_hash(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

/// Unix ms now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::NodeId;

    fn rec(i: u64, cap: &str, decision: &str) -> CallRecord {
        CallRecord {
            time_ms: 1000 + i,
            side: Some(Side::Outbound),
            call_id: format!("{i:032x}"),
            caller_node: "12D3KooWcaller".into(),
            caller_agent: Some("billing".into()),
            callee_node: "12D3KooWcallee".into(),
            callee_agent: Some("crm".into()),
            capability: cap.into(),
            decision: decision.into(),
            rule: "allow[0]".into(),
            outcome: "ok".into(),
            status: Some(200),
            latency_ms: 1.5,
            trace_id: trace_id(Some(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )),
            body_sha256: None,
        }
    }

    async fn write_log(dir: &Path, n: u64, cfg: impl Fn(&mut AuditConfig)) -> Vec<PathBuf> {
        let mut c = AuditConfig::in_dir(dir.to_path_buf());
        c.checkpoint_every = 4;
        cfg(&mut c);
        let log = AuditLog::open(c, Keypair::from_secret([9; 32]), [0; 32]).unwrap();
        for i in 0..n {
            let d = if i % 3 == 0 { "deny" } else { "allow" };
            let cap = if i % 2 == 0 {
                "customer.read"
            } else {
                "orders.list"
            };
            log.record(rec(i, cap, d)).await;
        }
        log.flush().await;
        log_files(dir).unwrap()
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        f(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn verify_names_the_first_changed_deleted_or_reordered_entry() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 10, |_| {}).await;
        let ok = verify_files(&files, &Default::default()).unwrap();
        assert_eq!(ok.failure, None);
        assert_eq!(
            ok.entries,
            1 + 10 + 3,
            "genesis, 10 calls and 3 checkpoints"
        );
        assert_eq!(ok.checkpoints, 3);
        let f = &files[0];
        let pristine = std::fs::read_to_string(f).unwrap();
        // Changed: line 3's decision flipped.
        rewrite(f, |l| l[2] = l[2].replace("\"allow\"", "\"deny\""));
        let r = verify_files(&files, &Default::default())
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(r.line, 3, "{r:?}");
        assert!(r.problem.contains("changed"), "{r:?}");
        // Deleted: line 4 removed.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| {
            l.remove(3);
        });
        let r = verify_files(&files, &Default::default())
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(r.line, 4);
        assert!(r.problem.contains("deleted"), "{r:?}");
        // Reordered: lines 6 and 7 swapped.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| l.swap(5, 6));
        let r = verify_files(&files, &Default::default())
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(r.line, 6);
        assert!(r.problem.contains("out of order"), "{r:?}");
        // Garbage line.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| l[1] = "{not json".into());
        let r = verify_files(&files, &Default::default())
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(r.line, 2);
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_and_resume_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 60, |c| c.rotate_bytes = 4096).await;
        assert!(files.len() >= 3, "expected rotation, got {files:?}");
        let r = verify_files(&files, &Default::default()).unwrap();
        assert_eq!(r.failure, None, "{r:?}");
        // Dropping a middle file is a deletion.
        let mut gap = files.clone();
        gap.remove(1);
        let f = verify_files(&gap, &Default::default())
            .unwrap()
            .failure
            .unwrap();
        assert!(f.problem.contains("deleted"), "{f:?}");
        // A torn last line is cut and the chain continues after a restart.
        let cur = dir.path().join(CURRENT_FILE);
        let mut fh = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        fh.write_all(b"{\"seq\":99,\"pr").unwrap();
        drop(fh);
        let files = write_log(dir.path(), 5, |c| c.rotate_bytes = 4096).await;
        let r = verify_files(&files, &Default::default()).unwrap();
        assert_eq!(r.failure, None, "{r:?}");
    }

    #[tokio::test]
    async fn query_filters() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 12, |_| {}).await;
        let q = |f: fn(&mut AuditQuery)| {
            let mut q = AuditQuery::default();
            f(&mut q);
            query_files(&files, &q).unwrap().len()
        };
        assert_eq!(q(|_| {}), 12);
        assert_eq!(q(|q| q.capability = Some("customer.*".into())), 6);
        assert_eq!(q(|q| q.decision = Some("deny".into())), 4);
        assert_eq!(q(|q| q.agent = Some("crm".into())), 12);
        assert_eq!(q(|q| q.agent = Some("nobody".into())), 0);
        assert_eq!(q(|q| q.node = Some("callee".into())), 12);
        assert_eq!(q(|q| q.since_ms = Some(1010)), 2);
        assert_eq!(q(|q| q.until_ms = Some(1003)), 3);
        assert_eq!(q(|q| q.limit = Some(5)), 5);
    }

    fn opts(node: Option<NodeId>) -> VerifyOpts {
        VerifyOpts {
            node,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_log_verifies_only_as_its_own_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 10, |_| {}).await;
        let me = Keypair::from_secret([9; 32]).node_id();
        let thief = Keypair::from_secret([8; 32]);
        let r = verify_files(&files, &opts(Some(me))).unwrap();
        assert_eq!(r.failure, None, "{r:?}");
        assert_eq!(r.node, Some(me.to_string()));
        assert_eq!(r.calls, 10);
        let f = verify_files(&files, &opts(Some(thief.node_id())))
            .unwrap()
            .failure
            .unwrap();
        assert!(f.problem.contains("not by"), "{f:?}");
        // Rewrite call 5 (line 6), re-chain and re-sign every later checkpoint with another key.
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let mut out = Vec::new();
        let mut prev = GENESIS;
        for (i, l) in text.lines().enumerate() {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if i == 5 {
                v["decision"] = "deny".into();
                v["capability"] = "admin.wipe".into();
            }
            if i >= 5 {
                v["prev"] = hex::encode(prev).into();
            }
            if i >= 5 && v["kind"] == "checkpoint" {
                let cp = Checkpoint {
                    size: v["seq"].as_u64().unwrap(),
                    head: prev,
                };
                v["head"] = hex::encode(prev).into();
                v["signer"] = thief.node_id().to_string().into();
                v["sig"] = hex::encode(cp.sign(&thief).0).into();
            }
            let line = if i >= 5 {
                serde_json::to_string(&v).unwrap()
            } else {
                l.to_string()
            };
            prev = line_hash(line.as_bytes());
            out.push(line);
        }
        std::fs::write(&files[0], out.join("\n") + "\n").unwrap();
        // Unbound, the forgery is internally consistent apart from the signer change.
        let unbound = verify_files(&files, &Default::default()).unwrap();
        let f = unbound.failure.unwrap();
        assert!(f.problem.contains("signed by"), "mixed signers: {f:?}");
        let f = verify_files(&files, &opts(Some(me)))
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(f.line, 10, "the first re-signed checkpoint: {f:?}");
        assert!(f.problem.contains(&thief.node_id().to_string()), "{f:?}");
        assert!(
            f.problem.contains("seq 5..=9"),
            "names the rewritten range: {f:?}"
        );
        // The oldest entries removed: no genesis.
        let dir2 = tempfile::tempdir().unwrap();
        let files = write_log(dir2.path(), 3, |_| {}).await;
        rewrite(&files[0], |l| {
            l.remove(0);
        });
        let f = verify_files(&files, &opts(Some(me)))
            .unwrap()
            .failure
            .unwrap();
        assert!(f.problem.contains("genesis"), "{f:?}");
    }

    #[tokio::test]
    async fn a_full_queue_is_recorded_as_a_gap_or_refuses_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = AuditConfig::in_dir(dir.path().to_path_buf());
        c.queue_max = 2;
        let log = AuditLog::open(c.clone(), Keypair::from_secret([9; 32]), [0; 32]).unwrap();
        // Hold the queue full with reserved slots; every other entry is lost into a gap.
        let held: Vec<_> = (0..2).map(|_| log.reserve().unwrap().unwrap()).collect();
        assert!(log.reserve().unwrap().is_none(), "record_gap never refuses");
        for i in 0..5 {
            log.record(rec(i, "x.y", "allow")).await;
        }
        for (i, s) in held.into_iter().enumerate() {
            log.record_in(Some(s), rec(10 + i as u64, "x.y", "allow"))
                .await;
        }
        log.flush().await;
        let r = verify_files(
            &log_files(dir.path()).unwrap(),
            &opts(Some(Keypair::from_secret([9; 32]).node_id())),
        )
        .unwrap();
        assert_eq!(r.failure, None, "{r:?}");
        assert_eq!((r.calls, r.gap_entries, r.lost_total), (2, 1, 5), "{r:?}");
        assert_eq!((r.gaps[0].from_ms, r.gaps[0].to_ms), (1000, 1004));
        drop(log);
        // refuse_call: the reservation fails while the queue is full, and is counted.
        let dir = tempfile::tempdir().unwrap();
        c.dir = dir.path().to_path_buf();
        c.on_full = OnFull::RefuseCall;
        let log = AuditLog::open(c, Keypair::from_secret([9; 32]), [0; 32]).unwrap();
        let held: Vec<_> = (0..2).map(|_| log.reserve().unwrap().unwrap()).collect();
        assert!(log.reserve().is_none());
        assert_eq!(log.counters.refused_calls_total.load(Ordering::Relaxed), 1);
        drop(held);
        assert!(log.reserve().is_some(), "dropped slots are freed");
    }

    #[tokio::test]
    async fn witnessed_checkpoints_catch_truncation_by_the_key_holder() {
        let dir = tempfile::tempdir().unwrap();
        let key = Keypair::from_secret([9; 32]);
        let files = write_log(dir.path(), 10, |_| {}).await;
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // What another node witnessed: the checkpoint at line 10 (seq 9).
        let (l, _) = parse_line(lines[9].as_bytes()).unwrap();
        assert_eq!(l.kind, "checkpoint");
        let cp = Checkpoint {
            size: l.size.unwrap(),
            head: hex::decode(l.head.unwrap()).unwrap().try_into().unwrap(),
        };
        let w = Witnessed {
            by: "witness-a".into(),
            size: cp.size,
            head: cp.head,
            sig: Some(cp.sign(&key)),
        };
        let mut o = opts(Some(key.node_id()));
        o.witnessed = vec![w.clone()];
        assert_eq!(verify_files(&files, &o).unwrap().witnessed_ok, 1);
        // The key holder cuts everything after line 5 and signs a fresh checkpoint there.
        let keep: Vec<String> = lines[..5].iter().map(|s| s.to_string()).collect();
        let head = line_hash(keep[4].as_bytes());
        let cp = Checkpoint { size: 5, head };
        let mut l = AuditLine::empty(5, &head, "checkpoint");
        l.size = Some(5);
        l.head = Some(hex::encode(head));
        l.signer = Some(key.node_id().to_string());
        l.sig = Some(hex::encode(cp.sign(&key).0));
        let mut out = keep.clone();
        out.push(serde_json::to_string(&l).unwrap());
        std::fs::write(&files[0], out.join("\n") + "\n").unwrap();
        assert_eq!(
            verify_files(&files, &opts(Some(key.node_id())))
                .unwrap()
                .failure,
            None,
            "valid without witnesses"
        );
        let f = verify_files(&files, &o).unwrap().failure.unwrap();
        assert!(
            f.problem.contains("truncated") && f.problem.contains("witness-a"),
            "{f:?}"
        );
        // A witness cannot frame the node: a checkpoint it did not sign is ignored.
        let mut forged = w;
        forged.sig = Some(cp.sign(&Keypair::from_secret([1; 32])));
        o.witnessed = vec![forged];
        let r = verify_files(&files, &o).unwrap();
        assert_eq!(r.failure, None);
        assert_eq!(r.witnessed_ignored.len(), 1);
    }

    #[test]
    fn trace_ids() {
        assert_eq!(
            trace_id(Some(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ))
            .as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id(Some("garbage")), None);
        assert_eq!(trace_id(None), None);
    }
}
