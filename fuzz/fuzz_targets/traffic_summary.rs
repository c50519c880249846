//! Traffic summaries carried in gossip records: `TrafficSummary::decode` must refuse any bytes
//! with a typed error, never panic.

#![no_main]

use agentmesh_node::obs::traffic::TrafficSummary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = TrafficSummary::decode(data);
});
