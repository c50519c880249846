//! The client: one node API base URL, an optional bearer token, reqwest underneath.

use crate::error::{ErrorCode, MeshError};
use crate::propagation;
use crate::stream::{EventStream, StreamEvent};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The node API used when neither an explicit URL nor `$AGENTMESH_API` is given.
pub const API_DEFAULT: &str = "http://127.0.0.1:7600";
/// Extra time the HTTP request gets beyond the call's own deadline: the node answers with a
/// typed `deadline_exceeded` at the deadline, and that answer must get through.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(5);
/// Timeout of requests without a deadline (the node's default deadline is 30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(35);
/// Largest response body read, in bytes (the node's own call body limit is smaller).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest deadline the node accepts, in ms.
pub const DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;

/// One capability an agent offers (`PUT /v1/agent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Capability {
    /// Dotted name, e.g. `inventory.query` (1 to 128 of `[a-z0-9_.-]`).
    pub name: String,
    /// `novice`, `experienced` (the node's default) or `expert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proficiency: Option<String>,
    /// Declared cost per call (the `cost` policy prefers the cheapest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Attributes matched by `attr.K=V` constraints: a string or a list of strings each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// Short description (shown by `GET /v1/capabilities` and MCP `tools/list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the call body; callers' nodes validate against it before routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// JSON Schema of the answer (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
}

impl Capability {
    /// A capability with only its name.
    pub fn new(name: impl Into<String>) -> Self {
        Capability {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Sets the proficiency (`novice`, `experienced`, `expert`).
    pub fn proficiency(mut self, p: impl Into<String>) -> Self {
        self.proficiency = Some(p.into());
        self
    }

    /// Sets the cost per call.
    pub fn cost(mut self, cost: f64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Adds a single-valued attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes
            .insert(key.into(), serde_json::Value::String(value.into()));
        self
    }

    /// Sets the description.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// Sets the input JSON Schema.
    pub fn input_schema(mut self, schema: serde_json::Value) -> Self {
        self.input_schema = Some(schema);
        self
    }
}

/// The local agent as registered with its node (`PUT /v1/agent`): the node forwards calls
/// as `POST {handler}/{capability}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// Agent name.
    pub name: String,
    /// Base URL of the agent's HTTP server, as the node reaches it.
    pub handler: String,
    /// Capabilities offered.
    pub capabilities: Vec<Capability>,
    /// Calls accepted at once (None: the node's default, 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

impl AgentRegistration {
    /// A registration of `name` served at `handler`, offering `capabilities`.
    pub fn new(
        name: impl Into<String>,
        handler: impl Into<String>,
        capabilities: impl IntoIterator<Item = Capability>,
    ) -> Self {
        AgentRegistration {
            name: name.into(),
            handler: handler.into(),
            capabilities: capabilities.into_iter().collect(),
            max_concurrency: None,
        }
    }

    /// Sets the calls accepted at once.
    pub fn max_concurrency(mut self, n: u32) -> Self {
        self.max_concurrency = Some(n);
        self
    }
}

/// The node's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registered {
    /// The node's id.
    pub node_id: String,
    /// The agent's name.
    pub agent: String,
    /// The capabilities registered.
    pub capabilities: Vec<String>,
}

/// How to route one call. Every field is optional; `CallOptions::default()` lets the node
/// decide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallOptions {
    /// Routing policy (`x-mesh-policy`): `latency`, `least_loaded`, `cost`, `round_robin`, …
    pub policy: Option<String>,
    /// Time for the whole call, retries included (`x-mesh-deadline-ms`). While serving a
    /// mesh call, the shorter of this and what is left of the inbound deadline is sent.
    pub deadline: Option<Duration>,
    /// Preferred agent name or node id (`x-mesh-prefer`).
    pub prefer: Option<String>,
    /// Attribute constraints (`attr.K=V`): every one must match.
    pub attrs: BTreeMap<String, String>,
    /// Minimum proficiency (`min_proficiency`): `novice`, `experienced` or `expert`.
    pub min_proficiency: Option<String>,
    /// Locality (`x-mesh-locality`): `zone`, `region`, `rtt` or `off` (None: the node's
    /// setting for the capability).
    pub locality: Option<String>,
}

