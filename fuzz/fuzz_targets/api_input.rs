//! Inputs of the local API and the A2A bridge: agent registrations, audit query strings, call
//! chain tokens, Agent Cards and JSON-RPC requests must be accepted or refused with a typed
//! error, never a panic.

#![no_main]

use agentmesh_node::resilience::chain;
use agentmesh_node::{a2a, api};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = api::parse_registration(data);
    let _ = a2a::parse_card(data);
    let _ = a2a::parse_inbound(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = api::parse_audit_query(text);
        let _ = chain::decode(text);
    }
});
