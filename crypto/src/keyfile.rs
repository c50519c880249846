//! Reading and writing key files. The only file I/O in this crate; it never touches sockets,
//! clocks or global randomness. Keys are stored as 64 hex characters and a newline, mode 0600.

use crate::identity::Keypair;
use std::io::Write;
use std::path::Path;

/// Errors from key file handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex characters.
    #[error("{path}: not a key file (expected 64 hex characters)")]
    Format {
        /// The file at fault.
        path: String,
    },
    /// The file is readable by group or others; refuse to use a leaked key silently.
    #[error("{path}: permissions {mode:o} are too open, expected 0600")]
    Permissions {
        /// The file at fault.
        path: String,
        /// The mode found.
        mode: u32,
    },
}

/// Writes `key` to `path` with mode 0600, refusing to overwrite an existing file.
pub fn save(path: &Path, key: &Keypair) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    writeln!(f, "{}", hex::encode(key.secret_bytes())).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Loads a key from `path`, refusing files readable by group or others.
pub fn load(path: &Path) -> Result<Keypair, KeyFileError> {
    let name = path.display().to_string();
    let io = |source| KeyFileError::Io {
        path: name.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions {
                path: name.clone(),
                mode,
            });
        }
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| KeyFileError::Format { path: name.clone() })?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyFileError::Format { path: name.clone() })?;
    Ok(Keypair::from_secret(secret))
}
