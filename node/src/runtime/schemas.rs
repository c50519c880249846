//! Typed capabilities at run time (a child module of `runtime`): serve `/agentmesh/schema/1`
//! (a schema by its hash, to admitted peers), fetch schemas from their owners on demand, and
//! validate a call's input before routing.

use super::*;
use crate::contract::schema::{validate_input, SCHEMA_BYTES_MAX};
use crate::net::frame::{read_frame, write_frame};
use crate::net::transport::SCHEMA_PROTOCOL;
use crate::routing::schemas::KnownSchema;
use agentmesh_gossip::record::{Capability, SchemaHash};
use futures::AsyncWriteExt;

/// How long a schema fetch from one owner may take.
pub const SCHEMA_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Most owners asked for one schema before giving up.
pub const SCHEMA_OWNERS_ASKED_MAX: usize = 3;
/// Most inbound schema streams served at once.
pub const SCHEMA_STREAMS_MAX: usize = 32;
/// Largest schema answer frame: the schema plus postcard's envelope.
const SCHEMA_ANSWER_BYTES_MAX: usize = SCHEMA_BYTES_MAX + 16;
/// A request frame: one 32-byte hash.
const SCHEMA_REQUEST_BYTES_MAX: usize = 64;

/// One capability as `GET /v1/capabilities` details it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CapabilityDetail {
    /// The capability.
    pub name: String,
    /// Description (the first offer's that has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The input schema, if an offer declares one and it could be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// Its hash (as gossiped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_schema_hash: Option<String>,
    /// The output schema, if declared and fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<serde_json::Value>,
    /// Its hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_schema_hash: Option<String>,
    /// `agent@<node short id>` of every alive offer.
    pub offered_by: Vec<String>,
}

impl MeshHandle {
    /// The alive offers of `capability`: (node, capability as gossiped).
    fn offers_of(&self, capability: &str) -> Vec<(NodeId, Capability)> {
        let snap = snapshot(&self.0.calls.gossip);
        snap.members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .filter_map(|m| {
                let agent = m.record.as_ref()?.agent.as_ref()?;
                let c = agent.capabilities.iter().find(|c| c.name == capability)?;
                Some((m.node_id, c.clone()))
            })
            .collect()
    }

