//! The node's security state, composed once in the runtime: RBAC ([`crate::security::rbac`]), the audit
//! log ([`crate::security::audit`]), revocations heard from gossip, the root-signed policy distributed by
//! gossip, and the own certificate's lifetime.
//!
//! A root-signed policy travels in every node's record under the extension key
//! [`POLICY_EXT`]: a node that sees a valid policy with a higher version than its own adopts
//! it and republishes it, so every node converges on the newest one.

pub mod admission;
pub mod audit;
pub mod audit_line;
pub mod audit_proto;
pub mod audit_query;
pub mod audit_verify;
pub mod certs;
pub mod evidence;
pub mod rbac;
pub mod vote;
pub mod witness;

use crate::contract::Candidate;
use crate::contract::{CallError, ErrorCode};
use crate::security::audit::{AuditConfig, AuditLog, CallRecord};
use crate::security::rbac::{Decision, Policy, Rbac};
use agentmesh_crypto::{Context, Keypair, NodeId, Signed, SignedCert, SignedRevocation};
use agentmesh_gossip::record::NodeRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Record extension key of the distributed policy.
pub const POLICY_EXT: &str = "policy";
/// Largest signed policy envelope accepted, in bytes.
pub const SIGNED_POLICY_BYTES_MAX: usize = crate::security::rbac::POLICY_BYTES_MAX + 512;
/// Warn when the own certificate has less than this much validity left, in seconds.
pub const CERT_EXPIRY_WARN_S: u64 = 7 * 86_400;
/// Most revoked node ids mirrored from gossip.
pub const REVOKED_MAX: usize = agentmesh_gossip::revocations::REVOCATIONS_MAX;
/// File in the node's state directory holding the revocations it applied, one hex-encoded
/// root-signed revocation per line; re-verified and re-applied at start.
pub const REVOCATIONS_FILE: &str = "revocations.hex";
/// Largest revocations file read, in bytes (checked before reading it).
pub const REVOCATIONS_FILE_BYTES_MAX: usize =
    REVOKED_MAX * (2 * agentmesh_crypto::revocation::REVOCATION_LEN_MAX + 1);

/// Security settings of the runtime (built by `cli/node.rs` from `[rbac]` and `[audit]`).
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// The policy loaded from `rbac.policy_file`.
    pub policy: Option<Policy>,
    /// Audit log settings; None disables the log.
    pub audit: Option<AuditConfig>,
    /// The certificate file, re-read to pick up a renewal without a restart.
    pub cert_file: Option<PathBuf>,
    /// Where applied revocations are kept across restarts ([`REVOCATIONS_FILE`] in the state
    /// directory); None keeps them in memory only.
    pub revocations_file: Option<PathBuf>,
}

/// What a root-signed policy carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    /// Mesh it applies to.
    pub mesh_id: String,
    /// Version (must equal the TOML's `version`, which must be at least 1).
    pub version: u64,
    /// The policy TOML.
    pub toml: String,
}

/// Signs policy TOML with the root key; the TOML is validated first.
pub fn sign_policy(root: &Keypair, mesh_id: &str, toml: &str) -> Result<Vec<u8>, String> {
    let p = Policy::parse(toml, "<policy>").map_err(|e| e.to_string())?;
    if p.version == 0 {
        return Err("a distributed policy needs `version = N` (N >= 1)".into());
    }
    let doc = PolicyDoc {
        mesh_id: mesh_id.into(),
        version: p.version,
        toml: toml.into(),
    };
    Ok(Signed::sign(root, Context::Policy, &doc).to_bytes())
}

