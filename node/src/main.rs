//! agentmesh node.
fn main() {}
