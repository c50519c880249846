//! Configuration files: `node.toml` and workflow files must parse or be refused with an error
//! naming the file and field, never a panic.

#![no_main]

use agentmesh_node::config::NodeConfig;
use agentmesh_node::workflow::spec::Workflow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = NodeConfig::parse(text, "fuzz.toml", std::path::Path::new("/nonexistent"));
    let _ = Workflow::from_toml(text, "fuzz.toml");
});
