//! Audit lines: `parse_line` must refuse any bytes with a typed error, never panic, and the
//! chain checker must accept or name a break for any sequence of parsed lines.

#![no_main]

use agentmesh_crypto::ChainChecker;
use agentmesh_node::security::audit::parse_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut c = ChainChecker::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok((_, e)) = parse_line(line) {
            c.push(e);
        }
    }
    let _ = c.finish();
});
