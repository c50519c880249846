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
//! zone = "eu-west-1a"               # locality labels, gossiped in the signed record; routing
//! region = "eu-west-1"              # keeps calls in the caller's zone, then region
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
use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::Priority;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Largest config file read, in bytes.
pub const CONFIG_BYTES_MAX: usize = 256 * 1024;
/// Most seeds and most listen addresses.
pub const ADDRS_MAX: usize = 64;
/// Longest API token, in bytes.
pub const API_TOKEN_LEN_MAX: usize = 512;
/// Shortest API token accepted, in bytes: a guessable token is no protection.
pub const API_TOKEN_LEN_MIN: usize = 16;
/// Longest drain timeout accepted, in ms.
pub const DRAIN_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;

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
    /// (see [`crate::routing::settings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<toml::Table>,
    /// `[a2a]`: the agent is an A2A agent, learnt from its Agent Card
    /// (see [`crate::a2a::bridge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a2a: Option<crate::a2a::bridge::A2aSection>,
    /// `[mcp]`: MCP servers joined to the mesh as this node's agent
    /// (see [`crate::mcp::agents`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<crate::mcp::agents::McpSection>,
    /// `[capability."name"]`: per-capability overrides of `[defaults]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub capability: std::collections::BTreeMap<String, toml::Table>,
    /// `[workflows]`: workflow files served by `POST /v1/workflows/{name}/run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<WorkflowsSection>,
    /// `[telemetry]`: OTLP trace export (see [`crate::obs::telemetry`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::obs::telemetry::TelemetrySection>,
    /// `[rbac]`: the RBAC policy file (see [`crate::security::rbac`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacSection>,
    /// `[audit]`: the audit log (see [`crate::security::audit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::security::audit::AuditConfig>,
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
    /// Zone label (Kubernetes `topology.kubernetes.io/zone`); empty: none.
    #[serde(default)]
    pub zone: String,
    /// Region label (Kubernetes `topology.kubernetes.io/region`); empty: none.
    #[serde(default)]
    pub region: String,
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
    pub mesh: crate::routing::settings::MeshConfig,
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
        crate::routing::locality::Locality::new(&file.node.zone, &file.node.region)
            .map_err(|(f, m)| err(&format!("node.{f}"), m))?;
        let enforced =
            check_mesh(&file.mesh, file.node.cert_file.is_some()).map_err(|(f, m)| err(f, m))?;
        if let Some(agent) = &file.agent {
            crate::contract::validate_registration(agent)
                .map_err(|e| err(&format!("agent.{}", e.field), e.message))?;
        }
        if let Some(m) = &file.mcp {
            if file.agent.is_some() || file.a2a.is_some() {
                return Err(err(
                    "mcp",
                    "a node has one agent: set [agent], [a2a] or [mcp], not several".into(),
                ));
            }
            if m.servers.len() > crate::mcp::agents::MCP_SERVERS_MAX {
                return Err(err(
                    "mcp.servers",
                    format!("at most {}", crate::mcp::agents::MCP_SERVERS_MAX),
                ));
            }
            for (i, s) in m.servers.iter().enumerate() {
                s.validate().map_err(|e| {
                    err(
                        &format!("mcp.servers[{i}].{}", e.field.as_deref().unwrap_or("")),
                        e.message,
                    )
                })?;
            }
        }
        if let Some(t) = &file.telemetry {
            t.validate().map_err(|(f, m)| err(f, m))?;
        }
        if let Some(a) = &file.a2a {
            a.card_url().map_err(|m| err("a2a", m))?;
        }
        let mesh = crate::routing::settings::MeshConfig::from_tables(
            file.defaults.as_ref(),
            &file.capability,
        )
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

pub(crate) fn check_addrs(field: &str, addrs: &[String]) -> Result<(), (String, String)> {
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
            // Parsing checks the shape only; a root must also be a usable key (a curve point).
            let root: NodeId = root
                .parse()
                .ok()
                .filter(|r: &NodeId| r.to_peer_id().is_ok())
                .ok_or_else(|| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::names::{is_capability_name, CAPABILITY_NAME_LEN_MAX};
    use crate::security::certs::{load_cert_file, save_cert_file};

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

    /// A config with every table `node.toml` knows, each set (for the unknown-key test).
    fn every_table() -> String {
        format!(
            r#"{}
[api]
token = "0123456789abcdef0123"

[defaults]
policy = "latency"
[defaults.deadline]
[defaults.retry]
[defaults.breaker]
[defaults.quality]
[defaults.hedging]
[defaults.adaptive]
[defaults.shedding]

[capability.inv]
policy = "cost"
[capability.inv.retry]
[capability.inv.breaker]

[a2a]
card_url = "http://127.0.0.1:9/.well-known/agent-card.json"
[a2a.skills."lookup"]
capability = "inventory.lookup"

[workflows]
paths = ["wf"]

[telemetry]
service_name = "n"

[rbac]
policy_file = "policy.toml"

[audit]
dir = "audit"
"#,
            good()
        )
    }

    /// Visits every table of `t` (arrays of tables too) but the maps whose keys are names the
    /// user chooses, calling `f` with its dotted path.
    fn each_table(t: &toml::Table, at: &str, f: &mut dyn FnMut(&str)) {
        const MAPS: &[&str] = &["capability", "attributes", "skills"];
        let last = at.rsplit('.').next().unwrap_or("");
        if !MAPS.contains(&last) {
            f(at);
        }
        for (k, v) in t {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            match v {
                toml::Value::Table(sub) => each_table(sub, &path, f),
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(sub) = item {
                            each_table(sub, &format!("{path}[{i}]"), f);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn table_at<'a>(root: &'a mut toml::Table, at: &str) -> &'a mut toml::Table {
        let mut t = root;
        for part in at.split('.').filter(|p| !p.is_empty()) {
            let (key, index) = match part.split_once('[') {
                Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
                None => (part, None),
            };
            let v = t.get_mut(key).unwrap();
            t = match (v, index) {
                (toml::Value::Table(sub), None) => sub,
                (toml::Value::Array(a), Some(i)) => a[i].as_table_mut().unwrap(),
                _ => panic!("{at}"),
            };
        }
        t
    }

    /// A typo in any table of `node.toml` (e.g. `proficency` in `[[agent.capabilities]]`)
    /// is refused, naming the key; none is taken silently as a default.
    #[test]
    fn unknown_keys_are_refused_in_every_table() {
        let text = every_table();
        parse(&text).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let mut paths = Vec::new();
        each_table(&doc, "", &mut |p| paths.push(p.to_string()));
        assert!(paths.len() >= 23, "tables visited: {paths:?}");
        for at in &paths {
            let mut bad = doc.clone();
            table_at(&mut bad, at).insert("proficency".into(), toml::Value::Integer(1));
            let e = parse(&toml::to_string(&bad).unwrap())
                .expect_err(&format!("a typo in [{at}] passed"));
            assert!(e.to_string().contains("proficency"), "[{at}]: {e}");
        }
    }

    /// The A2A card is fetched only from an http(s) URL.
    #[test]
    fn a2a_card_url_must_be_http() {
        let text = every_table().replace(
            "http://127.0.0.1:9/.well-known/agent-card.json",
            "file:///etc/passwd",
        );
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("http"), "{e}");
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
