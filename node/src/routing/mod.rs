//! Routing: who could serve a call (candidates from the gossip snapshot and observed load),
//! how they are ranked (the policies and quality tiers), the settings per capability, and the
//! per-(agent, capability) scoreboard, breakers and limits.

pub mod locality;
pub mod policies;
pub mod router;
pub mod schemas;
pub mod scoreboard;
pub mod settings;
pub mod state;
