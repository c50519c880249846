//! The record plane's payload: a node's signed record describing its agent, capacity and health.

use agentmesh_crypto::{Context, NodeId, Signed, SignedCert};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest encoded signed record accepted, in bytes (DESIGN: at least 16 KB).
pub const RECORD_BYTES_MAX: usize = 16 * 1024;
/// Most capabilities one agent may offer.
pub const CAPABILITIES_MAX: usize = 64;
/// Most attributes on one capability.
pub const ATTRIBUTES_MAX: usize = 32;
/// Longest capability description, in bytes (the full text belongs in the schema).
pub const DESCRIPTION_LEN_MAX: usize = 256;
/// Most opaque extension entries in a record (traffic summaries, policy digests, …).
pub const EXTENSIONS_MAX: usize = 8;

/// How good an agent claims to be at a skill. Ordered: `Novice < Experienced < Expert`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Proficiency {
    /// Can do it, not reliably.
    Novice,
    /// The default.
    #[default]
    Experienced,
    /// Best available.
    Expert,
}

impl std::str::FromStr for Proficiency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "novice" => Ok(Proficiency::Novice),
            "experienced" => Ok(Proficiency::Experienced),
            "expert" => Ok(Proficiency::Expert),
            _ => Err(format!(
                "invalid proficiency {s:?}: expected novice | experienced | expert"
            )),
        }
    }
}

/// An attribute value: one string or a list of strings. Human-readable formats (JSON, TOML)
/// write it bare (`"eu"` or `["A","B"]`); postcard writes it tagged, since postcard cannot
/// decode untagged enums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    /// A single value, e.g. `region = "eu"`.
    One(String),
    /// Several values, e.g. `warehouses = ["A", "B"]`.
    Many(Vec<String>),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum AttrBare {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize, Deserialize)]
enum AttrTagged {
    One(String),
    Many(Vec<String>),
}

impl Serialize for AttrValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (s.is_human_readable(), self) {
            (true, AttrValue::One(v)) => AttrBare::One(v.clone()).serialize(s),
            (true, AttrValue::Many(v)) => AttrBare::Many(v.clone()).serialize(s),
            (false, AttrValue::One(v)) => AttrTagged::One(v.clone()).serialize(s),
            (false, AttrValue::Many(v)) => AttrTagged::Many(v.clone()).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AttrValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            Ok(match AttrBare::deserialize(d)? {
                AttrBare::One(v) => AttrValue::One(v),
                AttrBare::Many(v) => AttrValue::Many(v),
            })
        } else {
            Ok(match AttrTagged::deserialize(d)? {
                AttrTagged::One(v) => AttrValue::One(v),
                AttrTagged::Many(v) => AttrValue::Many(v),
            })
        }
    }
}

impl AttrValue {
    /// True if `wanted` is this value or one of its values.
    pub fn matches(&self, wanted: &str) -> bool {
        match self {
            AttrValue::One(v) => v == wanted,
            AttrValue::Many(vs) => vs.iter().any(|v| v == wanted),
        }
    }
}

/// One skill an agent offers. Unknown fields are refused (a typo such as `proficency` in
/// `node.toml` or `PUT /v1/agent` must not pass as the default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// Dotted name, e.g. `inventory.query`.
    pub name: String,
    /// Self-declared proficiency.
    #[serde(default)]
    pub proficiency: Proficiency,
    /// Attributes used by constraint matching.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    /// Cost per call in the mesh's cost unit.
    #[serde(default)]
    pub cost: f64,
    /// Short human description (at most [`DESCRIPTION_LEN_MAX`] bytes).
    #[serde(default)]
    pub description: Option<String>,
    /// Hash of the input JSON Schema; the schema itself is fetched from the owner on demand,
    /// so records stay small.
    #[serde(default)]
    pub input_schema: Option<SchemaHash>,
    /// Hash of the output JSON Schema.
    #[serde(default)]
    pub output_schema: Option<SchemaHash>,
}

