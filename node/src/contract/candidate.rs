//! A candidate: one agent, somewhere in the mesh, that could serve a call. Routing builds
//! them from the gossip snapshot; security, routing and the call pipeline all read them.

use agentmesh_crypto::NodeId;
use agentmesh_gossip::record::{Capability, NodeRecord};
use std::sync::Arc;

/// One agent that could serve the call.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its node.
    pub node_id: NodeId,
    /// Its agent name.
    pub agent: String,
    /// The capability as it declared it.
    pub capability: Capability,
    /// Its record.
    pub record: Arc<NodeRecord>,
    /// Its advertised addresses.
    pub addrs: Vec<String>,
    /// True for this node's own agent.
    pub local: bool,
}

impl Candidate {
    /// `"<node id>/<agent>"`.
    pub fn served_by(&self) -> String {
        format!("{}/{}", self.node_id, self.agent)
    }
}
