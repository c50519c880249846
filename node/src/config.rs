//! `node.toml`: the node's configuration file, parsed with `deny_unknown_fields` and validated
//! on load. Every error names the file, the field and what would be valid. Relative paths in the
//! file are resolved against the directory that holds it.
//!
//! ```toml
//! [node]
//! key_file = "node.key"            # ed25519 key, mode 0600 (agentmesh keygen)
//! cert_file = "node.cert"          # admission certificate (agentmesh admit); enforced meshes
//! state_dir = "state"              # pid file and node.json are written here
//! listen = ["/ip4/127.0.0.1/udp/4001/quic-v1"]
//! api_listen = "127.0.0.1:7600"
//! seeds = ["/ip4/127.0.0.1/udp/4002/quic-v1"]
//! mdns = false
//! gossip_profile = "lan"           # lan | wan
//! priority = "standard"            # experimental | standard | critical
//! drain_timeout_ms = 5000
//!
//! [api]
//! insecure_bind = false            # must be true to serve the API on a non-loopback address
//! token = "…"                      # required then; checked as `Authorization: Bearer …`
//!
//! [mesh]
//! admission = "enforced"           # enforced | open
//! root_pub = "12D3KooW…"           # the mesh root's node id (agentmesh mesh init)
//! mesh_id = "prod"
//!
//! [agent]                          # optional static registration
//! name = "inventory-bot"
//! handler = "http://127.0.0.1:8101"
//! max_concurrency = 64
//! [[agent.capabilities]]
//! name = "inventory.query"
//! proficiency = "expert"
//! cost = 0.5
//! attributes = { warehouses = ["A", "B"] }
//! ```

use crate::contract::AgentRegistration;
use crate::runtime::{AdmissionMode, GossipProfile, RuntimeConfig};
use agentmesh_crypto::{NodeId, SignedCert};
use agentmesh_gossip::record::{Priority, ATTRIBUTES_MAX, CAPABILITIES_MAX};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest config file read, in bytes.
pub const CONFIG_BYTES_MAX: usize = 256 * 1024;
/// Longest agent name, in bytes.
pub const AGENT_NAME_LEN_MAX: usize = 128;
/// Longest handler URL, in bytes.
pub const HANDLER_URL_LEN_MAX: usize = 2048;
/// Longest capability name, in bytes.
pub const CAPABILITY_NAME_LEN_MAX: usize = 128;
/// Longest attribute key or value, in bytes.
pub const ATTR_LEN_MAX: usize = 256;
/// Most values in one list attribute.
pub const ATTR_VALUES_MAX: usize = 64;
/// Largest `max_concurrency` accepted.
pub const MAX_CONCURRENCY_MAX: u32 = 65_536;
/// Most seeds and most listen addresses.
pub const ADDRS_MAX: usize = 64;
/// Longest API token, in bytes.
pub const API_TOKEN_LEN_MAX: usize = 512;
/// Shortest API token accepted, in bytes: a guessable token is no protection.
pub const API_TOKEN_LEN_MIN: usize = 16;
/// Longest drain timeout accepted, in ms.
pub const DRAIN_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
/// Largest certificate file read, in bytes (hex of at most `CERT_LEN_MAX` bytes, plus slack).
pub const CERT_FILE_BYTES_MAX: usize = 2 * agentmesh_crypto::cert::CERT_LEN_MAX + 64;

/// The default address of the local API.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:7600";

/// A configuration error: which file, which field, and what would be valid.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The file at fault.
    pub file: String,
    /// The dotted field at fault (`node.gossip_profile`), or `-` for the whole file.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// An invalid field of an agent registration, shared by `node.toml` and `PUT /v1/agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault, e.g. `capabilities[2].name`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Gossip timing profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    /// LAN or one data centre.
    #[default]
    Lan,
    /// Across regions.
    Wan,
}

/// How peers are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionName {
    /// Peers need a certificate signed by the mesh root.
    #[default]
    Enforced,
    /// Anyone may join (demos only; the node warns loudly).
    Open,
}

