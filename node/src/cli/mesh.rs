//! `agentmesh keygen`, `agentmesh mesh init` and `agentmesh admit`: keys, the mesh root and
//! admission certificates.

use super::*;

pub(crate) fn os_rng() -> rand::rngs::OsRng {
    rand::rngs::OsRng
}

pub(crate) fn keygen(a: KeygenArgs) -> CmdResult {
    let key = Keypair::generate(&mut os_rng());
    agentmesh_crypto::keyfile::save(&a.out, &key)
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let id = key.node_id().to_string();
    if a.json {
        print_json(&serde_json::json!({"node_id": id, "key_file": a.out}));
    } else {
        println!("{id}");
    }
    Ok(())
}

/// `mesh.toml` beside a root key: which mesh the key is the root of.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFile {
    /// The mesh id certificates name.
    pub mesh_id: String,
    /// The root's node id.
    pub root_pub: String,
}

pub(crate) fn mesh_init(a: MeshInitArgs) -> CmdResult {
    let mesh_id = match a.mesh_id {
        Some(m) => m,
        None => format!("mesh-{:08x}", rand::Rng::gen::<u32>(&mut os_rng())),
    };
    if mesh_id.is_empty() || mesh_id.len() > agentmesh_crypto::cert::MESH_ID_LEN_MAX {
        return Err(fail(
            exit::USAGE,
            format!(
                "--mesh-id must be 1 to {} bytes",
                agentmesh_crypto::cert::MESH_ID_LEN_MAX
            ),
        ));
    }
    create_private_dir(&a.dir)?;
    let key_path = a.dir.join("root.key");
    let key = Keypair::generate(&mut os_rng());
    agentmesh_crypto::keyfile::save(&key_path, &key)
        .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let root_pub = key.node_id().to_string();
    let mesh = MeshFile {
        mesh_id: mesh_id.clone(),
        root_pub: root_pub.clone(),
    };
    let text = toml::to_string(&mesh).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    std::fs::write(a.dir.join("mesh.toml"), text)
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", a.dir.display())))?;
    if a.json {
        print_json(&serde_json::json!({
            "mesh_id": mesh_id, "root_pub": root_pub, "root_key": key_path,
        }));
    } else {
        println!("{root_pub}");
        eprintln!("mesh {mesh_id}: root key in {}", key_path.display());
    }
    Ok(())
}

pub(crate) fn create_private_dir(dir: &Path) -> CmdResult {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Parses a TTL like `3600s`, `90m`, `12h` or `30d` into seconds (at most [`CERT_TTL_S_MAX`]).
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s:?}: expected a number and s | m | h | d, e.g. 30d"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and s | m | h | d, e.g. 30d"))?;
    match n.checked_mul(mult) {
        Some(t) if t > 0 && t <= CERT_TTL_S_MAX => Ok(t),
        _ => Err(format!(
            "{s:?}: must be more than 0 and at most {CERT_TTL_S_MAX}s"
        )),
    }
}

pub(crate) fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn admit(a: AdmitArgs) -> CmdResult {
    let root =
        agentmesh_crypto::keyfile::load(&a.root).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
    // Parsing checks the shape only; a certificate is issued only for a usable key.
    let node_id: NodeId = a
        .node_pub
        .parse()
        .ok()
        .filter(|n: &NodeId| n.to_peer_id().is_ok())
        .ok_or_else(|| {
            fail(
                exit::USAGE,
                format!(
                    "--node-pub {:?} is not a node id (expected 12D3KooW…)",
                    a.node_pub
                ),
            )
        })?;
    let ttl_s = parse_ttl(&a.ttl).map_err(|e| fail(exit::USAGE, format!("--ttl {e}")))?;
    let mesh_id = match a.mesh_id {
        Some(m) => m,
        None => read_mesh_file(&a.root)?.mesh_id,
    };
    let now = now_unix_s();
    let cert = AdmissionCert {
        mesh_id: mesh_id.clone(),
        node_id,
        // `--roles ""` admits a node without any role.
        roles: a.roles.iter().filter(|r| !r.is_empty()).cloned().collect(),
        not_before: now.saturating_sub(60),
        not_after: now + ttl_s,
    }
    .sign(&root)
    .map_err(|e| fail(exit::USAGE, e.to_string()))?;
    if let Some(out) = &a.out {
        save_cert_file(out, &cert)
            .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", out.display())))?;
        // Read it back: what we wrote must be what a node will load.
        load_cert_file(out).map_err(|e| fail(exit::FAILURE, e))?;
    } else {
        println!("{}", hex::encode(cert.to_bytes()));
    }
    let summary = serde_json::json!({
        "mesh_id": mesh_id, "node_id": node_id.to_string(), "roles": a.roles,
        "not_after": now + ttl_s, "root_pub": root.node_id().to_string(), "cert_file": a.out,
    });
    if a.json {
        print_json(&summary);
    } else if a.out.is_some() {
        println!(
            "admitted {} to mesh {mesh_id} as [{}] for {}",
            node_id,
            a.roles.join(","),
            a.ttl
        );
    }
    Ok(())
}

/// Reads `mesh.toml` beside a root key (for commands in other modules).
pub(crate) fn read_mesh_file_pub(root_key: &Path) -> Result<MeshFile, Failure> {
    read_mesh_file(root_key)
}

pub(crate) fn read_mesh_file(root_key: &Path) -> Result<MeshFile, Failure> {
    let p = root_key
        .parent()
        .unwrap_or(Path::new("."))
        .join("mesh.toml");
    let text = std::fs::read_to_string(&p).map_err(|e| {
        fail(
            exit::CONFIG,
            format!(
                "{}: {e} (pass --mesh-id or keep mesh.toml beside the root key)",
                p.display()
            ),
        )
    })?;
    toml::from_str(&text).map_err(|e| fail(exit::CONFIG, format!("{}: {e}", p.display())))
}