impl CallOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the routing policy.
    pub fn policy(mut self, p: impl Into<String>) -> Self {
        self.policy = Some(p.into());
        self
    }

    /// Sets the locality preference.
    pub fn locality(mut self, l: impl Into<String>) -> Self {
        self.locality = Some(l.into());
        self
    }

    /// Sets the deadline of the whole call.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sets the preferred agent or node.
    pub fn prefer(mut self, p: impl Into<String>) -> Self {
        self.prefer = Some(p.into());
        self
    }

    /// Adds an attribute constraint.
    pub fn attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// Sets the minimum proficiency.
    pub fn min_proficiency(mut self, p: impl Into<String>) -> Self {
        self.min_proficiency = Some(p.into());
        self
    }
}

/// A successful call's answer and who served it.
#[derive(Debug, Clone)]
pub struct CallResponse {
    /// The HTTP status (2xx).
    pub status: u16,
    /// `<node id>/<agent>` that served the call (`x-mesh-served-by`).
    pub served_by: String,
    /// Attempts the call took, retries and hedges included (`x-mesh-attempts`).
    pub attempts: u32,
    /// Every response header.
    pub headers: HeaderMap,
    /// The answer's bytes.
    pub body: Vec<u8>,
}

impl CallResponse {
    /// The answer decoded as JSON into `T`; a body that is not is `bad_response`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, MeshError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            MeshError::new(
                ErrorCode::BadResponse,
                format!("the answer is not the JSON expected: {e}"),
            )
        })
    }
}

/// A quorum call's terms (`POST /v1/quorum/{capability}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuorumOptions {
    /// Voters asked, each on its own node.
    pub n: u32,
    /// Byzantine faults tolerated (asks for `2f+1` agreeing votes); None: majority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f: Option<u32>,
    /// JMESPath picking the compared part of each answer; None compares whole answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Deadline of the whole quorum.
    #[serde(skip)]
    pub deadline: Option<Duration>,
    /// Capability a `needs_review` outcome is forwarded to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
    /// Routing policy used to pick the voters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Default for QuorumOptions {
    fn default() -> Self {
        QuorumOptions {
            n: 3,
            f: None,
            key: None,
            deadline: None,
            review: None,
            policy: None,
        }
    }
}

/// A node's local API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    api: reqwest::Url,
    token: Option<String>,
}

