//! The one validator of an agent registration, shared by `node.toml`, `PUT /v1/agent`, the
//! A2A bridge and the runtime, so every entry point accepts exactly the same registrations.

use super::names::{
    capability_name_rule, is_capability_name, AGENT_NAME_LEN_MAX, ATTR_LEN_MAX, ATTR_VALUES_MAX,
    HANDLER_URL_LEN_MAX, MAX_CONCURRENCY_MAX,
};
use super::{AgentRegistration, CallError};
use agentmesh_gossip::record::{ATTRIBUTES_MAX, CAPABILITIES_MAX, DESCRIPTION_LEN_MAX};

/// An invalid field of an agent registration, shared by `node.toml` and `PUT /v1/agent`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field at fault, e.g. `capabilities[2].name`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks an agent registration against the named limits. Shared by the config file and
/// `PUT /v1/agent`, so both accept exactly the same registrations.
pub fn validate_registration(reg: &AgentRegistration) -> Result<(), FieldError> {
    if reg.name.trim().is_empty() || reg.name.len() > AGENT_NAME_LEN_MAX {
        return Err(field_err(
            "name",
            format!("must be 1 to {AGENT_NAME_LEN_MAX} bytes, not blank"),
        ));
    }
    if reg.name.chars().any(char::is_control) {
        return Err(field_err("name", "must not contain control characters"));
    }
    check_handler(&reg.handler)?;
    if reg.max_concurrency == 0 || reg.max_concurrency > MAX_CONCURRENCY_MAX {
        return Err(field_err(
            "max_concurrency",
            format!("must be 1 to {MAX_CONCURRENCY_MAX}"),
        ));
    }
    if reg.capabilities.len() > CAPABILITIES_MAX {
        return Err(field_err(
            "capabilities",
            format!("at most {CAPABILITIES_MAX} capabilities"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in reg.capabilities.iter().enumerate() {
        let at = |f: &str| format!("capabilities[{i}].{f}");
        if !is_capability_name(&c.name) {
            return Err(field_err(at("name"), capability_name_rule(&c.name)));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(field_err(
                at("name"),
                format!("{:?} is listed twice", c.name),
            ));
        }
        if !c.cost.is_finite() || c.cost < 0.0 {
            return Err(field_err(at("cost"), "must be a finite number ≥ 0"));
        }
        if c.attributes.len() > ATTRIBUTES_MAX {
            return Err(field_err(
                at("attributes"),
                format!("at most {ATTRIBUTES_MAX} attributes"),
            ));
        }
        for (k, v) in &c.attributes {
            check_attr(k, v).map_err(|m| field_err(format!("{}.{k}", at("attributes")), m))?;
        }
        if let Some(d) = &c.description {
            if d.len() > DESCRIPTION_LEN_MAX || d.chars().any(char::is_control) {
                return Err(field_err(
                    at("description"),
                    format!("at most {DESCRIPTION_LEN_MAX} bytes, no control characters"),
                ));
            }
        }
        for (f, s) in [
            ("input_schema", &c.input_schema),
            ("output_schema", &c.output_schema),
        ] {
            if let Some(s) = s {
                super::schema::compile(s).map_err(|e| field_err(at(f), e.0))?;
            }
        }
    }
    let info = agentmesh_gossip::record::AgentInfo {
        name: reg.name.clone(),
        capabilities: reg.capabilities.iter().map(|c| c.to_capability()).collect(),
    };
    let len = postcard::to_allocvec(&info).map_or(usize::MAX, |v| v.len());
    if len > AGENT_RECORD_BYTES_MAX {
        return Err(field_err(
            "capabilities",
            format!(
                "the agent takes {len} bytes of the gossiped record; at most \
                 {AGENT_RECORD_BYTES_MAX} (shorten descriptions or offer fewer capabilities)"
            ),
        ));
    }
    Ok(())
}

/// Most bytes the agent (name and capabilities, schemas as hashes) may take in the gossiped
/// record, leaving room under `RECORD_BYTES_MAX` for the certificate and extensions.
pub const AGENT_RECORD_BYTES_MAX: usize = 10 * 1024;

/// Checks that `url` is an `http://` or `https://` URL with a host, at most
/// [`HANDLER_URL_LEN_MAX`] bytes: the only URLs the node sends requests to or fetches (a
/// `file://` or other scheme is refused before any I/O). `field` names it in the error.
pub fn check_http_url(field: &str, url: &str) -> Result<reqwest::Url, FieldError> {
    if url.len() > HANDLER_URL_LEN_MAX {
        return Err(field_err(
            field,
            format!("at most {HANDLER_URL_LEN_MAX} bytes"),
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        field_err(
            field,
            format!("{url:?} is not a URL ({e}); expected e.g. \"http://127.0.0.1:8080\""),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(field_err(
            field,
            format!("{url:?} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(parsed)
}

fn check_handler(handler: &str) -> Result<(), FieldError> {
    let url = check_http_url("handler", handler)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(field_err(
            "handler",
            "must not have a query or fragment: calls go to {handler}/{capability}",
        ));
    }
    Ok(())
}

fn check_attr(k: &str, v: &agentmesh_gossip::record::AttrValue) -> Result<(), String> {
    use agentmesh_gossip::record::AttrValue;
    if k.is_empty() || k.len() > ATTR_LEN_MAX {
        return Err(format!("attribute keys are 1 to {ATTR_LEN_MAX} bytes"));
    }
    let values: Vec<&String> = match v {
        AttrValue::One(s) => vec![s],
        AttrValue::Many(vs) => vs.iter().collect(),
    };
    if values.len() > ATTR_VALUES_MAX {
        return Err(format!("at most {ATTR_VALUES_MAX} values"));
    }
    if values.iter().any(|s| s.len() > ATTR_LEN_MAX) {
        return Err(format!("values are at most {ATTR_LEN_MAX} bytes"));
    }
    Ok(())
}

impl From<FieldError> for CallError {
    fn from(e: FieldError) -> Self {
        CallError::bad_field(&e.field, e.message)
    }
}