/// Decodes and verifies a signed policy (size checked first): root, mesh, and a valid TOML
/// whose version matches the signed one.
pub fn verify_policy(bytes: &[u8], root: &NodeId, mesh_id: &str) -> Result<Policy, String> {
    if bytes.len() > SIGNED_POLICY_BYTES_MAX {
        return Err(format!(
            "signed policy exceeds {SIGNED_POLICY_BYTES_MAX} bytes"
        ));
    }
    let env: Signed<PolicyDoc> = Signed::from_bytes(bytes).map_err(|e| e.to_string())?;
    let doc = env
        .verify_by(root, Context::Policy)
        .map_err(|e| format!("policy signature: {e}"))?;
    if doc.mesh_id != mesh_id {
        return Err(format!("policy is for mesh {:?}", doc.mesh_id));
    }
    let p = Policy::parse(&doc.toml, "<gossiped policy>").map_err(|e| e.to_string())?;
    if p.version != doc.version || p.version == 0 {
        return Err("signed version differs from the policy's".into());
    }
    Ok(p)
}

/// Roles granted by a record's certificate (the only source of roles).
pub fn cert_roles(rec: &NodeRecord) -> Vec<String> {
    rec.cert
        .as_ref()
        .and_then(|c| c.claimed().ok())
        .map(|c| c.roles)
        .unwrap_or_default()
}

/// The priority class a record's certificate grants (`priority:<class>` roles; the highest
/// known one), `None` without one.
pub fn cert_priority(rec: &NodeRecord) -> Option<agentmesh_gossip::record::Priority> {
    let c = rec.cert.as_ref()?.claimed().ok()?;
    certified_priority(&c)
}

/// The priority class a certificate grants, if any.
pub fn certified_priority(
    c: &agentmesh_crypto::AdmissionCert,
) -> Option<agentmesh_gossip::record::Priority> {
    c.priority_classes()
        .filter_map(|n| serde_json::from_value(serde_json::Value::String(n.into())).ok())
        .max()
}

/// The priority a callee grants a caller's record: what its record claims, capped at what
/// its certificate grants, and at `standard` without a certified class. A priority claimed
/// only in `node.toml` never escapes shedding.
pub fn effective_priority(rec: &NodeRecord) -> agentmesh_gossip::record::Priority {
    use agentmesh_gossip::record::Priority;
    let cap = cert_priority(rec)
        .unwrap_or(Priority::Standard)
        .max(Priority::Standard);
    rec.priority.min(cap)
}

/// This node's own priority: `wanted` (from `node.toml`) capped at what its certificate
/// grants (`standard` without a `priority:` role); warns when it caps.
pub fn own_priority(
    cert: Option<&SignedCert>,
    wanted: agentmesh_gossip::record::Priority,
) -> agentmesh_gossip::record::Priority {
    use agentmesh_gossip::record::Priority;
    let certified = cert
        .and_then(|c| c.claimed().ok())
        .and_then(|c| certified_priority(&c));
    let cap = certified
        .unwrap_or(Priority::Standard)
        .max(Priority::Standard);
    if wanted > cap {
        tracing::warn!(
            wanted = crate::contract::names::priority_name(wanted),
            granted = crate::contract::names::priority_name(cap),
            "node.priority is higher than the admission certificate grants (a `priority:<class>` \
             role from `agentmesh admit --roles`); peers shed this node's calls as {}",
            crate::contract::names::priority_name(cap)
        );
        return cap;
    }
    wanted
}

/// The node's security state.
#[derive(Debug)]
pub struct Security {
    /// RBAC.
    pub rbac: Rbac,
    /// The audit log, if configured.
    pub audit: Option<AuditLog>,
    revoked: RwLock<BTreeSet<NodeId>>,
    roles: RwLock<Vec<String>>,
    cert: RwLock<Option<SignedCert>>,
    signed_policy: RwLock<Option<Vec<u8>>>,
    /// Revocations read from [`SecurityConfig::revocations_file`] at start.
    persisted: Vec<SignedRevocation>,
    /// Serialises appends to the revocations file.
    file_lock: std::sync::Mutex<()>,
    /// Root and mesh id (None in open meshes).
    pub mesh: Option<(NodeId, String)>,
    /// Audit checkpoints of other members, as witnessed in their records.
    pub witness: crate::security::witness::WitnessStore,
    /// The config this was built from.
    pub cfg: SecurityConfig,
    /// This node's id as text, printed once: base58 per call was 4.6 % of a callee's CPU.
    node_id_text: String,
}

