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
//! whole entry. Entries go through a bounded queue to one writer thread; if it is full the
//! entry is dropped and counted (`agentmesh_audit_dropped_total`), never blocking a call.

pub use super::audit_query::{query_files, AuditQuery};
pub use super::audit_verify::{verify_files, VerifyFailure, VerifyReport};
use agentmesh_crypto::audit::{line_hash, ChainEntry, ChainHash};
use agentmesh_crypto::{Checkpoint, Keypair, NodeId, Signature, GENESIS};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Entries waiting for the writer thread.
pub const AUDIT_QUEUE_MAX: usize = 65_536;
/// Longest audit line read back (verify, query), in bytes.
pub const AUDIT_LINE_BYTES_MAX: usize = 16 * 1024;
/// Longest free-text field written (agent names, error messages), in bytes.
pub const AUDIT_FIELD_LEN_MAX: usize = 256;
/// Default rotation size.
pub const ROTATE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default entries between signed checkpoints.
pub const CHECKPOINT_EVERY_DEFAULT: u64 = 1000;
/// Default time between checkpoints when entries trickle in.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 60_000;
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

/// A line of the log as written and read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLine {
    /// Position in the chain.
    pub seq: u64,
    /// Hex hash of the previous line.
    pub prev: String,
    /// `call` or `checkpoint`.
    pub kind: String,
    /// The call (kind `call`).
    #[serde(flatten)]
    pub call: Option<CallRecord>,
    /// Checkpoint size (kind `checkpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Checkpoint head (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Checkpoint signer (node id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Checkpoint signature (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// Why a line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Longer than [`AUDIT_LINE_BYTES_MAX`].
    #[error("line of {0} bytes exceeds {AUDIT_LINE_BYTES_MAX}")]
    TooLong(usize),
    /// Not JSON of the right shape.
    #[error("not an audit entry: {0}")]
    Json(String),
    /// A hash, id or signature field is malformed.
    #[error("bad field {0}")]
    Field(&'static str),
}

fn hex32(s: &str, field: &'static str) -> Result<[u8; 32], LineError> {
    let v = hex::decode(s).map_err(|_| LineError::Field(field))?;
    v.try_into().map_err(|_| LineError::Field(field))
}

/// Parses one line (size checked first) into the entry and its chain view.
pub fn parse_line(line: &[u8]) -> Result<(AuditLine, ChainEntry), LineError> {
    if line.len() > AUDIT_LINE_BYTES_MAX {
        return Err(LineError::TooLong(line.len()));
    }
    let l: AuditLine = serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    let prev = hex32(&l.prev, "prev")?;
    let checkpoint = if l.kind == "checkpoint" {
        let size = l.size.ok_or(LineError::Field("size"))?;
        let head = hex32(l.head.as_deref().unwrap_or(""), "head")?;
        let signer: NodeId = l
            .signer
            .as_deref()
            .unwrap_or("")
            .parse()
            .map_err(|_| LineError::Field("signer"))?;
        let sig =
            hex::decode(l.sig.as_deref().unwrap_or("")).map_err(|_| LineError::Field("sig"))?;
        let sig: [u8; 64] = sig.try_into().map_err(|_| LineError::Field("sig"))?;
        Some((Checkpoint { size, head }, signer, Signature(sig)))
    } else if l.kind == "call" {
        if l.call.is_none() {
            return Err(LineError::Field("call"));
        }
        None
    } else {
        return Err(LineError::Field("kind"));
    };
    let entry = ChainEntry {
        seq: l.seq,
        prev,
        hash: line_hash(line),
        checkpoint,
    };
    Ok((l, entry))
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct AuditCounters {
    /// `agentmesh_audit_entries_total`.
    pub entries_total: AtomicU64,
    /// `agentmesh_audit_dropped_total` (queue full or writer failed).
    pub dropped_total: AtomicU64,
    /// `agentmesh_audit_checkpoints_total`.
    pub checkpoints_total: AtomicU64,
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
    /// Counters.
    pub counters: std::sync::Arc<AuditCounters>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl AuditLog {
    /// Opens (or resumes) the log in `cfg.dir` and starts the writer thread.
    pub fn open(cfg: AuditConfig, key: Keypair) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut w = Writer::resume(cfg.clone(), key)?;
        let (tx, rx) = mpsc::sync_channel(AUDIT_QUEUE_MAX);
        let counters = std::sync::Arc::new(AuditCounters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx, &c))?;
        Ok(AuditLog { tx, cfg, counters })
    }

    /// The configuration.
    pub fn config(&self) -> &AuditConfig {
        &self.cfg
    }

    /// Appends an entry. With `fsync = "always"` this resolves once the entry is durable.
    pub async fn record(&self, rec: CallRecord) {
        let (ack, wait) = if self.cfg.fsync == FsyncPolicy::Always {
            let (t, r) = tokio::sync::oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        if self.tx.try_send(Msg::Entry(Box::new(rec), ack)).is_err() {
            self.counters.dropped_total.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("audit queue full; entry dropped");
            return;
        }
        if let Some(w) = wait {
            let _ = w.await;
        }
    }

    /// Writes a checkpoint and fsyncs (graceful shutdown, tests).
    pub async fn flush(&self) {
        let (t, r) = tokio::sync::oneshot::channel();
        if self.tx.try_send(Msg::Flush(t)).is_ok() {
            let _ = r.await;
        }
    }

    /// The counters as `(metric name, value)` pairs.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            (
                "agentmesh_audit_entries_total",
                c.entries_total.load(Ordering::Relaxed),
            ),
            (
                "agentmesh_audit_dropped_total",
                c.dropped_total.load(Ordering::Relaxed),
            ),
            (
                "agentmesh_audit_checkpoints_total",
                c.checkpoints_total.load(Ordering::Relaxed),
            ),
        ]
    }
}

