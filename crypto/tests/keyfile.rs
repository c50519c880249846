//! Key files: 0600 on save, refused when readable by others, never overwritten.

#![cfg(unix)]

use agentmesh_crypto::keyfile::{load, save, KeyFileError};
use agentmesh_crypto::Keypair;
use std::os::unix::fs::PermissionsExt;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn save_creates_a_0600_file_that_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let kp = Keypair::from_secret([5; 32]);
    save(&path, &kp).unwrap();
    assert_eq!(mode(&path), 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{}\n", hex::encode([5u8; 32])));
    let back = load(&path).unwrap();
    assert_eq!(back.secret_bytes(), kp.secret_bytes());
    assert_eq!(back.node_id(), kp.node_id());
}

#[test]
fn load_refuses_files_readable_by_group_or_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    save(&path, &Keypair::from_secret([6; 32])).unwrap();
    for too_open in [0o644, 0o640, 0o604, 0o660, 0o666] {
        chmod(&path, too_open);
        match load(&path) {
            Err(KeyFileError::Permissions { mode, .. }) => assert_eq!(mode, too_open),
            other => panic!("mode {too_open:o}: expected Permissions, got {other:?}"),
        }
    }
    // Stricter than 0600 is fine.
    chmod(&path, 0o400);
    assert!(load(&path).is_ok());
}

#[test]
fn save_refuses_to_overwrite_and_leaves_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let first = Keypair::from_secret([7; 32]);
    save(&path, &first).unwrap();
    match save(&path, &Keypair::from_secret([8; 32])) {
        Err(KeyFileError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(load(&path).unwrap().node_id(), first.node_id());
}

#[test]
fn load_refuses_malformed_contents() {
    let dir = tempfile::tempdir().unwrap();
    for (name, contents) in [
        ("short", "abcd\n".to_string()),
        ("not-hex", format!("{}\n", "zz".repeat(32))),
        ("too-long", format!("{}\n", "00".repeat(33))),
        ("empty", String::new()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        chmod(&path, 0o600);
        assert!(
            matches!(load(&path), Err(KeyFileError::Format { .. })),
            "{name}"
        );
    }
}

#[test]
fn load_reports_a_missing_file_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.key");
    let err = load(&path).unwrap_err();
    assert!(
        matches!(&err, KeyFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(err.to_string().contains("absent.key"));
}
