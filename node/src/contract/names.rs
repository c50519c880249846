//! Names and their rules, each stated once: capability names, agent names, attributes, and
//! the text the node prints for gossip states. Every layer (wire, API, `node.toml`, A2A,
//! workflows) checks names here, so all of them accept exactly the same names.

use agentmesh_gossip::record::{Health, Priority};
use agentmesh_gossip::MemberState;

/// Longest agent name, in bytes.
pub const AGENT_NAME_LEN_MAX: usize = 128;
/// Longest handler URL, in bytes.
pub const HANDLER_URL_LEN_MAX: usize = 2048;
/// Longest capability name, in bytes.
pub const CAPABILITY_NAME_LEN_MAX: usize = 128;
/// Longest attribute key or value, in bytes.
pub const ATTR_LEN_MAX: usize = 256;
/// Most values in one list attribute.
pub const ATTR_VALUES_MAX: usize = 64;
/// Largest `max_concurrency` accepted.
pub const MAX_CONCURRENCY_MAX: u32 = 65_536;

/// True for a valid capability name: 1 to [`CAPABILITY_NAME_LEN_MAX`] bytes of `[a-z0-9_.-]`.
pub fn is_capability_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= CAPABILITY_NAME_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Why `s` is not a capability name, in words a user can act on.
pub fn capability_name_rule(s: &str) -> String {
    format!(
        "{s:?} is not a capability name: 1 to {CAPABILITY_NAME_LEN_MAX} characters of [a-z0-9_.-]"
    )
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A membership state as the API, CLI and dashboard print it.
pub fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}

/// An agent's health as the API prints it.
pub fn health_name(h: Health) -> &'static str {
    match h {
        Health::Serving => "serving",
        Health::Draining => "draining",
        Health::Degraded => "degraded",
    }
}

/// A priority class as `node.toml`, metrics and the API name it.
pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Experimental => "experimental",
        Priority::Standard => "standard",
        Priority::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_follow_one_rule() {
        for (name, ok) in [
            ("inventory.query", true),
            ("a", true),
            ("a-b_c.9", true),
            ("", false),
            ("Inventory", false),
            ("has space", false),
            ("ünicode", false),
            (&"a".repeat(CAPABILITY_NAME_LEN_MAX), true),
            (&"a".repeat(CAPABILITY_NAME_LEN_MAX + 1), false),
        ] {
            assert_eq!(is_capability_name(name), ok, "{name:?}");
        }
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