struct Writer {
    cfg: AuditConfig,
    key: Keypair,
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
    fn resume(cfg: AuditConfig, key: Keypair) -> std::io::Result<Writer> {
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

    fn run(&mut self, rx: mpsc::Receiver<Msg>, c: &AuditCounters) {
        let tick = Duration::from_millis(self.cfg.fsync_interval_ms.min(1000));
        loop {
            let msg = match rx.recv_timeout(tick) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint(c);
                    let _ = self.file.sync_all();
                    return;
                }
            };
            let res = match msg {
                Some(Msg::Entry(rec, ack)) => self.entry(*rec, c).map(|_| {
                    if let Some(a) = ack {
                        let _ = a.send(());
                    }
                }),
                Some(Msg::Flush(ack)) => {
                    self.checkpoint(c)
                        .and_then(|_| self.file.sync_all())
                        .map(|_| {
                            let _ = ack.send(());
                        })
                }
                None => self.timers(c),
            };
            if let Err(e) = res {
                c.dropped_total.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log write failed");
            }
        }
    }

    fn timers(&mut self, c: &AuditCounters) -> std::io::Result<()> {
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed()
                >= Duration::from_millis(self.cfg.checkpoint_interval_ms)
        {
            self.checkpoint(c)?;
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
        let line = AuditLine {
            seq: self.next_seq,
            prev: hex::encode(self.prev),
            kind: "call".into(),
            call: Some(rec),
            size: None,
            head: None,
            signer: None,
            sig: None,
        };
        self.append(line)?;
        c.entries_total.fetch_add(1, Ordering::Relaxed);
        self.since_checkpoint += 1;
        if self.since_checkpoint >= self.cfg.checkpoint_every {
            self.checkpoint(c)?;
        }
        if self.cfg.fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        self.timers(c)
    }

    fn checkpoint(&mut self, c: &AuditCounters) -> std::io::Result<()> {
        if self.since_checkpoint == 0 {
            return Ok(());
        }
        let cp = Checkpoint {
            size: self.next_seq,
            head: self.prev,
        };
        let sig = cp.sign(&self.key);
        let line = AuditLine {
            seq: self.next_seq,
            prev: hex::encode(self.prev),
            kind: "checkpoint".into(),
            call: None,
            size: Some(cp.size),
            head: Some(hex::encode(cp.head)),
            signer: Some(self.key.node_id().to_string()),
            sig: Some(hex::encode(sig.0)),
        };
        self.append(line)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        c.checkpoints_total.fetch_add(1, Ordering::Relaxed);
        if self.cfg.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
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
        let log = AuditLog::open(c, Keypair::from_secret([9; 32])).unwrap();
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
        let ok = verify_files(&files).unwrap();
        assert_eq!(ok.failure, None);
        assert_eq!(ok.entries, 10 + 3, "10 calls and 3 checkpoints");
        assert_eq!(ok.checkpoints, 3);
        let f = &files[0];
        let pristine = std::fs::read_to_string(f).unwrap();
        // Changed: line 3's decision flipped.
        rewrite(f, |l| l[2] = l[2].replace("\"allow\"", "\"deny\""));
        let r = verify_files(&files).unwrap().failure.unwrap();
        assert_eq!(r.line, 3, "{r:?}");
        assert!(r.problem.contains("changed"), "{r:?}");
        // Deleted: line 4 removed.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| {
            l.remove(3);
        });
        let r = verify_files(&files).unwrap().failure.unwrap();
        assert_eq!(r.line, 4);
        assert!(r.problem.contains("deleted"), "{r:?}");
        // Reordered: lines 6 and 7 swapped.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| l.swap(5, 6));
        let r = verify_files(&files).unwrap().failure.unwrap();
        assert_eq!(r.line, 6);
        assert!(r.problem.contains("out of order"), "{r:?}");
        // Garbage line.
        std::fs::write(f, &pristine).unwrap();
        rewrite(f, |l| l[1] = "{not json".into());
        let r = verify_files(&files).unwrap().failure.unwrap();
        assert_eq!(r.line, 2);
    }

    #[tokio::test]
    async fn rotation_keeps_the_chain_and_resume_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_log(dir.path(), 60, |c| c.rotate_bytes = 4096).await;
        assert!(files.len() >= 3, "expected rotation, got {files:?}");
        let r = verify_files(&files).unwrap();
        assert_eq!(r.failure, None, "{r:?}");
        // Dropping a middle file is a deletion.
        let mut gap = files.clone();
        gap.remove(1);
        let f = verify_files(&gap).unwrap().failure.unwrap();
        assert!(f.problem.contains("deleted"), "{f:?}");
        // A torn last line is cut and the chain continues after a restart.
        let cur = dir.path().join(CURRENT_FILE);
        let mut fh = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        fh.write_all(b"{\"seq\":99,\"pr").unwrap();
        drop(fh);
        let files = write_log(dir.path(), 5, |c| c.rotate_bytes = 4096).await;
        let r = verify_files(&files).unwrap();
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
