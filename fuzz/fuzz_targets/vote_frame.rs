//! Quorum votes: a `RespFrame::Vote` from a callee and a `QuorumDecision` read back from a
//! file must decode or be refused with a typed error, and verifying whatever decodes must
//! never panic. A vote that verifies must stop verifying once its answer hash changes.

#![no_main]

use agentmesh_node::net::call_proto::RespFrame;
use agentmesh_node::quorum::{verify_decision, QuorumDecision};
use agentmesh_vote::{Equivocation, SignedVote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(RespFrame::Vote(v)) = RespFrame::decode(data) {
        check_vote(&v);
    }
    if let Ok(v) = postcard::from_bytes::<SignedVote>(data) {
        check_vote(&v);
    }
    if let Ok(e) = postcard::from_bytes::<Equivocation>(data) {
        let _ = e.verify();
    }
    if let Ok(d) = serde_json::from_slice::<QuorumDecision>(data) {
        let _ = verify_decision(&d, None);
    }
});

fn check_vote(v: &SignedVote) {
    if v.verify().is_ok() {
        let mut forged = *v;
        forged.vote.answer_hash[0] ^= 1;
        assert!(forged.verify().is_err(), "a changed answer kept its vote");
    }
}
