//! Verifying audit log files offline: the hash chain across rotated files and the signed
//! checkpoints.

use super::audit::*;
use agentmesh_crypto::audit::{ChainBreak, ChainChecker};
use agentmesh_crypto::NodeId;
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Most gap entries listed one by one in a report (all are counted).
pub const GAPS_LISTED_MAX: usize = 100;
/// Most witnessed checkpoints one verification checks.
pub const WITNESSED_MAX: usize = 1024;

/// Where verification stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyFailure {
    /// File of the first bad entry.
    pub file: String,
    /// Its line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// A gap entry: calls the writer could not record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GapReport {
    /// Seq of the gap entry.
    pub seq: u64,
    /// Entries lost.
    pub lost: u64,
    /// Start time of the first lost call, unix ms.
    pub from_ms: u64,
    /// Start time of the last lost call, unix ms.
    pub to_ms: u64,
}

/// A checkpoint of the node that another node saw in its gossip record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// Who saw it (a node id or API address, for messages).
    pub by: String,
    /// Entries it covers.
    pub size: u64,
    /// Hash of entry `size - 1`.
    pub head: [u8; 32],
    /// The node's signature over `(size, head)`.
    pub sig: Option<agentmesh_crypto::Signature>,
}

/// What a verification checks beyond the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOpts {
    /// The node the log must belong to (None: only the chain's internal consistency).
    pub node: Option<NodeId>,
    /// Checkpoints of that node witnessed by other nodes.
    pub witnessed: Vec<Witnessed>,
    /// Accept entries after the last checkpoint (a node that crashed or is still running),
    /// reporting them in [`VerifyReport::open_tail`] as not vouched for.
    pub allow_open_tail: bool,
}

/// The outcome of verifying files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Entries read.
    pub entries: usize,
    /// Signed checkpoints verified.
    pub checkpoints: usize,
    /// Seq of the first entry.
    pub starts_at: u64,
    /// Head hash (hex) if everything holds.
    pub head: Option<String>,
    /// The node the log was verified as belonging to (None: no identity was checked).
    pub node: Option<String>,
    /// Call entries.
    pub calls: usize,
    /// Gap entries.
    pub gap_entries: usize,
    /// Entries lost in all gaps.
    pub lost_total: u64,
    /// The first [`GAPS_LISTED_MAX`] gaps.
    pub gaps: Vec<GapReport>,
    /// Witnessed checkpoints the log matched.
    pub witnessed_ok: usize,
    /// Witnessed checkpoints ignored (signature not by the node), with why.
    pub witnessed_ignored: Vec<String>,
    /// `(first seq, last seq)` of entries after the last checkpoint, accepted only with
    /// [`VerifyOpts::allow_open_tail`]: nothing vouches for them.
    pub open_tail: Option<(u64, u64)>,
    /// The first problem, if any.
    pub failure: Option<VerifyFailure>,
}

/// Reads lines of a file (each at most [`AUDIT_LINE_BYTES_MAX`]), without the newline.
pub(crate) fn read_lines(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let f = std::fs::File::open(path)?;
    let mut r = std::io::BufReader::new(f);
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut r)
            .take(AUDIT_LINE_BYTES_MAX as u64 + 2)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(out);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > AUDIT_LINE_BYTES_MAX {
            // Over-long: keep a marker that fails to parse, and skip the rest of the line.
            let mut rest = Vec::new();
            r.read_until(b'\n', &mut rest)?;
        }
        out.push(line);
    }
}

use std::io::Read;

