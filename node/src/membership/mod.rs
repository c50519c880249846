//! Membership: the async driver around the sans-IO gossip state machine (SWIM, records,
//! Plumtree); it carries frames and timers and makes no protocol decision.

pub mod driver;

/// Gossip timing profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GossipProfile {
    /// LAN or one data centre (500 ms period).
    #[default]
    Lan,
    /// Across regions (2 s period, longer timeouts).
    Wan,
}
