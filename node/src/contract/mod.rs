//! Types shared between the mesh runtime (transport, routing) and the local HTTP API / CLI.
//! This file is the contract between those layers; change it deliberately.

mod candidate;
pub mod jmes;
pub mod names;
pub mod registration;
pub mod schema;

pub use candidate::Candidate;
pub use registration::{check_http_url, validate_registration, FieldError};

use agentmesh_gossip::record::{AttrValue, Capability, Proficiency};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest request or response body carried through the mesh, in bytes.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An agent as registered with `PUT /v1/agent` or in `node.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRegistration {
    /// Agent name.
    pub name: String,
    /// Base URL the node forwards inbound calls to, as `POST {handler}/{capability}`.
    pub handler: String,
    /// Skills offered.
    pub capabilities: Vec<CapabilitySpec>,
    /// Calls accepted at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
}

fn default_max_concurrency() -> u32 {
    64
}

/// One capability as registered: the gossiped [`Capability`] fields plus its JSON Schemas
/// in full (gossip carries only their hashes; see [`schema`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CapabilitySpec {
    /// Dotted name, e.g. `inventory.query`.
    pub name: String,
    /// Self-declared proficiency.
    #[serde(default)]
    pub proficiency: Proficiency,
    /// Attributes used by constraint matching.
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    /// Cost per call.
    #[serde(default)]
    pub cost: f64,
    /// Short description (at most `DESCRIPTION_LEN_MAX` bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the call body; callers' nodes validate against it before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema of the answer (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

impl CapabilitySpec {
    /// A spec without schemas or description.
    pub fn named(name: impl Into<String>) -> Self {
        CapabilitySpec {
            name: name.into(),
            ..Default::default()
        }
    }

    /// The record form: schemas replaced by their hashes.
    pub fn to_capability(&self) -> Capability {
        Capability {
            name: self.name.clone(),
            proficiency: self.proficiency,
            attributes: self.attributes.clone(),
            cost: self.cost,
            description: self.description.clone(),
            input_schema: self.input_schema.as_ref().map(schema::hash),
            output_schema: self.output_schema.as_ref().map(schema::hash),
        }
    }
}

/// A call as the local API or a workflow asks for it.
#[derive(Debug, Clone, Default)]
pub struct CallRequest {
    /// Capability name.
    pub capability: String,
    /// Attribute constraints (`attr.k=v`): every one must match.
    pub attrs: BTreeMap<String, String>,
    /// Minimum proficiency.
    pub min_proficiency: Option<Proficiency>,
    /// Time budget for the whole call, in ms (None: the default per capability).
    pub deadline_ms: Option<u64>,
    /// Preferred agent name or node id.
    pub prefer: Option<String>,
    /// Routing policy name.
    pub policy: Option<String>,
    /// Locality mode name (`x-mesh-locality`; None: the capability's setting).
    pub locality: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// W3C trace state.
    pub tracestate: Option<String>,
    /// Content type of the body.
    pub content_type: Option<String>,
    /// What the caller accepts back (`text/event-stream` asks an A2A agent's node to stream
    /// the answer as it comes; see [`crate::a2a::stream`]).
    pub accept: Option<String>,
    /// Request body.
    pub body: bytes::Bytes,
    /// Complexity hint (`x-mesh-complexity`): `high` goes to experts, `low` to the cheapest
    /// competent agent.
    pub complexity: Option<Complexity>,
    /// The opaque call-chain token (`x-mesh-chain`) the node gave the calling agent, when this
    /// call is an onward call made while serving another.
    pub chain: Option<String>,
    /// Route only to this node (quorum voters and fork-join fan-out pin distinct nodes).
    pub pin: Option<agentmesh_crypto::NodeId>,
    /// The call id to use (a quorum's voters share one); None draws a random one.
    pub call_id: Option<[u8; 16]>,
    /// Ask the callee's node to sign a vote over the answer under these quorum terms
    /// ([`CallResponse::vote`]).
    pub want_vote: Option<VoteTerms>,
}

/// The terms of a quorum, sent to each voter so that its signed vote covers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteTerms {
    /// Voters asked.
    pub n: u32,
    /// Byzantine faults tolerated; None: majority.
    pub f: Option<u32>,
    /// The decision key expression, if any.
    pub key: Option<String>,
}

/// Most vote frames kept from one answer: an honest callee sends one; a second, different
/// one is evidence of equivocation; more are refused.
pub const VOTE_FRAMES_MAX: usize = 2;

/// Where the callee's signed votes land once the streamed answer is complete (at most
/// [`VOTE_FRAMES_MAX`] distinct ones).
pub type VoteSlot = std::sync::Arc<std::sync::Mutex<Vec<agentmesh_vote::SignedVote>>>;

/// How demanding a request is (`x-mesh-complexity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Complexity {
    /// Simple: the cheapest competent agent will do.
    Low,
    /// Hard: experts first, experienced agents when the experts are at capacity.
    High,
}

