//! Time as the state machine sees it: a plain number the caller passes in. A leaf module, so
//! `state`, `table` and `suspicion` can all use it without importing each other.

/// Milliseconds on the caller's clock (the node uses the UNIX epoch; certificates are checked
/// against `now / 1000`).
pub type Millis = u64;
