//! The call chain: `(node, capability)` hops, oldest first. It travels in the call header
//! between nodes, and to agents as an opaque token (`x-mesh-chain`) that an agent copies into
//! its onward calls, so the next node knows the whole chain. Loops and over-long chains are
//! refused with `loop_detected` before anything is sent.

use crate::contract::{CallError, ErrorCode};
use crate::net::call_proto::{CAPABILITY_LEN_MAX, CHAIN_LEN_MAX};
use agentmesh_crypto::NodeId;

/// Longest `x-mesh-chain` token accepted, in bytes (hex of a full chain fits).
pub const CHAIN_TOKEN_LEN_MAX: usize = 2 * CHAIN_LEN_MAX * (CAPABILITY_LEN_MAX + 64);

/// The chain as carried in headers.
pub type Chain = Vec<(NodeId, String)>;

/// Encodes a chain as an opaque token (hex of its postcard encoding).
pub fn encode(chain: &Chain) -> String {
    hex::encode(postcard::to_stdvec(chain).unwrap_or_default())
}

/// Decodes a token; its size is checked before decoding. Bad tokens are `bad_request`.
pub fn decode(token: &str) -> Result<Chain, CallError> {
    let bad = |m: &str| CallError::bad_field("x-mesh-chain", m);
    if token.len() > CHAIN_TOKEN_LEN_MAX {
        return Err(bad("chain token too long"));
    }
    let bytes = hex::decode(token.trim()).map_err(|_| bad("chain token is not hex"))?;
    let chain: Chain = postcard::from_bytes(&bytes).map_err(|_| bad("malformed chain token"))?;
    if chain.len() > CHAIN_LEN_MAX || chain.iter().any(|(_, c)| c.len() > CAPABILITY_LEN_MAX) {
        return Err(bad("chain token exceeds the chain limits"));
    }
    Ok(chain)
}

/// Extends `chain` with `(me, capability)`, refusing a revisit of the same node for the same
/// capability, and a chain longer than `hop_limit`.
pub fn extend(
    mut chain: Chain,
    me: NodeId,
    capability: &str,
    hop_limit: u32,
) -> Result<Chain, CallError> {
    if let Some(pos) = chain.iter().position(|(n, c)| *n == me && c == capability) {
        return Err(CallError::new(
            ErrorCode::LoopDetected,
            format!(
                "call loop: node {} already called {capability} at hop {} of this chain ({})",
                me.short(),
                pos + 1,
                describe(&chain)
            ),
        ));
    }
    if chain.len() >= hop_limit as usize {
        return Err(CallError::new(
            ErrorCode::LoopDetected,
            format!(
                "hop limit {hop_limit} reached ({}); not sent",
                describe(&chain)
            ),
        ));
    }
    chain.push((me, capability.to_string()));
    Ok(chain)
}

/// `node/cap → node/cap → …` with short ids.
pub fn describe(chain: &Chain) -> String {
    chain
        .iter()
        .map(|(n, c)| format!("{}/{c}", n.short()))
        .collect::<Vec<_>>()
        .join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        agentmesh_crypto::Keypair::from_secret([b; 32]).node_id()
    }

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let c = vec![(n(1), "a".to_string()), (n(2), "b".to_string())];
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        for bad in ["zz", "05ff", &"a".repeat(CHAIN_TOKEN_LEN_MAX + 2)] {
            assert_eq!(
                decode(bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad:.20}"
            );
        }
    }

    /// (chain so far, node, capability, hop limit, loop?).
    #[test]
    fn loop_and_hop_table() {
        let c = |hops: &[(u8, &str)]| -> Chain {
            hops.iter().map(|(b, s)| (n(*b), s.to_string())).collect()
        };
        let cases: Vec<(Chain, u8, &str, u32, bool)> = vec![
            (c(&[]), 1, "a", 8, false),
            (c(&[(1, "a")]), 2, "b", 8, false),
            (c(&[(1, "a"), (2, "b"), (3, "c")]), 1, "a", 8, true), // A→B→C→A
            (c(&[(1, "a")]), 1, "b", 8, false),                    // same node, other capability
            (c(&[(2, "a")]), 1, "a", 8, false),                    // same capability, other node
            (c(&[(1, "a"), (2, "b")]), 3, "c", 2, true),           // hop limit
            (c(&[(1, "a")]), 3, "c", 2, false),
        ];
        for (chain, me, cap, limit, want_loop) in cases {
            let len = chain.len();
            match extend(chain, n(me), cap, limit) {
                Ok(out) => {
                    assert!(!want_loop, "expected a refusal at hop {len}");
                    assert_eq!(out.len(), len + 1);
                }
                Err(e) => {
                    assert!(want_loop, "unexpected refusal: {e:?}");
                    assert_eq!(e.code, ErrorCode::LoopDetected);
                }
            }
        }
    }
}