impl Security {
    /// Builds the state and opens the audit log.
    pub fn new(
        cfg: SecurityConfig,
        key: &Keypair,
        cert: Option<SignedCert>,
        mesh: Option<(NodeId, String)>,
    ) -> std::io::Result<Security> {
        let audit = match &cfg.audit {
            Some(a) => {
                let cert_sha256: [u8; 32] = cert
                    .as_ref()
                    .map(|c| {
                        use sha2::Digest;
                        sha2::Sha256::digest(c.to_bytes()).into()
                    })
                    .unwrap_or([0; 32]);
                Some(AuditLog::open(a.clone(), key.clone(), cert_sha256)?)
            }
            None => None,
        };
        let roles = cert
            .as_ref()
            .and_then(|c| c.claimed().ok())
            .map(|c| c.roles)
            .unwrap_or_default();
        let persisted = match (&cfg.revocations_file, &mesh) {
            (Some(f), Some((root, mesh_id))) => load_revocations(f, root, mesh_id)?,
            _ => Vec::new(),
        };
        let revoked: BTreeSet<NodeId> = persisted
            .iter()
            .filter_map(|r| r.0.decode_unverified().ok().map(|r| r.node_id))
            .collect();
        Ok(Security {
            rbac: Rbac::new(cfg.policy.clone()),
            audit,
            revoked: RwLock::new(revoked),
            persisted,
            file_lock: std::sync::Mutex::new(()),
            roles: RwLock::new(roles),
            cert: RwLock::new(cert),
            signed_policy: RwLock::new(None),
            witness: Default::default(),
            mesh,
            cfg,
            node_id_text: key.node_id().to_string(),
        })
    }

    /// This node's id as written in audit entries (from its certificate, else empty).
    pub fn mesh_node_id(&self) -> String {
        self.node_id_text.clone()
    }

    /// This node's roles (from its current certificate).
    pub fn roles(&self) -> Vec<String> {
        read(&self.roles).clone()
    }

    /// This node's current certificate.
    pub fn cert(&self) -> Option<SignedCert> {
        read(&self.cert).clone()
    }

    /// Installs a renewed certificate (already verified by the caller).
    pub fn set_cert(&self, c: SignedCert) {
        if let Ok(claimed) = c.claimed() {
            *write(&self.roles) = claimed.roles;
        }
        *write(&self.cert) = Some(c);
    }

    /// True if the mesh root revoked `id`.
    pub fn is_revoked(&self, id: &NodeId) -> bool {
        read(&self.revoked).contains(id)
    }

    /// Marks `id` revoked; true if it is new.
    pub fn mark_revoked(&self, id: NodeId) -> bool {
        let mut r = write(&self.revoked);
        r.len() < REVOKED_MAX && r.insert(id)
    }

    /// Revocations loaded from disk at start (verified), to re-apply and re-spread.
    pub fn persisted_revocations(&self) -> &[SignedRevocation] {
        &self.persisted
    }

    /// Appends a verified revocation to the revocations file (fsynced), so a restarted node
    /// still refuses the revoked node before it hears gossip again.
    pub fn persist_revocation(&self, r: &SignedRevocation) -> std::io::Result<()> {
        use std::io::Write;
        let Some(path) = &self.cfg.revocations_file else {
            return Ok(());
        };
        let _g = self.file_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", hex::encode(r.to_bytes()))?;
        f.sync_data()
    }

    /// Revoked ids.
    pub fn revoked(&self) -> Vec<NodeId> {
        read(&self.revoked).iter().copied().collect()
    }

