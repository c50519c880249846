//! Call headers and response frames of `/agentmesh/call/1`: decoding must refuse any bytes
//! with a typed error, never panic, and whatever decodes re-encodes to a decodable frame.

#![no_main]

use agentmesh_node::net::call_proto::{CallHeader, RespFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = CallHeader::decode(data) {
        if let Ok(again) = h.encode() {
            assert!(CallHeader::decode(&again).is_ok());
        }
    }
    if let Ok(f) = RespFrame::decode(data) {
        if let Ok(again) = f.encode() {
            assert!(RespFrame::decode(&again).is_ok());
        }
    }
});