    /// A fingerprint of the mesh's capability set (names, descriptions and schema hashes of
    /// alive offers): it changes when a tool list built from them would.
    pub fn capability_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut set = std::collections::BTreeSet::new();
        for m in snapshot(&self.0.calls.gossip).members.iter() {
            if m.state != MemberState::Alive {
                continue;
            }
            if let Some(a) = m.record.as_ref().and_then(|r| r.agent.as_ref()) {
                for c in &a.capabilities {
                    set.insert((
                        c.name.clone(),
                        c.description.clone(),
                        c.input_schema,
                        c.output_schema,
                    ));
                }
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        set.hash(&mut h);
        h.finish()
    }

    /// Every alive capability with its description, schemas (fetched when not held) and
    /// offers, sorted by name.
    pub async fn capability_details(&self) -> Vec<CapabilityDetail> {
        let mut by_name: BTreeMap<String, CapabilityDetail> = BTreeMap::new();
        let mut hashes: BTreeMap<String, (Option<SchemaHash>, Option<SchemaHash>)> =
            BTreeMap::new();
        for m in snapshot(&self.0.calls.gossip).members.iter() {
            if m.state != MemberState::Alive {
                continue;
            }
            let Some(agent) = m.record.as_ref().and_then(|r| r.agent.as_ref()) else {
                continue;
            };
            for c in &agent.capabilities {
                let d = by_name
                    .entry(c.name.clone())
                    .or_insert_with(|| CapabilityDetail {
                        name: c.name.clone(),
                        description: None,
                        input_schema: None,
                        input_schema_hash: None,
                        output_schema: None,
                        output_schema_hash: None,
                        offered_by: vec![],
                    });
                d.offered_by
                    .push(format!("{}@{}", agent.name, m.node_id.short()));
                if d.description.is_none() {
                    d.description = c.description.clone();
                }
                let h = hashes.entry(c.name.clone()).or_default();
                h.0 = h.0.or(c.input_schema);
                h.1 = h.1.or(c.output_schema);
            }
        }
        for (name, (i, o)) in hashes {
            let d = by_name.get_mut(&name).expect("same keys");
            if let Some(i) = i {
                d.input_schema_hash = Some(i.to_hex());
                d.input_schema = self.schema(i).await.map(|k| (*k.schema).clone());
            }
            if let Some(o) = o {
                d.output_schema_hash = Some(o.to_hex());
                d.output_schema = self.schema(o).await.map(|k| (*k.schema).clone());
            }
        }
        by_name.into_values().collect()
    }

    /// The schema with hash `h`: held locally, cached, or fetched from a member whose record
    /// names it (at most [`SCHEMA_OWNERS_ASKED_MAX`] asked). None if nobody could serve it.
    pub async fn schema(&self, h: SchemaHash) -> Option<KnownSchema> {
        if let Some(k) = self.0.schemas.get(&h) {
            return Some(k);
        }
        let me = self.0.calls.node_id;
        let owners: Vec<(NodeId, Vec<String>)> = snapshot(&self.0.calls.gossip)
            .members
            .iter()
            .filter(|m| m.node_id != me && m.state == MemberState::Alive)
            .filter(|m| {
                m.record
                    .as_ref()
                    .and_then(|r| r.agent.as_ref())
                    .is_some_and(|a| {
                        a.capabilities
                            .iter()
                            .any(|c| c.input_schema == Some(h) || c.output_schema == Some(h))
                    })
            })
            .take(SCHEMA_OWNERS_ASKED_MAX)
            .map(|m| (m.node_id, m.addrs.clone()))
            .collect();
        for (id, addrs) in owners {
            match tokio::time::timeout(SCHEMA_FETCH_TIMEOUT, self.fetch_schema(id, addrs, h)).await
            {
                Ok(Ok(Some(bytes))) => {
                    if let Some(k) = self.0.schemas.insert_fetched(h, &bytes) {
                        return Some(k);
                    }
                    tracing::warn!(peer = %id, "peer served a schema that does not match its hash");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(peer = %id, "schema fetch failed: {e}"),
                Err(_) => tracing::debug!(peer = %id, "schema fetch timed out"),
            }
        }
        None
    }

    async fn fetch_schema(
        &self,
        id: NodeId,
        addrs: Vec<String>,
        h: SchemaHash,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let unreachable = |m: String| CallError::new(ErrorCode::AgentUnreachable, m);
        let stream = self
            .open_admitted_stream(id, &addrs, SCHEMA_PROTOCOL)
            .await?;
        let (mut r, mut w) = futures::AsyncReadExt::split(stream);
        let req = postcard::to_allocvec(&h.0).expect("32 bytes encode");
        write_frame(&mut w, &req, SCHEMA_REQUEST_BYTES_MAX)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = w.close().await;
        let frame = read_frame(&mut r, SCHEMA_ANSWER_BYTES_MAX)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        postcard::from_bytes::<Option<Vec<u8>>>(&frame)
            .map_err(|e| unreachable(format!("malformed schema answer: {e}")))
    }

    /// Serves inbound schema requests from admitted peers until the transport stops.
    pub(super) async fn schema_accept_loop(self, mut incoming: libp2p_stream::IncomingStreams) {
        let slots = Arc::new(tokio::sync::Semaphore::new(SCHEMA_STREAMS_MAX));
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(from) = crate::net::transport::node_of(&peer) else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many inbound schema streams; dropping one");
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(SCHEMA_FETCH_TIMEOUT, this.serve_schema(from, stream))
                    .await;
                drop(permit);
            });
        }
    }

    async fn serve_schema(&self, from: NodeId, stream: libp2p::Stream) {
        let (mut r, mut w) = futures::AsyncReadExt::split(stream);
        // Only admitted members learn schemas, as only they learn capabilities.
        if self.0.calls.admission.caller_roles(&from).await.is_err() {
            return;
        }
        let Ok(frame) = read_frame(&mut r, SCHEMA_REQUEST_BYTES_MAX).await else {
            return;
        };
        let Ok(h) = postcard::from_bytes::<[u8; 32]>(&frame) else {
            return;
        };
        let answer: Option<Vec<u8>> = self.0.schemas.bytes(&SchemaHash(h));
        let bytes = postcard::to_allocvec(&answer).unwrap_or_default();
        let _ = write_frame(&mut w, &bytes, SCHEMA_ANSWER_BYTES_MAX).await;
        let _ = w.close().await;
    }

    /// Checks `req`'s body against the capability's input schema before any hop. Applies when
    /// every alive offer (or the pinned node's) declares an input schema; the body must satisfy
    /// at least one of the distinct schemas declared. A schema no owner can serve is skipped
    /// (counted in `agentmesh_schema_unavailable_total`), so an unreachable owner does not turn
    /// into a validation failure; routing then reports it.
    pub(crate) async fn check_input(&self, req: &CallRequest) -> Result<(), CallError> {
        let mut offers = self.offers_of(&req.capability);
        if let Some(pin) = req.pin {
            offers.retain(|(id, _)| *id == pin);
        }
        if offers.is_empty() || offers.iter().any(|(_, c)| c.input_schema.is_none()) {
            return Ok(());
        }
        let mut distinct: Vec<SchemaHash> =
            offers.iter().filter_map(|(_, c)| c.input_schema).collect();
        distinct.sort();
        distinct.dedup();
        let mut first_err = None;
        for h in distinct {
            let Some(validator) = self.schema(h).await.and_then(|k| k.validator) else {
                self.0.calls.metrics.schema_unavailable();
                return Ok(());
            };
            match validate_input(&validator, &req.body) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => {
                self.0.calls.metrics.input_rejected(&req.capability);
                Err(e)
            }
            None => Ok(()),
        }
    }
}