    /// Verifies a revocation against the mesh root.
    pub fn verify_revocation(&self, r: &SignedRevocation) -> Result<NodeId, CallError> {
        let (root, mesh_id) = self.mesh.as_ref().ok_or_else(|| {
            CallError::new(
                ErrorCode::BadRequest,
                "open meshes have no root to revoke with",
            )
        })?;
        r.verify(root, mesh_id)
            .map(|r| r.node_id)
            .map_err(|e| CallError::bad_field("body", format!("revocation: {e}")))
    }

    /// Splits candidates into those this node may call and `(candidate, why not)`.
    pub fn split_forbidden(
        &self,
        cands: Vec<Candidate>,
        capability: &str,
    ) -> (Vec<Candidate>, Vec<(Candidate, String)>) {
        let mine = self.roles();
        let mut ok = Vec::new();
        let mut not = Vec::new();
        for c in cands {
            let d = self.rbac.peek(&mine, &cert_roles(&c.record), capability);
            if d.permitted {
                ok.push(c);
            } else {
                not.push((c, format!("forbidden by policy ({})", d.rule)));
            }
        }
        (ok, not)
    }

    /// The caller's pre-check when every candidate is forbidden: counts it and answers
    /// `forbidden`.
    pub fn forbid_all(&self, forbidden: &[(Candidate, String)], capability: &str) -> CallError {
        let callee = forbidden
            .first()
            .map(|(c, _)| cert_roles(&c.record))
            .unwrap_or_default();
        let d = self.rbac.check(&self.roles(), &callee, capability, false);
        CallError::new(
            ErrorCode::Forbidden,
            format!(
                "policy forbids roles [{}] to call {capability} on any of {} candidate(s) ({})",
                self.roles().join(","),
                forbidden.len(),
                d.rule
            ),
        )
    }

    /// The callee's authoritative check of an inbound call.
    // A refusal is the cold path; boxing it would cost every caller a match on a Box.
    #[allow(clippy::result_large_err)]
    pub fn check_inbound(
        &self,
        from: &NodeId,
        caller_roles: &[String],
        capability: &str,
    ) -> Result<Decision, (Decision, CallError)> {
        if self.is_revoked(from) {
            let d = Decision {
                allowed: false,
                permitted: false,
                rule: "revoked".into(),
            };
            let e = CallError::new(ErrorCode::Forbidden, "caller was revoked by the mesh root");
            return Err((d, e));
        }
        let d = self
            .rbac
            .check(caller_roles, &self.roles(), capability, true);
        if d.permitted {
            Ok(d)
        } else {
            let e = CallError::new(
                ErrorCode::Forbidden,
                format!(
                    "policy forbids roles [{}] to call {capability} here ({})",
                    caller_roles.join(","),
                    d.rule
                ),
            );
            Err((d, e))
        }
    }

    /// Whether an audit log is on (callers skip building entries when it is not).
    pub fn audits(&self) -> bool {
        self.audit.is_some()
    }

    /// Appends `rec` to the audit log, if one is configured.
    pub async fn audit(&self, rec: CallRecord) {
        if let Some(a) = &self.audit {
            a.record(rec).await;
        }
    }

    /// Reserves the audit entry of a call about to run. `Err(audit_unavailable)` when the
    /// log's queue is full and `[audit] on_full = "refuse_call"`: the call must not run.
    pub fn audit_reserve(&self) -> Result<Option<crate::security::audit::AuditSlot>, CallError> {
        match &self.audit {
            None => Ok(None),
            Some(a) => a.reserve().ok_or_else(|| {
                CallError::new(
                    ErrorCode::AuditUnavailable,
                    "the audit log cannot keep up and this node is configured to refuse calls \
                     it cannot record ([audit] on_full = \"refuse_call\")",
                )
            }),
        }
    }

    /// Appends `rec` using the slot [`Security::audit_reserve`] gave.
    pub async fn audit_in(&self, slot: Option<crate::security::audit::AuditSlot>, rec: CallRecord) {
        if let Some(a) = &self.audit {
            a.record_in(slot, rec).await;
        }
    }

