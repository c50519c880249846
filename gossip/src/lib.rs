//! Sans-IO gossip for agentmesh: SWIM membership with Lifeguard, self-signed membership
//! identities, signed node records spread by Plumtree push and anti-entropy pull, and peer
//! scoring.
//!
//! The API follows quinn-proto: feed [`Input`]s with [`Gossip::handle`] at time `now`, then
//! drain [`Gossip::poll_output`] and call [`Input::Tick`] at [`Gossip::next_timeout`]. Nothing
//! here reads a clock, a socket or a global RNG.

pub mod broadcast;
pub mod config;
pub mod member;
pub mod record;
pub mod revocations;
pub mod score;
pub mod state;
pub mod suspicion;
mod table;
mod time;
pub mod verify;
pub mod wire;

pub use config::{Admission, Config};
pub use member::{MemberInfo, MemberState, SignedMember, Update};
pub use record::{
    AgentInfo, AttrValue, Capability, Health, NodeRecord, Priority, Proficiency, SignedRecord,
    Version,
};
pub use state::{
    CapabilityMatch, CapabilityQuery, Event, Gossip, GossipError, Input, MemberView, Millis,
    Output, RecordUpdate, SharedView, Stats,
};
pub use verify::{StrictVerifier, Verifier};
pub use wire::{Message, WireError};