/// The whole `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[api]`.
    #[serde(default)]
    pub api: ApiSection,
    /// `[mesh]`.
    pub mesh: MeshSection,
    /// `[agent]`, optional static registration.
    pub agent: Option<AgentRegistration>,
    /// `[defaults]`: routing and resilience settings for every capability
    /// (see [`crate::mesh_config`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<toml::Table>,
    /// `[a2a]`: the agent is an A2A agent, learnt from its Agent Card
    /// (see [`crate::a2a_bridge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<crate::a2a_bridge::A2aSection>,
    /// `[capability."name"]`: per-capability overrides of `[defaults]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub capability: std::collections::BTreeMap<String, toml::Table>,
    /// `[workflows]`: workflow files served by `POST /v1/workflows/{name}/run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<WorkflowsSection>,
    /// `[telemetry]`: OTLP trace export (see [`crate::telemetry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::TelemetrySection>,
    /// `[rbac]`: the RBAC policy file (see [`crate::rbac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacSection>,
    /// `[audit]`: the audit log (see [`crate::audit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditConfig>,
}

/// `[workflows]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsSection {
    /// Workflow files, or directories whose `*.toml` files are workflows (relative to the
    /// config file's directory).
    pub paths: Vec<PathBuf>,
}

/// `[rbac]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacSection {
    /// The policy TOML (relative to the config file).
    pub policy_file: PathBuf,
}

/// `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node key file (mode 0600).
    pub key_file: PathBuf,
    /// The admission certificate file; required when admission is enforced.
    pub cert_file: Option<PathBuf>,
    /// Where the pid file and `node.json` go.
    pub state_dir: PathBuf,
    /// QUIC listen multiaddrs (gossip and admission).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// UDP port of the call plane on the first listen address's IP; 0 (the default) takes
    /// any free port. Set it when a firewall must allow calls in.
    #[serde(default)]
    pub call_port: u16,
    /// The local API's socket address.
    #[serde(default = "default_api_listen")]
    pub api_listen: String,
    /// Seed multiaddrs to join through.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Discover peers with mDNS.
    #[serde(default)]
    pub mdns: bool,
    /// Gossip timing profile.
    #[serde(default)]
    pub gossip_profile: ProfileName,
    /// Traffic priority.
    #[serde(default)]
    pub priority: Priority,
    /// How long a graceful shutdown waits for in-flight calls, in ms.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

/// `[api]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Allow a non-loopback `api_listen`; then `token` is required.
    #[serde(default)]
    pub insecure_bind: bool,
    /// Bearer token every API request must carry (except `/healthz` and `/readyz`).
    pub token: Option<String>,
}

/// `[mesh]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// `enforced` or `open`.
    #[serde(default)]
    pub admission: AdmissionName,
    /// The mesh root's node id; required when enforced.
    pub root_pub: Option<String>,
    /// The mesh id; required when enforced.
    pub mesh_id: Option<String>,
}

fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/udp/0/quic-v1".to_string()]
}
fn default_api_listen() -> String {
    API_LISTEN_DEFAULT.to_string()
}
fn default_drain_timeout_ms() -> u64 {
    5000
}

/// A loaded, validated configuration with paths resolved and files read.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// The parsed file, paths resolved against the file's directory.
    pub file: FileConfig,
    /// The API socket address.
    pub api_listen: SocketAddr,
    /// Root and mesh id when admission is enforced.
    pub enforced: Option<(NodeId, String)>,
    /// The validated routing and resilience settings.
    pub mesh: crate::mesh_config::MeshConfig,
}

