//! Harness for the cross-process tests: builds the `agentmesh` binary, starts real node and
//! demo-agent processes on loopback, and kills them on drop.
#![forbid(unsafe_code)]
