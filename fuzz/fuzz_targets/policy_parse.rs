//! RBAC policy files: `Policy::parse` must refuse any text with a typed error naming a key,
//! never panic; a policy that parses decides every call without panicking, and deny wins.

#![no_main]

use agentmesh_node::security::rbac::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = Policy::parse(text, "fuzz.toml") else {
        return;
    };
    let roles = vec!["processing".to_string(), "admin".to_string()];
    let d = p.decide(&roles, &roles, "customer.read");
    if d.rule.starts_with("deny") {
        assert!(!d.allowed);
    }
});
