//! Verifying audit log files offline: the hash chain across rotated files and the signed
//! checkpoints.

use super::audit::*;
use agentmesh_crypto::audit::{ChainBreak, ChainChecker};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

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
/// entry (file and line).
pub fn verify_files(files: &[PathBuf]) -> std::io::Result<VerifyReport> {
    let mut checker = ChainChecker::new();
    let mut places: Vec<(usize, usize)> = Vec::new();
    for (fi, f) in files.iter().enumerate() {
        for (li, line) in read_lines(f)?.into_iter().enumerate() {
            match parse_line(&line) {
                Ok((_, e)) => {
                    checker.push(e);
                    places.push((fi, li + 1));
                }
                Err(e) => {
                    return Ok(VerifyReport {
                        entries: places.len(),
                        checkpoints: 0,
                        starts_at: 0,
                        head: None,
                        failure: Some(VerifyFailure {
                            file: f.display().to_string(),
                            line: li + 1,
                            problem: format!("entry was changed: {e}"),
                        }),
                    })
                }
            }
        }
    }
    Ok(match checker.finish() {
        Ok(r) => VerifyReport {
            entries: r.entries,
            checkpoints: r.checkpoints,
            starts_at: r.starts_at,
            head: Some(hex::encode(r.head)),
            failure: None,
        },
        Err(b) => {
            let (fi, line) = places[b.index().min(places.len() - 1)];
            VerifyReport {
                entries: places.len(),
                checkpoints: 0,
                starts_at: 0,
                head: None,
                failure: Some(VerifyFailure {
                    file: files[fi].display().to_string(),
                    line,
                    problem: describe(&b),
                }),
            }
        }
    })
}

fn describe(b: &ChainBreak) -> String {
    b.to_string()
}
