//! Role-based access control between agents: a policy file says which caller roles may call
//! which callee roles or capabilities.
//!
//! ```toml
//! version = 3                 # optional; a gossiped policy replaces an older version only
//! mode = "enforce"            # enforce | audit_only (log what would be denied, deny nothing)
//!
//! [[deny]]                    # deny rules are evaluated first
//! caller_roles = ["processing"]
//! callee_roles = ["admin"]
//!
//! [[allow]]                   # then allow rules; anything not allowed is denied
//! caller_roles = ["processing"]
//! callee_roles = ["analysis"]
//!
//! [[allow]]
//! caller_roles = ["*"]
//! capabilities = ["customer.*"]
//! ```
//!
//! A rule matches when the caller holds a role matching one of `caller_roles`, and, for each
//! of `callee_roles` and `capabilities` that is present, the callee holds a matching role and
//! the capability matches. Patterns are globs where `*` matches any run of characters
//! (`customer.*` matches `customer.read` and `customer.a.b`). Roles come only from admission
//! certificates. Without a policy everything is allowed except `mesh.audit` (reading other
//! nodes' audit logs), which always needs an allow rule; once a policy is configured,
//! everything it does not allow is denied.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Largest policy file read, in bytes.
pub const POLICY_BYTES_MAX: usize = 4 * 1024;
/// Most rules (deny plus allow) in one policy.
pub const RULES_MAX: usize = 256;
/// Most patterns in one list of a rule.
pub const PATTERNS_MAX: usize = 32;
/// Longest pattern, in bytes.
pub const PATTERN_LEN_MAX: usize = 128;
/// The pseudo-capability an `audit query --mesh` request is checked against: a policy must
/// allow the querier's roles `mesh.audit` on a member for it to answer.
pub const AUDIT_QUERY_CAPABILITY: &str = "mesh.audit";
/// Most `(caller role, capability)` series of the denial counter; the rest count as `other`.
pub const DENIED_SERIES_MAX: usize = 256;

/// Whether denials are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Deny what the policy does not allow.
    #[default]
    Enforce,
    /// Log and count what would be denied, but let it through.
    AuditOnly,
}

/// One allow or deny rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Caller role patterns (required; `["*"]` for any caller).
    pub caller_roles: Vec<String>,
    /// Callee role patterns (absent: any callee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callee_roles: Option<Vec<String>>,
    /// Capability patterns (absent: any capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Version; a gossiped policy replaces only an older one.
    #[serde(default)]
    pub version: u64,
    /// Enforce or audit only.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Deny rules (checked first).
    #[serde(default)]
    pub deny: Vec<Rule>,
    /// Allow rules.
    #[serde(default)]
    pub allow: Vec<Rule>,
}

/// A policy file error: which file, which key, what would be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct PolicyError {
    /// The file (or `<gossip>` for a distributed policy).
    pub file: String,
    /// The dotted key at fault (`allow[2].caller_roles`), or `-`.
    pub key: String,
    /// What is wrong and what is valid.
    pub message: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The policy allows the call.
    pub allowed: bool,
    /// The call may proceed: allowed, or denied in `audit_only` mode.
    pub permitted: bool,
    /// Which rule decided: `deny[0]`, `allow[2]`, `default deny` or `no policy`.
    pub rule: String,
}

impl Decision {
    /// `allow`, `deny` or `audit_only_deny`, as written in the audit log and counted.
    pub fn label(&self) -> &'static str {
        match (self.allowed, self.permitted) {
            (true, _) => "allow",
            (false, false) => "deny",
            (false, true) => "audit_only_deny",
        }
    }
}