impl std::str::FromStr for Complexity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Complexity::Low),
            "high" => Ok(Complexity::High),
            other => Err(format!(
                "{other:?} is not a complexity: expected low | high"
            )),
        }
    }
}

/// A streamed response body: chunks as the callee's agent produces them.
pub type ResponseBody = futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// An answer from the agent (any status below 500; 5xx becomes `agent_error`).
pub struct CallResponse {
    /// HTTP status the agent returned.
    pub status: u16,
    /// Content type of the body.
    pub content_type: Option<String>,
    /// The response body, streamed.
    pub body: ResponseBody,
    /// `"<node id>/<agent name>"` of the agent that served it.
    pub served_by: String,
    /// Attempts made (hedges included).
    pub attempts: u32,
    /// Hedged attempts started (0 without hedging).
    pub hedges: u32,
    /// The policy that picked the agent.
    pub policy: String,
    /// Why a pinned agent (`x-mesh-prefer`) was not used, if it was not.
    pub prefer_fallback: Option<String>,
    /// The call id the callee saw.
    pub call_id: [u8; 16],
    /// The callee's signed vote, filled when the body has been read to its end (remote
    /// callees only, and only if [`CallRequest::want_vote`]).
    pub vote: VoteSlot,
}

/// Stable error codes visible to callers as `{"code": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No agent offers the capability.
    NoCapability,
    /// Candidates exist but none matches the constraints.
    NoEligibleAgent,
    /// The chosen agent's node could not be reached.
    AgentUnreachable,
    /// The agent answered 5xx.
    AgentError,
    /// The deadline passed.
    DeadlineExceeded,
    /// The request is malformed.
    BadRequest,
    /// The node is over its in-flight limit.
    Overloaded,
    /// Every candidate's breaker is open.
    CircuitOpen,
    /// The call would revisit a node for the same capability.
    LoopDetected,
    /// Policy forbids it.
    Forbidden,
    /// Anything else.
    Internal,
    /// No such endpoint or named resource (an unknown route or workflow).
    NotFound,
    /// The endpoint exists but not with this HTTP method.
    MethodNotAllowed,
    /// The audit log cannot record the call and `[audit] on_full = "refuse_call"`.
    AuditUnavailable,
}

impl ErrorCode {
    /// The HTTP status the local API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NoCapability | ErrorCode::NoEligibleAgent => 404,
            ErrorCode::AgentUnreachable => 502,
            ErrorCode::AgentError => 502,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::BadRequest => 400,
            ErrorCode::Overloaded => 503,
            ErrorCode::CircuitOpen => 503,
            ErrorCode::LoopDetected => 508,
            ErrorCode::Forbidden => 403,
            ErrorCode::Internal => 500,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AuditUnavailable => 503,
        }
    }
}