impl NodeConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file_name = path.display().to_string();
        let whole = |message: String| ConfigError {
            file: file_name.clone(),
            field: "-".into(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(e.to_string()))?;
        if meta.len() > CONFIG_BYTES_MAX as u64 {
            return Err(whole(format!(
                "file is {} bytes, limit is {CONFIG_BYTES_MAX}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &file_name, base).map(|mut c| {
            c.path = path.to_path_buf();
            c
        })
    }

    /// Parses and validates `text`; `file_name` is used in errors, `base` resolves paths.
    pub fn parse(text: &str, file_name: &str, base: &Path) -> Result<NodeConfig, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file_name.to_string(),
            field: toml_field(text, &e),
            message: e.message().to_string(),
        })?;
        let err = |field: &str, message: String| ConfigError {
            file: file_name.to_string(),
            field: field.to_string(),
            message,
        };
        resolve(&mut file.node.key_file, base);
        resolve(&mut file.node.state_dir, base);
        if let Some(w) = &mut file.workflows {
            w.paths.iter_mut().for_each(|p| resolve(p, base));
        }
        if let Some(c) = &mut file.node.cert_file {
            resolve(c, base);
        }
        if let Some(r) = &mut file.rbac {
            resolve(&mut r.policy_file, base);
        }
        if let Some(a) = &mut file.audit {
            resolve(&mut a.dir, base);
            a.validate().map_err(|(f, m)| err(&f, m))?;
        }
        let api_listen: SocketAddr = file.node.api_listen.parse().map_err(|_| {
            err(
                "node.api_listen",
                format!(
                    "{:?} is not a socket address (expected e.g. \"127.0.0.1:7600\")",
                    file.node.api_listen
                ),
            )
        })?;
        check_api_bind(&api_listen, &file.api).map_err(|(f, m)| err(f, m))?;
        check_addrs("node.listen", &file.node.listen).map_err(|(f, m)| err(&f, m))?;
        check_addrs("node.seeds", &file.node.seeds).map_err(|(f, m)| err(&f, m))?;
        if file.node.listen.is_empty() {
            return Err(err(
                "node.listen",
                "needs at least one multiaddr, e.g. \"/ip4/0.0.0.0/udp/4001/quic-v1\"".into(),
            ));
        }
        if file.node.drain_timeout_ms > DRAIN_TIMEOUT_MS_MAX {
            return Err(err(
                "node.drain_timeout_ms",
                format!("must be at most {DRAIN_TIMEOUT_MS_MAX}"),
            ));
        }
        let enforced =
            check_mesh(&file.mesh, file.node.cert_file.is_some()).map_err(|(f, m)| err(f, m))?;
        if let Some(agent) = &file.agent {
            validate_agent(agent).map_err(|e| err(&format!("agent.{}", e.field), e.message))?;
        }
        if let Some(t) = &file.telemetry {
            t.validate().map_err(|(f, m)| err(f, m))?;
        }
        let mesh =
            crate::mesh_config::MeshConfig::from_tables(file.defaults.as_ref(), &file.capability)
                .map_err(|e| err(&e.key, e.message))?;
        Ok(NodeConfig {
            path: PathBuf::from(file_name),
            file,
            api_listen,
            enforced,
            mesh,
        })
    }

    /// Applies `agentmesh node --api-listen/--api-insecure-bind` over the file's values and
    /// checks the result again: a non-loopback API still needs the flag and `api.token`.
    pub fn override_api(
        &mut self,
        listen: Option<SocketAddr>,
        insecure_bind: bool,
    ) -> Result<(), ConfigError> {
        if let Some(l) = listen {
            self.api_listen = l;
            self.file.node.api_listen = l.to_string();
        }
        self.file.api.insecure_bind |= insecure_bind;
        check_api_bind(&self.api_listen, &self.file.api).map_err(|(field, message)| ConfigError {
            file: self.path.display().to_string(),
            field: field.to_string(),
            message: message.replace("api.insecure_bind = true", "--api-insecure-bind"),
        })
    }

    /// Reads the key and certificate files and builds the runtime's configuration.
    /// `extra_seeds` (from `--join`) are added to the file's seeds.
    pub fn to_runtime(&self, extra_seeds: &[String]) -> Result<RuntimeConfig, ConfigError> {
        let file_name = self.path.display().to_string();
        let err = |field: &str, message: String| ConfigError {
            file: file_name.clone(),
            field: field.to_string(),
            message,
        };
        check_addrs("--join", extra_seeds).map_err(|(f, m)| err(&f, m))?;
        let n = &self.file.node;
        let key = agentmesh_crypto::keyfile::load(&n.key_file)
            .map_err(|e| err("node.key_file", e.to_string()))?;
        let cert = match &n.cert_file {
            Some(p) => Some(load_cert_file(p).map_err(|e| err("node.cert_file", e))?),
            None => None,
        };
        if let (Some(c), Some((_, mesh_id))) = (&cert, &self.enforced) {
            let claimed = c
                .claimed()
                .map_err(|e| err("node.cert_file", e.to_string()))?;
            if claimed.node_id != key.node_id() {
                return Err(err(
                    "node.cert_file",
                    format!(
                        "certificate is for node {}, but node.key_file is node {}",
                        claimed.node_id,
                        key.node_id()
                    ),
                ));
            }
            if &claimed.mesh_id != mesh_id {
                return Err(err(
                    "node.cert_file",
                    format!(
                        "certificate is for mesh {:?}, but mesh.mesh_id is {mesh_id:?}",
                        claimed.mesh_id
                    ),
                ));
            }
        }
        let admission = match &self.enforced {
            Some((root, mesh_id)) => AdmissionMode::Enforced {
                root: *root,
                mesh_id: mesh_id.clone(),
            },
            None => AdmissionMode::Open,
        };
        let mut seeds = n.seeds.clone();
        seeds.extend(extra_seeds.iter().cloned());
        Ok(RuntimeConfig {
            key,
            cert,
            admission,
            listen: n.listen.clone(),
            call_port: n.call_port,
            seeds,
            mdns: n.mdns,
            profile: match n.gossip_profile {
                ProfileName::Lan => GossipProfile::Lan,
                ProfileName::Wan => GossipProfile::Wan,
            },
            agent: self.file.agent.clone(),
            priority: n.priority,
            mesh: self.mesh.clone(),
            security: crate::security::SecurityConfig {
                policy: match &self.file.rbac {
                    Some(r) => Some(
                        crate::rbac::Policy::load(&r.policy_file)
                            .map_err(|e| err("rbac.policy_file", e.to_string()))?,
                    ),
                    None => None,
                },
                audit: self.file.audit.clone(),
                cert_file: n.cert_file.clone(),
                revocations_file: Some(n.state_dir.join(crate::security::REVOCATIONS_FILE)),
            },
        })
    }
}

