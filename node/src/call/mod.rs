//! One call's path: the outbound pipeline (route, attempt, retry, hedge), the caller side of
//! one attempt over the call plane, the callee side that hands an inbound call to the local
//! agent, and the call's spans and metrics.

pub mod body;
pub mod callee;
pub mod caller;
pub mod observe;
pub mod pipeline;
pub mod support;
pub mod voters;