impl Client {
    /// A client of the node API at `api` (e.g. `http://127.0.0.1:7600`), without a token.
    pub fn new(api: &str) -> Result<Self, MeshError> {
        let api = reqwest::Url::parse(api.trim_end_matches('/'))
            .map_err(|e| MeshError::bad_argument("api", format!("{api:?} is not a URL: {e}")))?;
        if api.cannot_be_a_base() || !matches!(api.scheme(), "http" | "https") {
            return Err(MeshError::bad_argument(
                "api",
                "expected an http:// base URL",
            ));
        }
        // The node is local: no system proxy, whatever the environment says.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| MeshError::new(ErrorCode::Internal, format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            api,
            token: None,
        })
    }

    /// A client of `$AGENTMESH_API` (default [`API_DEFAULT`]) with `$AGENTMESH_API_TOKEN` as
    /// the bearer token when set.
    pub fn from_env() -> Result<Self, MeshError> {
        let api = std::env::var("AGENTMESH_API")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| API_DEFAULT.to_string());
        let client = Client::new(&api)?;
        Ok(match std::env::var("AGENTMESH_API_TOKEN") {
            Ok(t) if !t.is_empty() => client.with_token(t),
            _ => client,
        })
    }

    /// The same client sending `Authorization: Bearer <token>` (the node's `api.token`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The node API's base URL.
    pub fn api(&self) -> &str {
        self.api.as_str().trim_end_matches('/')
    }

    /// Registers this node's agent, replacing any earlier registration. `PUT /v1/agent`.
    pub async fn register(&self, reg: &AgentRegistration) -> Result<Registered, MeshError> {
        let body = encode(reg)?;
        let resp = self
            .send(
                reqwest::Method::PUT,
                &["v1", "agent"],
                body,
                REQUEST_TIMEOUT,
            )
            .await?;
        decode(&resp.body)
    }

    /// Calls `capability` anywhere in the mesh with a JSON `payload` and returns the decoded
    /// answer (`null` for an empty one; an answer that is not JSON is `bad_response`, and
    /// [`Client::call_with`] gives its bytes). While serving a mesh call (see
    /// [`crate::MeshLayer`]), its chain, deadline and trace headers are sent on.
    pub async fn call<T: Serialize + ?Sized>(
        &self,
        capability: &str,
        payload: &T,
    ) -> Result<serde_json::Value, MeshError> {
        let resp = self
            .call_with(capability, payload, &CallOptions::default())
            .await?;
        if resp.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        resp.json()
    }

    /// Like [`Client::call`] with routing options, returning the whole answer.
    pub async fn call_with<T: Serialize + ?Sized>(
        &self,
        capability: &str,
        payload: &T,
        opts: &CallOptions,
    ) -> Result<CallResponse, MeshError> {
        self.call_bytes(capability, encode(payload)?, "application/json", opts)
            .await
    }

    /// Calls `capability` with a body that is sent as it is, with `content_type`.
    pub async fn call_bytes(
        &self,
        capability: &str,
        body: Vec<u8>,
        content_type: &str,
        opts: &CallOptions,
    ) -> Result<CallResponse, MeshError> {
        let (rb, timeout) = self.call_request(capability, body, content_type, opts)?;
        let resp = self.execute(rb.timeout(timeout)).await?;
        read_answer(resp).await
    }

    /// Calls `capability` asking for the answer as it comes (`accept: text/event-stream`).
    /// The stream yields `Chunk`s, then `Done` or `Error`; an agent that does not stream
    /// yields one `Done` with its whole answer. Failures before the stream starts are the
    /// `Err` of this call.
    pub async fn stream<T: Serialize + ?Sized>(
        &self,
        capability: &str,
        payload: &T,
        opts: &CallOptions,
    ) -> Result<EventStream, MeshError> {
        let (rb, timeout) =
            self.call_request(capability, encode(payload)?, "application/json", opts)?;
        let rb = rb.header(ACCEPT, "text/event-stream").timeout(timeout);
        let resp = self.execute(rb).await?;
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if resp.status().is_success() && is_sse {
            return Ok(EventStream::sse(resp));
        }
        let answer = read_answer(resp).await?;
        let done = if answer.body.is_empty() {
            None
        } else {
            Some(answer.json()?)
        };
        Ok(EventStream::single(StreamEvent::Done(done)))
    }

    /// Asks `opts.n` distinct agents in parallel and returns the node's decision (votes,
    /// dissenters, or `needs_review`). `POST /v1/quorum/{capability}`.
    pub async fn quorum<T: Serialize + ?Sized>(
        &self,
        capability: &str,
        payload: &T,
        opts: &QuorumOptions,
    ) -> Result<serde_json::Value, MeshError> {
        let deadline_ms = opts.deadline.map(deadline_ms).transpose()?;
        let mut doc = serde_json::to_value(opts).map_err(encode_error)?;
        doc["payload"] = serde_json::to_value(payload).map_err(encode_error)?;
        if let Some(ms) = deadline_ms {
            doc["deadline_ms"] = ms.into();
        }
        let resp = self
            .send(
                reqwest::Method::POST,
                &["v1", "quorum", capability],
                encode(&doc)?,
                request_timeout(deadline_ms),
            )
            .await?;
        decode(&resp.body)
    }

    /// Runs the workflow `name` loaded on this node with `input`; a failed run is the error of
    /// its failing step (its whole record in [`MeshError::raw`]).
    /// `POST /v1/workflows/{name}/run`.
    pub async fn run_workflow<T: Serialize + ?Sized>(
        &self,
        name: &str,
        input: &T,
    ) -> Result<serde_json::Value, MeshError> {
        let doc =
            serde_json::json!({ "input": serde_json::to_value(input).map_err(encode_error)? });
        let resp = self
            .send(
                reqwest::Method::POST,
                &["v1", "workflows", name, "run"],
                encode(&doc)?,
                REQUEST_TIMEOUT,
            )
            .await?;
        decode(&resp.body)
    }

    /// The members this node sees (`node_id`, `state`, …). `GET /v1/members`.
    pub async fn members(&self) -> Result<Vec<serde_json::Value>, MeshError> {
        let v: serde_json::Value = self.get_json(&["v1", "members"]).await?;
        match v.get("members").and_then(|m| m.as_array()) {
            Some(list) => Ok(list.clone()),
            None => Err(MeshError::new(
                ErrorCode::BadResponse,
                "GET /v1/members has no members list",
            )),
        }
    }

    /// The capabilities the mesh offers as this node sees them (`capabilities`: name → agents,
    /// `details`). `GET /v1/capabilities`.
    pub async fn capabilities(&self) -> Result<serde_json::Value, MeshError> {
        self.get_json(&["v1", "capabilities"]).await
    }

    /// Whether the node has joined and is admitted. `GET /readyz`.
    pub async fn ready(&self) -> bool {
        match self.get_json::<serde_json::Value>(&["readyz"]).await {
            Ok(v) => v.get("ready").and_then(|r| r.as_bool()).unwrap_or(false),
            Err(_) => false,
        }
    }

    // -- transport ----------------------------------------------------------------------------

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.api.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.header(AUTHORIZATION, format!("Bearer {t}")),
            None => rb,
        }
    }

    /// A `POST /v1/call/{capability}` request with the propagated headers and `opts`, and
    /// its timeout.
    fn call_request(
        &self,
        capability: &str,
        body: Vec<u8>,
        content_type: &str,
        opts: &CallOptions,
    ) -> Result<(reqwest::RequestBuilder, Duration), MeshError> {
        let own = opts.deadline.map(deadline_ms).transpose()?;
        let out = propagation::outbound(own);
        let mut url = self.url(&["v1", "call", capability]);
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &opts.attrs {
                q.append_pair(&format!("attr.{k}"), v);
            }
            if let Some(p) = &opts.min_proficiency {
                q.append_pair("min_proficiency", p);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let mut rb = self
            .request(reqwest::Method::POST, url)
            .header(CONTENT_TYPE, header_value("content_type", content_type)?)
            .body(body);
        for (name, value) in &out.headers {
            rb = rb.header(*name, header_value(name, value)?);
        }
        if let Some(ms) = out.deadline_ms {
            rb = rb.header(propagation::DEADLINE_HEADER, ms);
        }
        if let Some(p) = &opts.policy {
            rb = rb.header("x-mesh-policy", header_value("policy", p)?);
        }
        if let Some(p) = &opts.prefer {
            rb = rb.header("x-mesh-prefer", header_value("prefer", p)?);
        }
        if let Some(l) = &opts.locality {
            rb = rb.header("x-mesh-locality", header_value("locality", l)?);
        }
        Ok((rb, request_timeout(out.deadline_ms)))
    }

    async fn execute(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, MeshError> {
        let resp = rb.send().await.map_err(|e| {
            MeshError::new(
                ErrorCode::Unreachable,
                format!("node API {}: {e}", self.api()),
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = read_capped(resp).await.unwrap_or_default();
        Err(MeshError::from_answer(status, &body))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<CallResponse, MeshError> {
        let mut rb = self
            .request(method, self.url(segments))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .timeout(timeout)
            .body(body);
        // Workflows and quorums continue the trace of the call being served, if any.
        for (name, value) in propagation::outbound(None).headers {
            if name != propagation::CHAIN_HEADER {
                rb = rb.header(name, header_value(name, &value)?);
            }
        }
        read_answer(self.execute(rb).await?).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        segments: &[&str],
    ) -> Result<T, MeshError> {
        let rb = self
            .request(reqwest::Method::GET, self.url(segments))
            .header(ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT);
        let resp = read_answer(self.execute(rb).await?).await?;
        decode(&resp.body)
    }
}

/// A deadline in whole ms (at least 1), refused when zero or past [`DEADLINE_MS_MAX`].
fn deadline_ms(d: Duration) -> Result<u64, MeshError> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if d.is_zero() || ms > DEADLINE_MS_MAX {
        return Err(MeshError::bad_argument(
            "deadline",
            format!("{d:?} is not a deadline: 1 ms to {DEADLINE_MS_MAX} ms"),
        ));
    }
    Ok(ms.max(1))
}

fn request_timeout(deadline_ms: Option<u64>) -> Duration {
    match deadline_ms {
        Some(ms) => Duration::from_millis(ms) + DEADLINE_SLACK,
        None => REQUEST_TIMEOUT,
    }
}

fn header_value(field: &str, v: &str) -> Result<HeaderValue, MeshError> {
    HeaderValue::from_str(v)
        .map_err(|_| MeshError::bad_argument(field, format!("{v:.64?} is not a header value")))
}

fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, MeshError> {
    serde_json::to_vec(v).map_err(encode_error)
}

fn encode_error(e: serde_json::Error) -> MeshError {
    MeshError::bad_argument("payload", format!("cannot encode as JSON: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, MeshError> {
    serde_json::from_slice(body).map_err(|e| {
        MeshError::new(
            ErrorCode::BadResponse,
            format!("the node answered unexpected JSON: {e}"),
        )
    })
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, MeshError> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => {
                if out.len() + bytes.len() > RESPONSE_BYTES_MAX {
                    return Err(MeshError::new(
                        ErrorCode::BadResponse,
                        format!("answer exceeds {RESPONSE_BYTES_MAX} bytes"),
                    ));
                }
                out.extend_from_slice(&bytes);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                let code = if e.is_timeout() {
                    ErrorCode::Unreachable
                } else {
                    ErrorCode::BadResponse
                };
                return Err(MeshError::new(code, format!("reading the answer: {e}")));
            }
        }
    }
}

async fn read_answer(resp: reqwest::Response) -> Result<CallResponse, MeshError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let served_by = text("x-mesh-served-by").unwrap_or_default();
    let attempts = text("x-mesh-attempts")
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let body = read_capped(resp).await?;
    Ok(CallResponse {
        status,
        served_by,
        attempts,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_deadlines() {
        let c = Client::new("http://127.0.0.1:7600/").unwrap();
        assert_eq!(c.api(), "http://127.0.0.1:7600");
        assert_eq!(
            c.url(&["v1", "call", "a b/c"]).as_str(),
            "http://127.0.0.1:7600/v1/call/a%20b%2Fc"
        );
        let c = Client::new("http://h:1/prefix").unwrap();
        assert_eq!(c.url(&["readyz"]).as_str(), "http://h:1/prefix/readyz");
        for bad in ["nope", "ftp://h", "mailto:x@y"] {
            assert_eq!(
                Client::new(bad).unwrap_err().field.as_deref(),
                Some("api"),
                "{bad}"
            );
        }
        assert_eq!(deadline_ms(Duration::from_micros(1500)).unwrap(), 1);
        assert_eq!(deadline_ms(Duration::from_secs(2)).unwrap(), 2000);
        assert!(deadline_ms(Duration::ZERO).is_err());
        assert!(deadline_ms(Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn registration_wire_form() {
        let reg = AgentRegistration::new(
            "relay",
            "http://127.0.0.1:9000",
            [
                Capability::new("relay.echo"),
                Capability::new("x.y")
                    .proficiency("expert")
                    .cost(0.5)
                    .attribute("region", "eu"),
            ],
        )
        .max_concurrency(8);
        assert_eq!(
            serde_json::to_value(&reg).unwrap(),
            serde_json::json!({
                "name": "relay", "handler": "http://127.0.0.1:9000", "max_concurrency": 8,
                "capabilities": [
                    {"name": "relay.echo"},
                    {"name": "x.y", "proficiency": "expert", "cost": 0.5,
                     "attributes": {"region": "eu"}}
                ]
            })
        );
        let q = serde_json::to_value(QuorumOptions::default()).unwrap();
        assert_eq!(q, serde_json::json!({"n": 3}));
    }

    #[test]
    fn call_request_carries_options() {
        let c = Client::new("http://127.0.0.1:7600")
            .unwrap()
            .with_token("t0k");
        let opts = CallOptions::new()
            .policy("latency")
            .prefer("agent-2")
            .attr("region", "eu west")
            .min_proficiency("expert")
            .deadline(Duration::from_millis(1500));
        let (rb, timeout) = c
            .call_request("inv.query", b"{}".to_vec(), "application/json", &opts)
            .unwrap();
        let req = rb.build().unwrap();
        assert_eq!(
            req.url().as_str(),
            "http://127.0.0.1:7600/v1/call/inv.query?attr.region=eu+west&min_proficiency=expert"
        );
        let h = req.headers();
        assert_eq!(h["x-mesh-policy"], "latency");
        assert_eq!(h["x-mesh-prefer"], "agent-2");
        assert_eq!(h["x-mesh-deadline-ms"], "1500");
        assert_eq!(h["authorization"], "Bearer t0k");
        assert_eq!(timeout, Duration::from_millis(1500) + DEADLINE_SLACK);
        let (rb, _) = c
            .call_request("a", vec![], "application/json", &CallOptions::default())
            .unwrap();
        let req = rb.build().unwrap();
        assert_eq!(req.url().query(), None);
        assert!(req.headers().get("x-mesh-deadline-ms").is_none());
        let bad = CallOptions::new().policy("a\nb");
        assert_eq!(
            c.call_request("a", vec![], "application/json", &bad)
                .unwrap_err()
                .field
                .as_deref(),
            Some("policy")
        );
    }
}
