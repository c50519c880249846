//! `/agentmesh/audit/1` frames: requests and answers must decode or be refused with a typed
//! error, never panic; whatever decodes respects the limits and re-encodes to itself.

#![no_main]

use agentmesh_node::security::audit_proto::{AuditAnswer, AuditRequest, AUDIT_ANSWER_ENTRIES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AuditRequest::decode(data) {
        assert!(r.limit as usize <= AUDIT_ANSWER_ENTRIES_MAX);
        let again = r.encode().expect("a decoded request re-encodes");
        assert_eq!(AuditRequest::decode(&again).ok(), Some(r.clone()));
        let _ = r.to_query();
    }
    if let Ok(a) = AuditAnswer::decode(data) {
        let again = a.encode().expect("a decoded answer re-encodes");
        assert_eq!(AuditAnswer::decode(&again).ok(), Some(a));
    }
});