/// Verifies `files` in order as one chain and names the first changed, deleted or reordered
/// entry (file and line). With `node`, the log must be that node's: a genesis signed by it at
/// seq 0, every checkpoint signed by it, a checkpoint as the last entry. Each `witnessed`
/// checkpoint (signed by `node`, as other nodes saw it in gossip) must match the log: an entry
/// at seq `size - 1` whose hash is `head`; a rewrite or truncation of what was witnessed fails
/// even if whoever did it holds the node's key.
pub fn verify_files(files: &[PathBuf], opts: &VerifyOpts) -> std::io::Result<VerifyReport> {
    let node = opts.node.as_ref();
    let witnessed = &opts.witnessed[..];
    let mut checker = ChainChecker::new();
    let mut places: Vec<(usize, usize)> = Vec::new();
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut r = VerifyReport {
        entries: 0,
        checkpoints: 0,
        starts_at: 0,
        head: None,
        node: None,
        calls: 0,
        gap_entries: 0,
        lost_total: 0,
        gaps: Vec::new(),
        witnessed_ok: 0,
        witnessed_ignored: Vec::new(),
        open_tail: None,
        failure: None,
    };
    for (fi, f) in files.iter().enumerate() {
        for (li, line) in read_lines(f)?.into_iter().enumerate() {
            match parse_line(&line) {
                Ok((l, e)) => {
                    if l.kind == "gap" {
                        let lost = l.lost.unwrap_or(0);
                        r.gap_entries += 1;
                        r.lost_total = r.lost_total.saturating_add(lost);
                        if r.gaps.len() < GAPS_LISTED_MAX {
                            r.gaps.push(GapReport {
                                seq: l.seq,
                                lost,
                                from_ms: l.lost_from_ms.unwrap_or(0),
                                to_ms: l.lost_to_ms.unwrap_or(0),
                            });
                        }
                    } else if l.kind == "call" {
                        r.calls += 1;
                    }
                    hashes.push(e.hash);
                    checker.push(e);
                    places.push((fi, li + 1));
                }
                Err(e) => {
                    r.entries = places.len();
                    r.failure = Some(VerifyFailure {
                        file: f.display().to_string(),
                        line: li + 1,
                        problem: format!("entry was changed: {e}"),
                    });
                    return Ok(r);
                }
            }
        }
    }
    r.entries = places.len();
    let checked = match node {
        Some(n) => checker.finish_for(n),
        None => checker.finish(),
    };
    let report = match checked {
        Ok(c) => c,
        Err(ChainBreak::Uncovered {
            from_seq, to_seq, ..
        }) if opts.allow_open_tail => {
            r.open_tail = Some((from_seq, to_seq));
            let mut c = checker.finish().map_err(std::io::Error::other)?;
            c.node = node.copied();
            c
        }
        Err(b) => {
            let (fi, line) = places
                .get(b.index().min(places.len().saturating_sub(1)))
                .copied()
                .unwrap_or((0, 0));
            r.failure = Some(VerifyFailure {
                file: files
                    .get(fi)
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
                line,
                problem: describe(&b),
            });
            return Ok(r);
        }
    };
    r.checkpoints = report.checkpoints;
    r.starts_at = report.starts_at;
    r.node = report.node.map(|n| n.to_string());
    // Witnessed checkpoints: only those the node signed count (a witness cannot frame it).
    let last_seq = report.starts_at + hashes.len() as u64;
    for w in witnessed.iter().take(WITNESSED_MAX) {
        let signed = match (node, &w.sig) {
            (Some(n), Some(sig)) => agentmesh_crypto::Checkpoint {
                size: w.size,
                head: w.head,
            }
            .verify(n, sig)
            .is_ok(),
            _ => false,
        };
        if !signed || w.size == 0 {
            r.witnessed_ignored.push(format!(
                "{}: checkpoint of size {} is not signed by the node",
                w.by, w.size
            ));
            continue;
        }
        let seq = w.size - 1;
        let place = |i: usize| {
            let (fi, line) = places[i.min(places.len() - 1)];
            (files[fi].display().to_string(), line)
        };
        let problem = if seq >= last_seq || seq < report.starts_at {
            Some((
                places.len().saturating_sub(1),
                format!(
                    "the log was truncated: it ends at seq {}, but {} witnessed a checkpoint signed \
                     by the node covering {} entries (through seq {seq})",
                    last_seq.saturating_sub(1),
                    w.by,
                    w.size
                ),
            ))
        } else {
            let i = (seq - report.starts_at) as usize;
            (hashes[i] != w.head).then(|| {
                (
                    i,
                    format!(
                        "entry seq {seq} differs from the one {} witnessed in a checkpoint signed \
                         by the node (size {}): entries up to seq {seq} were rewritten",
                        w.by, w.size
                    ),
                )
            })
        };
        if let Some((i, problem)) = problem {
            let (file, line) = place(i);
            r.failure = Some(VerifyFailure {
                file,
                line,
                problem,
            });
            return Ok(r);
        }
        r.witnessed_ok += 1;
    }
    r.head = Some(hex::encode(report.head));
    Ok(r)
}

fn describe(b: &ChainBreak) -> String {
    b.to_string()
}