/// Best effort: the dotted path of the key a TOML error points at (`node.gossip_profile`).
fn toml_field(text: &str, e: &toml::de::Error) -> String {
    // toml reports unknown fields and bad values with a byte span; recover the table header
    // above it and the key on that line.
    let Some(span) = e.span() else {
        return "-".into();
    };
    let before = &text[..span.start.min(text.len())];
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['))
        .map(str::to_string);
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "-".into(),
    }
}

fn resolve(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Refuses a non-loopback API bind unless explicitly allowed and protected by a token.
pub fn check_api_bind(addr: &SocketAddr, api: &ApiSection) -> Result<(), (&'static str, String)> {
    if let Some(t) = &api.token {
        if t.len() < API_TOKEN_LEN_MIN || t.len() > API_TOKEN_LEN_MAX {
            return Err((
                "api.token",
                format!("must be {API_TOKEN_LEN_MIN} to {API_TOKEN_LEN_MAX} bytes"),
            ));
        }
    }
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !api.insecure_bind {
        return Err((
            "node.api_listen",
            format!(
                "{addr} is not a loopback address; the API controls the node, so binding it \
                 elsewhere needs api.insecure_bind = true and api.token"
            ),
        ));
    }
    if api.token.is_none() {
        return Err((
            "api.token",
            format!("required when the API binds a non-loopback address ({addr})"),
        ));
    }
    Ok(())
}

fn check_addrs(field: &str, addrs: &[String]) -> Result<(), (String, String)> {
    if addrs.len() > ADDRS_MAX {
        return Err((field.to_string(), format!("at most {ADDRS_MAX} addresses")));
    }
    for (i, a) in addrs.iter().enumerate() {
        if a.parse::<libp2p::Multiaddr>().is_err() {
            return Err((
                format!("{field}[{i}]"),
                format!(
                    "{a:?} is not a multiaddr (expected e.g. \"/ip4/10.0.0.2/udp/4001/quic-v1\")"
                ),
            ));
        }
    }
    Ok(())
}

fn check_mesh(
    mesh: &MeshSection,
    has_cert: bool,
) -> Result<Option<(NodeId, String)>, (&'static str, String)> {
    match mesh.admission {
        AdmissionName::Open => Ok(None),
        AdmissionName::Enforced => {
            let root = mesh.root_pub.as_deref().ok_or((
                "mesh.root_pub",
                "required when mesh.admission = \"enforced\" (see `agentmesh mesh init`)".into(),
            ))?;
            let root: NodeId = root.parse().map_err(|_| {
                (
                    "mesh.root_pub",
                    format!("{root:?} is not a node id (expected a 12D3KooW… peer id)"),
                )
            })?;
            let mesh_id = mesh.mesh_id.clone().ok_or((
                "mesh.mesh_id",
                "required when mesh.admission = \"enforced\"".to_string(),
            ))?;
            if mesh_id.is_empty() || mesh_id.len() > agentmesh_crypto::cert::MESH_ID_LEN_MAX {
                return Err((
                    "mesh.mesh_id",
                    format!(
                        "must be 1 to {} bytes",
                        agentmesh_crypto::cert::MESH_ID_LEN_MAX
                    ),
                ));
            }
            if !has_cert {
                return Err((
                    "node.cert_file",
                    "required when mesh.admission = \"enforced\" (see `agentmesh admit`)".into(),
                ));
            }
            Ok(Some((root, mesh_id)))
        }
    }
}

/// True for a valid capability name: 1 to [`CAPABILITY_NAME_LEN_MAX`] bytes of `[a-z0-9_.-]`.
pub fn is_capability_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= CAPABILITY_NAME_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Checks an agent registration against the named limits. Shared by the config file and
/// `PUT /v1/agent`, so both accept exactly the same registrations.
pub fn validate_agent(reg: &AgentRegistration) -> Result<(), FieldError> {
    if reg.name.trim().is_empty() || reg.name.len() > AGENT_NAME_LEN_MAX {
        return Err(field_err(
            "name",
            format!("must be 1 to {AGENT_NAME_LEN_MAX} bytes, not blank"),
        ));
    }
    if reg.name.chars().any(char::is_control) {
        return Err(field_err("name", "must not contain control characters"));
    }
    check_handler(&reg.handler)?;
    if reg.max_concurrency == 0 || reg.max_concurrency > MAX_CONCURRENCY_MAX {
        return Err(field_err(
            "max_concurrency",
            format!("must be 1 to {MAX_CONCURRENCY_MAX}"),
        ));
    }
    if reg.capabilities.len() > CAPABILITIES_MAX {
        return Err(field_err(
            "capabilities",
            format!("at most {CAPABILITIES_MAX} capabilities"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in reg.capabilities.iter().enumerate() {
        let at = |f: &str| format!("capabilities[{i}].{f}");
        if !is_capability_name(&c.name) {
            return Err(field_err(
                at("name"),
                format!(
                    "{:?} is not a capability name: 1 to {CAPABILITY_NAME_LEN_MAX} characters \
                     of [a-z0-9_.-]",
                    c.name
                ),
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(field_err(
                at("name"),
                format!("{:?} is listed twice", c.name),
            ));
        }
        if !c.cost.is_finite() || c.cost < 0.0 {
            return Err(field_err(at("cost"), "must be a finite number ≥ 0"));
        }
        if c.attributes.len() > ATTRIBUTES_MAX {
            return Err(field_err(
                at("attributes"),
                format!("at most {ATTRIBUTES_MAX} attributes"),
            ));
        }
        for (k, v) in &c.attributes {
            check_attr(k, v).map_err(|m| field_err(format!("{}.{k}", at("attributes")), m))?;
        }
    }
    Ok(())
}

fn check_handler(handler: &str) -> Result<(), FieldError> {
    if handler.len() > HANDLER_URL_LEN_MAX {
        return Err(field_err(
            "handler",
            format!("at most {HANDLER_URL_LEN_MAX} bytes"),
        ));
    }
    let url = reqwest::Url::parse(handler).map_err(|e| {
        field_err(
            "handler",
            format!("{handler:?} is not a URL ({e}); expected e.g. \"http://127.0.0.1:8080\""),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(field_err(
            "handler",
            format!("{handler:?} must be an http:// or https:// URL with a host"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(field_err(
            "handler",
            "must not have a query or fragment: calls go to {handler}/{capability}",
        ));
    }
    Ok(())
}

fn check_attr(k: &str, v: &agentmesh_gossip::record::AttrValue) -> Result<(), String> {
    use agentmesh_gossip::record::AttrValue;
    if k.is_empty() || k.len() > ATTR_LEN_MAX {
        return Err(format!("attribute keys are 1 to {ATTR_LEN_MAX} bytes"));
    }
    let values: Vec<&String> = match v {
        AttrValue::One(s) => vec![s],
        AttrValue::Many(vs) => vs.iter().collect(),
    };
    if values.len() > ATTR_VALUES_MAX {
        return Err(format!("at most {ATTR_VALUES_MAX} values"));
    }
    if values.iter().any(|s| s.len() > ATTR_LEN_MAX) {
        return Err(format!("values are at most {ATTR_LEN_MAX} bytes"));
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    fn good() -> String {
        format!(
            r#"
[node]
key_file = "node.key"
cert_file = "node.cert"
state_dir = "state"
listen = ["/ip4/127.0.0.1/udp/4001/quic-v1"]
seeds = ["/ip4/127.0.0.1/udp/4002/quic-v1"]
gossip_profile = "wan"
priority = "critical"

[mesh]
admission = "enforced"
root_pub = "{ROOT}"
mesh_id = "m1"

[agent]
name = "inv"
handler = "http://127.0.0.1:8101"
[[agent.capabilities]]
name = "inventory.query"
proficiency = "expert"
cost = 0.5
attributes = {{ warehouses = ["A", "B"] }}
"#
        )
    }

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, "node.toml", Path::new("/etc/am"))
    }

    #[test]
    fn good_config_parses_and_resolves_paths() {
        let c = parse(&good()).unwrap();
        assert_eq!(c.file.node.key_file, PathBuf::from("/etc/am/node.key"));
        assert_eq!(c.file.node.gossip_profile, ProfileName::Wan);
        assert_eq!(c.file.node.priority, Priority::Critical);
        assert_eq!(c.api_listen.to_string(), API_LISTEN_DEFAULT);
        assert_eq!(c.enforced.as_ref().unwrap().1, "m1");
        assert_eq!(c.file.agent.as_ref().unwrap().max_concurrency, 64);
    }

    /// Each broken config and the field its error must name.
    #[test]
    fn bad_configs_name_file_and_field() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "gossip_profile = \"wan\"",
                "gossip_profile = \"moon\"",
                "node.gossip_profile",
                "lan",
            ),
            (
                "priority = \"critical\"",
                "priority = \"urgent\"",
                "node.priority",
                "standard",
            ),
            ("mdns", "mdns", "", ""),
            (
                "state_dir = \"state\"",
                "state_dir = \"state\"\ncolour = 1",
                "node.colour",
                "unknown field",
            ),
            (
                "admission = \"enforced\"",
                "admission = \"maybe\"",
                "mesh.admission",
                "open",
            ),
            (
                &format!("root_pub = \"{ROOT}\""),
                "root_pub = \"nope\"",
                "mesh.root_pub",
                "node id",
            ),
            ("mesh_id = \"m1\"", "", "mesh.mesh_id", "required"),
            (
                "cert_file = \"node.cert\"",
                "",
                "node.cert_file",
                "required",
            ),
            (
                "seeds = [\"/ip4/127.0.0.1/udp/4002/quic-v1\"]",
                "seeds = [\"localhost:1\"]",
                "node.seeds[0]",
                "multiaddr",
            ),
            (
                "state_dir = \"state\"",
                "state_dir = \"state\"\napi_listen = \"0.0.0.0:7600\"",
                "node.api_listen",
                "insecure_bind",
            ),
            (
                "name = \"inventory.query\"",
                "name = \"Inventory Query\"",
                "agent.capabilities[0].name",
                "[a-z0-9_.-]",
            ),
            (
                "handler = \"http://127.0.0.1:8101\"",
                "handler = \"ftp://x\"",
                "agent.handler",
                "http",
            ),
            (
                "cost = 0.5",
                "cost = -1.0",
                "agent.capabilities[0].cost",
                "≥ 0",
            ),
        ];
        for (from, to, field, hint) in cases {
            if field.is_empty() {
                continue;
            }
            let text = good().replacen(from, to, 1);
            assert_ne!(text, good(), "case {field}: replacement did not apply");
            let e = parse(&text).expect_err(field);
            assert_eq!(e.file, "node.toml");
            assert_eq!(&e.field, field, "{e}");
            assert!(e.message.contains(hint), "{field}: {e}");
        }
    }

    #[test]
    fn non_loopback_api_needs_flag_and_token() {
        let extra = "[api]\ninsecure_bind = true\n";
        let base = good().replacen(
            "state_dir = \"state\"",
            "state_dir = \"state\"\napi_listen = \"0.0.0.0:7600\"",
            1,
        );
        let e = parse(&format!("{base}{extra}")).unwrap_err();
        assert_eq!(e.field, "api.token");
        let ok = format!("{base}{extra}token = \"0123456789abcdef0123\"\n");
        parse(&ok).unwrap();
        // The command-line flag is the other way to allow it; the token stays required.
        let mut c = parse(&good()).unwrap();
        let any: SocketAddr = "0.0.0.0:7600".parse().unwrap();
        let e = c.override_api(Some(any), false).unwrap_err();
        assert!(e.message.contains("--api-insecure-bind"), "{e}");
        assert_eq!(
            c.override_api(Some(any), true).unwrap_err().field,
            "api.token"
        );
    }

    #[test]
    fn open_mesh_needs_no_root() {
        let text = good()
            .replacen("admission = \"enforced\"", "admission = \"open\"", 1)
            .replacen(&format!("root_pub = \"{ROOT}\""), "", 1);
        assert!(parse(&text).unwrap().enforced.is_none());
    }

    #[test]
    fn capability_names() {
        for ok in ["a", "inventory.query", "text_summarize-v2", "0.9"] {
            assert!(is_capability_name(ok), "{ok}");
        }
        let long = "a".repeat(CAPABILITY_NAME_LEN_MAX + 1);
        for bad in ["", "A", "a b", "a/b", "é", long.as_str()] {
            assert!(!is_capability_name(bad), "{bad}");
        }
    }

    #[test]
    fn cert_file_round_trips() {
        let mut rng = rand::rngs::OsRng;
        let root = agentmesh_crypto::Keypair::generate(&mut rng);
        let node = agentmesh_crypto::Keypair::generate(&mut rng);
        let cert = agentmesh_crypto::AdmissionCert {
            mesh_id: "m".into(),
            node_id: node.node_id(),
            roles: vec!["a".into()],
            not_before: 0,
            not_after: 10,
        }
        .sign(&root)
        .unwrap();
        let dir = std::env::temp_dir().join(format!("am-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.cert");
        let _ = std::fs::remove_file(&p);
        save_cert_file(&p, &cert).unwrap();
        assert_eq!(load_cert_file(&p).unwrap(), cert);
        assert!(save_cert_file(&p, &cert).is_err(), "must not overwrite");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