/// A failed call, rendered as JSON `{code, message, field?, status?, body?}`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct CallError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human message.
    pub message: String,
    /// The request field at fault (for `bad_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The agent's status (for `agent_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The agent's body (for `agent_error`), as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Attempts made before failing.
    #[serde(default)]
    pub attempts: u32,
    /// The agent marked its failure retryable (`x-mesh-retryable: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// The agent said never to retry it (`x-mesh-retryable: false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_retry: bool,
    /// For a typed mesh error raised downstream (`loop_detected`, `deadline_exceeded`): the
    /// hops it came back through, nearest last (at most [`ERROR_PATH_HOPS_MAX`]); `message`
    /// is the root cause's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
}

/// Most hops an error's `path` keeps (the oldest are dropped first).
pub const ERROR_PATH_HOPS_MAX: usize = 16;
/// Longest entry of an error's `path`, in bytes.
pub const ERROR_PATH_HOP_LEN_MAX: usize = 256;

impl CallError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
            field: None,
            status: None,
            body: None,
            attempts: 0,
            retryable: false,
            no_retry: false,
            path: Vec::new(),
        }
    }

    /// Adds a hop to `path`, keeping it bounded.
    pub fn push_hop(&mut self, hop: String) {
        let mut hop = hop;
        if hop.len() > ERROR_PATH_HOP_LEN_MAX {
            let mut end = ERROR_PATH_HOP_LEN_MAX;
            while !hop.is_char_boundary(end) {
                end -= 1;
            }
            hop.truncate(end);
        }
        self.path.push(hop);
        if self.path.len() > ERROR_PATH_HOPS_MAX {
            let extra = self.path.len() - ERROR_PATH_HOPS_MAX;
            self.path.drain(..extra);
        }
    }

    /// A `bad_request` naming the field at fault.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        CallError {
            field: Some(field.to_string()),
            ..CallError::new(ErrorCode::BadRequest, message)
        }
    }
}

/// One member as `GET /v1/members` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id (libp2p peer id).
    pub node_id: String,
    /// `alive | suspect | dead | left`.
    pub state: String,
    /// Advertised addresses.
    pub addrs: Vec<String>,
    /// Membership incarnation.
    pub incarnation: u64,
    /// Agent name, if any.
    pub agent: Option<String>,
    /// Capability names offered.
    pub capabilities: Vec<String>,
    /// `serving | draining | degraded`.
    pub health: Option<String>,
    /// True for the node answering.
    pub local: bool,
}

/// One ranked candidate in `GET /v1/routes/{capability}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteCandidate {
    /// Rank (1 = would be picked next), or None if ineligible.
    pub rank: Option<u32>,
    /// Node id.
    pub node_id: String,
    /// Agent name.
    pub agent: String,
    /// Declared proficiency.
    pub proficiency: Proficiency,
    /// Declared cost.
    pub cost: f64,
    /// Calls in flight to it from here, observed.
    pub in_flight: u32,
    /// Calls in flight the callee reported on its last answer (ORCA-style load feedback).
    #[serde(default)]
    pub reported_in_flight: Option<u32>,
    /// Observed latency EWMA in ms, if any calls were made.
    pub latency_ms: Option<f64>,
    /// Observed success rate, if any calls were made.
    pub success_rate: Option<f64>,
    /// Breaker state: `closed | open | half_open`.
    pub breaker: String,
    /// Adaptive concurrency `in_flight/limit`, when the capability enables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_limit: Option<String>,
    /// Its node's zone label, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its node's region label, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How near it is to this node by labels: `zone | region | remote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximity: Option<String>,
    /// Smoothed QUIC round-trip time of this node's call connection to it, µs (0 for this
    /// node's own agent; absent until a call measured it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u32>,
    /// Why it is (or is not) eligible and where it ranks.
    pub reason: String,
}

/// Answer of `GET /v1/routes/{capability}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteExplanation {
    /// Capability asked about.
    pub capability: String,
    /// Policy applied.
    pub policy: String,
    /// Locality preference applied: `zone | region | rtt | off`.
    #[serde(default)]
    pub locality: String,
    /// Candidates, ranked first, ineligible after.
    pub candidates: Vec<RouteCandidate>,
}

impl std::fmt::Debug for CallResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallResponse")
            .field("status", &self.status)
            .field("served_by", &self.served_by)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
