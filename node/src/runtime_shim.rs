//! TEMPORARY shim (api/CLI helper) with the agreed `runtime` signature, so the API, config and
//! CLI compile before the real `runtime.rs` lands. It starts nothing. Delete once it lands.
#![allow(missing_docs, dead_code)]

use crate::contract::*;
use agentmesh_crypto::{Keypair, NodeId, SignedCert};
use agentmesh_gossip::record::Priority;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum AdmissionMode {
    Open,
    Enforced { root: NodeId, mesh_id: String },
}
#[derive(Debug, Clone, Copy)]
pub enum GossipProfile {
    Lan,
    Wan,
}
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub key: Keypair,
    pub cert: Option<SignedCert>,
    pub admission: AdmissionMode,
    pub listen: Vec<String>,
    pub seeds: Vec<String>,
    pub mdns: bool,
    pub profile: GossipProfile,
    pub agent: Option<AgentRegistration>,
    pub priority: Priority,
}
#[derive(Clone)]
pub struct MeshHandle(NodeId);
impl MeshHandle {
    pub async fn start(_cfg: RuntimeConfig) -> anyhow::Result<MeshHandle> {
        anyhow::bail!("the mesh runtime is not built yet")
    }
    pub fn node_id(&self) -> NodeId {
        self.0
    }
    pub fn listen_addrs(&self) -> Vec<String> {
        vec![]
    }
    pub fn members(&self) -> Vec<MemberInfo> {
        vec![]
    }
    pub fn capabilities(&self) -> BTreeMap<String, Vec<String>> {
        BTreeMap::new()
    }
    pub fn routes(&self, _req: &CallRequest) -> Result<RouteExplanation, CallError> {
        Err(CallError::new(ErrorCode::Internal, "no runtime"))
    }
    pub async fn register_agent(&self, _reg: AgentRegistration) -> Result<(), CallError> {
        Err(CallError::new(ErrorCode::Internal, "no runtime"))
    }
    pub async fn call(&self, _req: CallRequest) -> Result<CallResponse, CallError> {
        Err(CallError::new(ErrorCode::Internal, "no runtime"))
    }
    pub fn is_ready(&self) -> bool {
        false
    }
    pub fn admission_status(&self) -> String {
        "no runtime".into()
    }
    pub async fn shutdown(&self, _drain: Duration) {}
}