    /// Body hash for the audit log, if configured.
    pub fn body_hash(&self, body: &[u8]) -> Option<String> {
        self.audit
            .as_ref()
            .filter(|a| a.config().hash_bodies)
            .map(|_| crate::security::audit::body_hash(body))
    }

    /// The signed policy this node republishes, if any.
    pub fn signed_policy(&self) -> Option<Vec<u8>> {
        read(&self.signed_policy).clone()
    }

    /// Adopts a signed policy if it verifies and is newer than the one in force; returns the
    /// new version, `Ok(None)` if not newer.
    pub fn adopt_policy(&self, bytes: &[u8]) -> Result<Option<u64>, String> {
        let (root, mesh_id) = self
            .mesh
            .as_ref()
            .ok_or_else(|| "open meshes have no root to sign a policy".to_string())?;
        let p = verify_policy(bytes, root, mesh_id)?;
        if p.version <= self.rbac.version() {
            return Ok(None);
        }
        let v = p.version;
        self.rbac.set(p);
        *write(&self.signed_policy) = Some(bytes.to_vec());
        tracing::info!(version = v, "adopted the root-signed policy");
        Ok(Some(v))
    }

    /// Security counters as `(metric name, value)`.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let mut m = self.rbac.metrics();
        if let Some(a) = &self.audit {
            m.extend(a.metrics());
        }
        m.extend(self.witness.metrics());
        m.push(("agentmesh_revoked_nodes", read(&self.revoked).len() as u64));
        m
    }

    /// `GET /v1/security`.
    pub fn report(&self, now_unix_s: u64) -> serde_json::Value {
        let policy = self.rbac.policy();
        let cert = self.cert().and_then(|c| c.claimed().ok());
        serde_json::json!({
            "roles": self.roles(),
            "policy": policy.as_ref().map(|p| serde_json::json!({
                "version": p.version,
                "mode": p.mode,
                "deny_rules": p.deny.len(),
                "allow_rules": p.allow.len(),
                "distributed": self.signed_policy().is_some(),
            })),
            "audit": self.audit.as_ref().map(|a| serde_json::json!({
                "dir": a.config().dir,
                "fsync": a.config().fsync,
            })),
            "revoked": self.revoked().iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "cert_not_after": cert.as_ref().map(|c| c.not_after),
            "cert_expires_in_s": cert.as_ref().map(|c| c.not_after.saturating_sub(now_unix_s)),
            "metrics": self.metrics().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }

    /// Warns if the own certificate expires within [`CERT_EXPIRY_WARN_S`]; returns the
    /// seconds left.
    pub fn check_cert_expiry(&self, now_unix_s: u64) -> Option<u64> {
        let c = self.cert()?.claimed().ok()?;
        let left = c.not_after.saturating_sub(now_unix_s);
        if left < CERT_EXPIRY_WARN_S {
            tracing::warn!(
                expires_in_s = left,
                not_after = c.not_after,
                "this node's admission certificate expires soon; renew it with `agentmesh admit` \
                 (the node picks up the new file without a restart)"
            );
        }
        Some(left)
    }
}

/// Reads and verifies a revocations file. A missing file is empty; a file over
/// [`REVOCATIONS_FILE_BYTES_MAX`] is an error; a line that does not decode or verify (root,
/// mesh) is skipped with a warning, so a damaged line cannot unrevoke the others.
pub fn load_revocations(
    path: &std::path::Path,
    root: &NodeId,
    mesh_id: &str,
) -> std::io::Result<Vec<SignedRevocation>> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if len > REVOCATIONS_FILE_BYTES_MAX as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: exceeds {REVOCATIONS_FILE_BYTES_MAX} bytes",
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path)?;
    let mut out: Vec<SignedRevocation> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let parsed = hex::decode(line.trim())
            .map_err(|e| e.to_string())
            .and_then(|b| SignedRevocation::from_bytes(&b).map_err(|e| e.to_string()))
            .and_then(|r| {
                r.verify(root, mesh_id)
                    .map(|_| r)
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok(r) if out.len() < REVOKED_MAX && !out.contains(&r) => out.push(r),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping a revocation line")
            }
        }
    }
    Ok(out)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Shared handle.
