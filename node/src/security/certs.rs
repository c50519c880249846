//! Admission certificate files: one line of hex, size checked before decoding.

use agentmesh_crypto::SignedCert;
use std::path::Path;

/// Largest certificate file read, in bytes (hex of at most `CERT_LEN_MAX` bytes, plus slack).
pub const CERT_FILE_BYTES_MAX: usize = 2 * agentmesh_crypto::cert::CERT_LEN_MAX + 64;

/// Writes an admission certificate as one line of hex (its postcard encoding), mode 0644.
/// Refuses to overwrite an existing file.
pub fn save_cert_file(path: &Path, cert: &SignedCert) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    writeln!(f, "{}", hex::encode(cert.to_bytes()))?;
    f.sync_all()
}

/// Reads a certificate written by [`save_cert_file`]. Its size is checked before decoding;
/// nothing is verified here (peers verify it against the root).
pub fn load_cert_file(path: &Path) -> Result<SignedCert, String> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{name}: {e}"))?;
    if meta.len() > CERT_FILE_BYTES_MAX as u64 {
        return Err(format!(
            "{name}: {} bytes, limit is {CERT_FILE_BYTES_MAX}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let bytes = hex::decode(text.trim())
        .map_err(|_| format!("{name}: not a certificate file (expected one line of hex)"))?;
    SignedCert::from_bytes(&bytes).map_err(|e| format!("{name}: {e}"))
}