/// SHA-256 of a JSON Schema's canonical bytes (serde_json of the parsed value, keys sorted).
/// Content-addressed: any node holding the schema may serve it and the fetcher checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaHash(pub [u8; 32]);

impl SchemaHash {
    /// The hash of `canonical` schema bytes.
    pub fn of(canonical: &[u8]) -> SchemaHash {
        use sha2::Digest;
        SchemaHash(sha2::Sha256::digest(canonical).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<SchemaHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SchemaHash(out))
    }
}

impl Serialize for SchemaHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.to_hex().serialize(s)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SchemaHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            SchemaHash::from_hex(&s)
                .ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
        } else {
            Ok(SchemaHash(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// The agent beside a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentInfo {
    /// Agent name, unique by convention.
    pub name: String,
    /// Skills offered.
    pub capabilities: Vec<Capability>,
}

/// Health a node reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Taking calls.
    #[default]
    Serving,
    /// Finishing in-flight work, taking no new calls.
    Draining,
    /// Serving, but impaired.
    Degraded,
}

/// How important a node's traffic is; drives shedding order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Shed first.
    Experimental,
    /// The default.
    #[default]
    Standard,
    /// Shed last.
    Critical,
}

/// A node's record. Only its origin may sign it; ordered by `(incarnation, seq)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The origin; must equal the envelope signer.
    pub node_id: NodeId,
    /// The membership incarnation this record belongs to.
    pub incarnation: u64,
    /// Version within the incarnation.
    pub seq: u64,
    /// The node's admission certificate (None only in `admission = "open"` meshes).
    pub cert: Option<SignedCert>,
    /// The agent, if one is registered.
    pub agent: Option<AgentInfo>,
    /// Calls the node accepts at once.
    pub max_concurrency: u32,
    /// Calls in flight when published (advisory; routing prefers observed load).
    pub in_flight: u32,
    /// Self-reported health.
    pub health: Health,
    /// Traffic priority.
    pub priority: Priority,
    /// Opaque, bounded extensions keyed by name (e.g. `"traffic"` summaries).
    pub ext: BTreeMap<String, Vec<u8>>,
}

impl NodeRecord {
    /// A fresh record for `node_id` with no agent.
    pub fn new(node_id: NodeId) -> Self {
        NodeRecord {
            node_id,
            incarnation: 0,
            seq: 0,
            cert: None,
            agent: None,
            max_concurrency: 64,
            in_flight: 0,
            health: Health::Serving,
            priority: Priority::Standard,
            ext: BTreeMap::new(),
        }
    }

    /// The record's version: `(incarnation, seq)`, compared lexicographically.
    pub fn version(&self) -> Version {
        Version {
            incarnation: self.incarnation,
            seq: self.seq,
        }
    }

    /// Checks the named limits.
    pub fn check_limits(&self) -> Result<(), &'static str> {
        if let Some(a) = &self.agent {
            if a.capabilities.len() > CAPABILITIES_MAX {
                return Err("capabilities");
            }
            if a.capabilities
                .iter()
                .any(|c| c.attributes.len() > ATTRIBUTES_MAX)
            {
                return Err("attributes");
            }
            if a.capabilities.iter().any(|c| {
                c.description
                    .as_ref()
                    .is_some_and(|d| d.len() > DESCRIPTION_LEN_MAX)
            }) {
                return Err("description");
            }
        }
        if self.ext.len() > EXTENSIONS_MAX {
            return Err("ext");
        }
        Ok(())
    }
}

/// A record version: `(incarnation, seq)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct Version {
    /// Membership incarnation.
    pub incarnation: u64,
    /// Sequence within it.
    pub seq: u64,
}

/// A record signed by its origin.
pub type SignedRecord = Signed<NodeRecord>;

/// The signature context for records.
pub const RECORD_CONTEXT: Context = Context::NodeRecord;

/// A short hash of a signed record's bytes, carried in membership to detect divergence.
pub fn record_hash(rec: &SignedRecord) -> u64 {
    let d = rec.digest();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}