pub type SharedSecurity = Arc<Security>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_policy_round_trip_and_refusals() {
        let root = Keypair::from_secret([1; 32]);
        let other = Keypair::from_secret([2; 32]);
        let text = "version = 2\n[[allow]]\ncaller_roles = [\"*\"]\n";
        let b = sign_policy(&root, "m", text).unwrap();
        assert_eq!(verify_policy(&b, &root.node_id(), "m").unwrap().version, 2);
        assert!(verify_policy(&b, &other.node_id(), "m").is_err());
        assert!(verify_policy(&b, &root.node_id(), "other").is_err());
        let forged = sign_policy(&other, "m", text).unwrap();
        assert!(verify_policy(&forged, &root.node_id(), "m").is_err());
        assert!(sign_policy(&root, "m", "[[allow]]\ncaller_roles = [\"*\"]\n").is_err());
        let mut flipped = b.clone();
        let n = flipped.len();
        flipped[n - 70] ^= 1;
        assert!(verify_policy(&flipped, &root.node_id(), "m").is_err());
        // Adoption: only newer versions.
        let s = Security::new(
            SecurityConfig::default(),
            &root,
            None,
            Some((root.node_id(), "m".into())),
        )
        .unwrap();
        assert_eq!(s.adopt_policy(&b), Ok(Some(2)));
        assert_eq!(s.adopt_policy(&b), Ok(None));
        let v1 = sign_policy(&root, "m", &text.replace("version = 2", "version = 1")).unwrap();
        assert_eq!(s.adopt_policy(&v1), Ok(None));
        assert_eq!(s.rbac.version(), 2);
    }

    #[test]
    fn revocations_survive_a_restart_and_bad_lines_are_skipped() {
        use agentmesh_crypto::Revocation;
        let root = Keypair::from_secret([1; 32]);
        let other = Keypair::from_secret([2; 32]);
        let victim = Keypair::from_secret([3; 32]).node_id();
        let dir = tempfile::tempdir().unwrap();
        let cfg = SecurityConfig {
            revocations_file: Some(dir.path().join(REVOCATIONS_FILE)),
            ..Default::default()
        };
        let mesh = Some((root.node_id(), "m".to_string()));
        let rev = |by: &Keypair, mesh_id: &str| {
            Revocation {
                mesh_id: mesh_id.into(),
                node_id: victim,
                issued_at: 1,
                reason: "test".into(),
            }
            .sign(by)
        };
        let s = Security::new(cfg.clone(), &root, None, mesh.clone()).unwrap();
        assert!(!s.is_revoked(&victim));
        s.persist_revocation(&rev(&root, "m")).unwrap();
        // Forged, foreign-mesh and garbage lines must not count.
        s.persist_revocation(&rev(&other, "m")).unwrap();
        s.persist_revocation(&rev(&root, "other")).unwrap();
        let f = cfg.revocations_file.clone().unwrap();
        let mut text = std::fs::read_to_string(&f).unwrap();
        text.push_str("zz-not-hex\n");
        std::fs::write(&f, text).unwrap();
        let again = Security::new(cfg.clone(), &root, None, mesh.clone()).unwrap();
        assert!(again.is_revoked(&victim));
        assert_eq!(again.persisted_revocations(), &[rev(&root, "m")]);
        // Only forged lines: nothing is revoked.
        std::fs::write(&f, hex::encode(rev(&other, "m").to_bytes())).unwrap();
        let forged = Security::new(cfg, &root, None, mesh).unwrap();
        assert!(!forged.is_revoked(&victim));
        assert!(forged.persisted_revocations().is_empty());
    }
}
