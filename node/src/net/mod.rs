//! Networking: the libp2p swarm (QUIC, identify, mDNS, gossip/admission/audit streams), the
//! call plane (a quinn endpoint of its own) and the framing of the call protocol.

pub mod call_endpoint;
pub mod call_proto;
pub mod frame;
pub mod transport;