/// The dotted key a TOML error points at: `allow[1].caller_roles`, `mode`, or `-`.
fn toml_key(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return "-".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    // The table: the last header above; `[[allow]]` headers are counted into an index.
    let header = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['));
    let table = header.map(|h| {
        let name = h.trim_matches(|c| c == '[' || c == ']');
        if h.starts_with("[[") {
            let n = before[..line_start]
                .lines()
                .filter(|l| l.trim() == h)
                .count();
            format!("{name}[{}]", n.saturating_sub(1))
        } else {
            name.to_string()
        }
    });
    let inline = line
        .strip_prefix("[[")
        .map(|l| l.trim_end_matches(']').to_string());
    match (table, key, inline) {
        (_, _, Some(t)) => {
            let n = before.lines().filter(|l| l.trim() == line).count();
            format!("{t}[{n}]")
        }
        (Some(t), Some(k), _) => format!("{t}.{k}"),
        (None, Some(k), _) => k.to_string(),
        (Some(t), None, _) => t,
        (None, None, _) => "-".into(),
    }
}

/// True if `text` matches the glob `pat` (`*` matches any run, possibly empty).
pub fn glob_match(pat: &str, text: &str) -> bool {
    let (p, t) = (pat.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn any_match(pats: &[String], values: &[String]) -> bool {
    pats.iter().any(|p| values.iter().any(|v| glob_match(p, v)))
}

impl Rule {
    fn matches(&self, caller_roles: &[String], callee_roles: &[String], capability: &str) -> bool {
        any_match(&self.caller_roles, caller_roles)
            && self
                .callee_roles
                .as_ref()
                .is_none_or(|p| any_match(p, callee_roles))
            && self
                .capabilities
                .as_ref()
                .is_none_or(|p| p.iter().any(|p| glob_match(p, capability)))
    }
}

fn check_patterns(key: &str, pats: &[String]) -> Result<(), (String, String)> {
    if pats.is_empty() {
        return Err((
            key.into(),
            "needs at least one pattern (\"*\" for any)".into(),
        ));
    }
    if pats.len() > PATTERNS_MAX {
        return Err((key.into(), format!("at most {PATTERNS_MAX} patterns")));
    }
    for (i, p) in pats.iter().enumerate() {
        let ok = !p.is_empty()
            && p.len() <= PATTERN_LEN_MAX
            && p.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-*:/".contains(&c));
        if !ok {
            return Err((
                format!("{key}[{i}]"),
                format!(
                    "{p:?} is not a pattern: 1..={PATTERN_LEN_MAX} bytes of letters, digits, \
                     '.', '_', '-', ':', '/' and '*'"
                ),
            ));
        }
    }
    Ok(())
}

impl Policy {
    /// Parses and validates policy TOML; errors name `file` and the key.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let err = |key: String, message: String| PolicyError {
            file: file.to_string(),
            key,
            message,
        };
        if text.len() > POLICY_BYTES_MAX {
            return Err(err(
                "-".into(),
                format!("{} bytes; limit is {POLICY_BYTES_MAX}", text.len()),
            ));
        }
        let p: Policy = toml::from_str(text).map_err(|e| {
            let mut key = toml_key(text, &e);
            // serde names a missing field only in the message.
            if let Some(f) = e.message().split("missing field `").nth(1) {
                key = format!("{key}.{}", f.split('`').next().unwrap_or(""));
            }
            err(key, e.message().to_string())
        })?;
        if p.deny.len() + p.allow.len() > RULES_MAX {
            return Err(err("-".into(), format!("at most {RULES_MAX} rules")));
        }
        for (list, rules) in [("deny", &p.deny), ("allow", &p.allow)] {
            for (i, r) in rules.iter().enumerate() {
                let at = format!("{list}[{i}]");
                check_patterns(&format!("{at}.caller_roles"), &r.caller_roles)
                    .map_err(|(k, m)| err(k, m))?;
                if let Some(c) = &r.callee_roles {
                    check_patterns(&format!("{at}.callee_roles"), c).map_err(|(k, m)| err(k, m))?;
                }
                if let Some(c) = &r.capabilities {
                    check_patterns(&format!("{at}.capabilities"), c).map_err(|(k, m)| err(k, m))?;
                }
            }
        }
        Ok(p)
    }

    /// Reads and validates a policy file (size checked before reading it whole).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let whole = |message: String| PolicyError {
            file: file.clone(),
            key: "-".into(),
            message,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| whole(e.to_string()))?
            .len();
        if len > POLICY_BYTES_MAX as u64 {
            return Err(whole(format!("{len} bytes; limit is {POLICY_BYTES_MAX}")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| whole(e.to_string()))?;
        Policy::parse(&text, &file)
    }

    /// Decides a call: deny rules first, then allow rules, then default deny.
    pub fn decide(
        &self,
        caller_roles: &[String],
        callee_roles: &[String],
        capability: &str,
    ) -> Decision {
        let audit_only = self.mode == PolicyMode::AuditOnly;
        let hit = |list: &[Rule]| {
            list.iter()
                .position(|r| r.matches(caller_roles, callee_roles, capability))
        };
        let (allowed, rule) = if let Some(i) = hit(&self.deny) {
            (false, format!("deny[{i}]"))
        } else if let Some(i) = hit(&self.allow) {
            (true, format!("allow[{i}]"))
        } else {
            (false, "default deny".to_string())
        };
        Decision {
            allowed,
            permitted: allowed || audit_only,
            rule,
        }
    }
}

/// Counters of RBAC decisions, named as they appear in metrics.
#[derive(Debug, Default)]
pub struct RbacCounters {
    /// `agentmesh_rbac_allowed_total`.
    pub allowed_total: AtomicU64,
    /// `agentmesh_rbac_denied_total`: calls refused (caller pre-check or callee).
    pub denied_total: AtomicU64,
    /// `agentmesh_rbac_audit_only_denied_total`: would have been denied (audit_only mode).
    pub audit_only_denied_total: AtomicU64,
    /// `agentmesh_rbac_denied_inbound_total`: inbound calls refused by this node as callee.
    pub denied_inbound_total: AtomicU64,
    /// Denials by `(caller roles, capability)`, at most [`DENIED_SERIES_MAX`] series.
    pub denied_by: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

impl RbacCounters {
    /// Counts a denial under its caller roles (joined with `,`; `none` without roles) and
    /// capability, or under `other` once [`DENIED_SERIES_MAX`] series exist.
    fn count_denied(&self, caller: &[String], capability: &str) {
        let role = if caller.is_empty() {
            "none".to_string()
        } else {
            let mut r = caller.to_vec();
            r.sort();
            r.join(",")
        };
        let mut m = self.denied_by.lock().unwrap_or_else(|p| p.into_inner());
        let key = (role, capability.to_string());
        let key = if m.contains_key(&key) || m.len() < DENIED_SERIES_MAX {
            key
        } else {
            ("other".into(), "other".into())
        };
        *m.entry(key).or_default() += 1;
    }

    /// `(caller roles, capability, denials)` of every series.
    pub fn denied_series(&self) -> Vec<(String, String, u64)> {
        let m = self.denied_by.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .map(|((r, c), n)| (r.clone(), c.clone(), *n))
            .collect()
    }
}

/// The policy in force on this node, replaceable at run time (file reload or gossip).
#[derive(Debug, Default)]
pub struct Rbac {
    policy: RwLock<Option<Arc<Policy>>>,
    /// Decision counters.
    pub counters: RbacCounters,
}

impl Rbac {
    /// RBAC with `policy` (None: everything allowed).
    pub fn new(policy: Option<Policy>) -> Self {
        Rbac {
            policy: RwLock::new(policy.map(Arc::new)),
            counters: RbacCounters::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version in force (0 without a policy).
    pub fn version(&self) -> u64 {
        self.policy().map(|p| p.version).unwrap_or(0)
    }

    /// Replaces the policy.
    pub fn set(&self, p: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(p));
    }

    /// Decides without counting (route filtering and explanations).
    pub fn peek(&self, caller: &[String], callee: &[String], capability: &str) -> Decision {
        match self.policy() {
            // Reading another node's audit log is never open by default.
            None if capability == AUDIT_QUERY_CAPABILITY => Decision {
                allowed: false,
                permitted: false,
                rule: "no policy (mesh.audit needs an allow rule)".into(),
            },
            None => Decision {
                allowed: true,
                permitted: true,
                rule: "no policy".into(),
            },
            Some(p) => p.decide(caller, callee, capability),
        }
    }

    /// Decides and counts; `inbound` marks the callee's authoritative check.
    pub fn check(
        &self,
        caller: &[String],
        callee: &[String],
        capability: &str,
        inbound: bool,
    ) -> Decision {
        let d = self.peek(caller, callee, capability);
        let c = &self.counters;
        match d.label() {
            "allow" => c.allowed_total.fetch_add(1, Ordering::Relaxed),
            "deny" => {
                if inbound {
                    c.denied_inbound_total.fetch_add(1, Ordering::Relaxed);
                }
                c.count_denied(caller, capability);
                c.denied_total.fetch_add(1, Ordering::Relaxed)
            }
            _ => {
                tracing::warn!(capability, rule = %d.rule, "audit_only: this call would be denied");
                c.audit_only_denied_total.fetch_add(1, Ordering::Relaxed)
            }
        };
        d
    }

    /// The counters as `(metric name, value)` pairs.
    pub fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            (
                "agentmesh_rbac_allowed_total",
                c.allowed_total.load(Ordering::Relaxed),
            ),
            (
                "agentmesh_rbac_denied_total",
                c.denied_total.load(Ordering::Relaxed),
            ),
            (
                "agentmesh_rbac_denied_inbound_total",
                c.denied_inbound_total.load(Ordering::Relaxed),
            ),
            (
                "agentmesh_rbac_audit_only_denied_total",
                c.audit_only_denied_total.load(Ordering::Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    const EXAMPLE: &str = r#"
        version = 1
        [[deny]]
        caller_roles = ["processing"]
        callee_roles = ["admin"]
        [[allow]]
        caller_roles = ["processing"]
        callee_roles = ["analysis"]
        [[allow]]
        caller_roles = ["*"]
        capabilities = ["customer.*"]
    "#;

    #[test]
    fn globs() {
        let cases = [
            ("*", "anything", true),
            ("customer.*", "customer.read", true),
            ("customer.*", "customer.a.b", true),
            ("customer.*", "customer", false),
            ("customer.*", "customers.read", false),
            ("*.read", "customer.read", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("", "", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn processing_may_call_analysis_but_not_admin() {
        let p = Policy::parse(EXAMPLE, "policy.toml").unwrap();
        let cases = [
            (
                &["processing"][..],
                &["analysis"][..],
                "report.run",
                true,
                "allow[0]",
            ),
            (&["processing"], &["admin"], "admin.reset", false, "deny[0]"),
            // Deny wins even when an allow rule would match too.
            (
                &["processing"],
                &["admin", "analysis"],
                "x",
                false,
                "deny[0]",
            ),
            (&["anyone"], &["crm"], "customer.read", true, "allow[1]"),
            (
                &["processing"],
                &["admin"],
                "customer.read",
                false,
                "deny[0]",
            ),
            (&["anyone"], &["crm"], "orders.read", false, "default deny"),
            (&[], &["analysis"], "report.run", false, "default deny"),
        ];
        for (caller, callee, cap, allowed, rule) in cases {
            let d = p.decide(&roles(caller), &roles(callee), cap);
            assert_eq!(d.allowed, allowed, "{caller:?} -> {callee:?} {cap}");
            assert_eq!(d.permitted, allowed);
            assert_eq!(d.rule, rule);
        }
    }

    #[test]
    fn audit_only_permits_but_labels() {
        let text = format!("mode = \"audit_only\"\n{EXAMPLE}");
        let p = Policy::parse(&text, "p").unwrap();
        let d = p.decide(&roles(&["processing"]), &roles(&["admin"]), "x");
        assert!(!d.allowed && d.permitted);
        assert_eq!(d.label(), "audit_only_deny");
        let rbac = Rbac::new(Some(p));
        rbac.check(&roles(&["processing"]), &roles(&["admin"]), "x", true);
        assert_eq!(
            rbac.counters
                .audit_only_denied_total
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(rbac.counters.denied_total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_policy_allows_everything_but_reading_audit_logs() {
        let r = Rbac::new(None);
        assert!(r.check(&[], &[], "x", true).permitted);
        let any = ["admin".to_string(), "auditor".to_string()];
        let d = r.check(&any, &any, AUDIT_QUERY_CAPABILITY, true);
        assert!(!d.permitted && !d.allowed, "{d:?}");
        assert!(d.rule.contains("mesh.audit needs an allow rule"), "{d:?}");
    }

    #[test]
    fn invalid_policies_name_the_key() {
        let cases = [
            ("[[allow]]\ncallee_roles = [\"a\"]\n", "caller_roles", "missing"),
            ("[[allow]]\ncaller_roles = []\n", "allow[0].caller_roles", "at least one"),
            (
                "[[deny]]\ncaller_roles = [\"ok\", \"bad role\"]\n",
                "deny[0].caller_roles[1]",
                "not a pattern",
            ),
            ("mode = \"lenient\"\n", "mode", "enforce"),
            (
                "[[allow]]\ncaller_roles = [\"a\"]\n[[allow]]\ncaller_roles = [\"a\"]\ncalee = [\"b\"]\n",
                "allow[1].calee",
                "unknown",
            ),
        ];
        for (text, key, msg) in cases {
            let e = Policy::parse(text, "p.toml").unwrap_err();
            assert_eq!(e.file, "p.toml");
            assert!(
                e.key.contains(key),
                "{text}: key {} should contain {key}",
                e.key
            );
            assert!(e.message.contains(msg), "{text}: {}", e.message);
        }
        let big = "#".repeat(POLICY_BYTES_MAX + 1);
        assert!(Policy::parse(&big, "p").is_err());
    }
}
