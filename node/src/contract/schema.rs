//! Typed capabilities: JSON Schemas for a capability's input and output. Gossip carries only
//! each schema's hash ([`SchemaHash`]); the schema is fetched from its owner on demand and
//! checked against the hash. The caller's node validates a call's input before routing.

use super::CallError;
use agentmesh_gossip::record::SchemaHash;
use serde_json::Value;

/// Largest schema accepted, in canonical bytes (checked before compiling).
pub const SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Deepest nesting of a schema (a bound on the compiler's recursion).
pub const SCHEMA_DEPTH_MAX: usize = 32;

/// A schema that cannot be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// The canonical bytes of a schema: JSON with object keys sorted, no whitespace. Two nodes
/// hash the same schema to the same [`SchemaHash`] whatever order its author wrote.
pub fn canonical(schema: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(schema)).unwrap_or_default()
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Checks a schema's size, depth and form and compiles it. Remote `$ref`s do not resolve (the
/// node fetches nothing a schema names).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    let len = canonical(schema).len();
    if len > SCHEMA_BYTES_MAX {
        return Err(SchemaError(format!(
            "schema is {len} bytes; at most {SCHEMA_BYTES_MAX}"
        )));
    }
    if depth(schema) > SCHEMA_DEPTH_MAX {
        return Err(SchemaError(format!(
            "schema nests deeper than {SCHEMA_DEPTH_MAX} levels"
        )));
    }
    if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
        return Err(SchemaError("a schema is a JSON object or boolean".into()));
    }
    jsonschema::validator_for(schema).map_err(|e| SchemaError(format!("invalid schema: {e}")))
}

/// The hash of a schema (of its canonical bytes).
pub fn hash(schema: &Value) -> SchemaHash {
    SchemaHash::of(&canonical(schema))
}

/// A JSON Pointer (`/items/0/name`) as a JSONPath (`$.items[0].name`).
pub fn json_path(pointer: &str) -> String {
    let mut out = String::from("$");
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else if !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            out.push('.');
            out.push_str(&seg);
        } else {
            out.push_str(&format!("[{}]", Value::String(seg)));
        }
    }
    out
}

/// Validates a call body against an input schema. A failure is a `bad_request` whose `field`
/// is the JSONPath of the offending value and whose message names the rule broken, e.g.
/// `$.city: 5 is not of type "string" (rule: type at /properties/city/type)`.
pub fn validate_input(validator: &jsonschema::Validator, body: &[u8]) -> Result<(), CallError> {
    let instance: Value = serde_json::from_slice(if body.is_empty() { b"null" } else { body })
        .map_err(|e| {
            CallError::bad_field(
                "$",
                format!("the capability declares an input schema and the body is not JSON: {e}"),
            )
        })?;
    match validator.validate(&instance) {
        Ok(()) => Ok(()),
        Err(e) => {
            let path = json_path(e.instance_path().as_str());
            Err(CallError::bad_field(
                &path,
                format!(
                    "{path}: {e} (rule: {} at {})",
                    e.kind().keyword(),
                    e.schema_path().as_str()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_ignores_key_order() {
        let a = json!({"type": "object", "properties": {"b": {"type": "string"}, "a": {}}});
        let b = json!({"properties": {"a": {}, "b": {"type": "string"}}, "type": "object"});
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&json!({"type": "object"})));
    }

    #[test]
    fn json_paths() {
        for (ptr, path) in [
            ("", "$"),
            ("/city", "$.city"),
            ("/items/0/name", "$.items[0].name"),
            ("/a b", "$[\"a b\"]"),
            ("/x~1y", "$[\"x/y\"]"),
        ] {
            assert_eq!(json_path(ptr), path, "{ptr}");
        }
    }

    #[test]
    fn bad_schemas_are_refused() {
        assert!(compile(&json!({"type": "nope"})).is_err());
        assert!(compile(&json!(5)).is_err());
        let mut deep = json!({});
        for _ in 0..40 {
            deep = json!({ "not": deep });
        }
        assert!(compile(&deep).unwrap_err().0.contains("deeper"));
        let big = json!({"description": "x".repeat(SCHEMA_BYTES_MAX)});
        assert!(compile(&big).unwrap_err().0.contains("bytes"));
        // Remote references are not fetched.
        assert!(compile(&json!({"$ref": "http://127.0.0.1:9/s.json"})).is_err());
    }

    /// The gossiped record stays small: schemas travel as 33-byte hashes. Prints the sizes
    /// (run with `--nocapture`) for 8 typed capabilities: untyped, typed (description + hashes),
    /// and what inlining the schemas would cost.
    #[test]
    fn record_size_with_schemas() {
        use agentmesh_gossip::record::{AgentInfo, NodeRecord, RECORD_BYTES_MAX};
        let schema = json!({
            "type": "object",
            "required": ["city"],
            "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "minLength": 1, "description": "City name"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "units": {"enum": ["metric", "imperial"]}
            }
        });
        let specs: Vec<crate::contract::CapabilitySpec> = (0..8)
            .map(|i| crate::contract::CapabilitySpec {
                description: Some(format!("Forecast number {i} for a city, by day")),
                input_schema: Some(schema.clone()),
                output_schema: Some(json!({"type": "object"})),
                ..crate::contract::CapabilitySpec::named(format!("weather.forecast{i}"))
            })
            .collect();
        let size = |caps: Vec<agentmesh_gossip::record::Capability>| {
            let mut r = NodeRecord::new(agentmesh_crypto::Keypair::from_secret([1; 32]).node_id());
            r.agent = Some(AgentInfo {
                name: "weather".into(),
                capabilities: caps,
            });
            postcard::to_allocvec(&r).unwrap().len()
        };
        let untyped = size(
            specs
                .iter()
                .map(|s| crate::contract::CapabilitySpec::named(&s.name).to_capability())
                .collect(),
        );
        let typed = size(specs.iter().map(|s| s.to_capability()).collect());
        let inline_extra: usize = specs
            .iter()
            .map(|s| canonical(s.input_schema.as_ref().unwrap()).len() + 16 - 33 - 33)
            .sum();
        eprintln!(
            "record with 8 capabilities: untyped {untyped} B, typed (description + schema \
             hashes) {typed} B, schemas inlined would be {} B",
            typed + inline_extra
        );
        assert!(typed < RECORD_BYTES_MAX / 4);
        assert!(typed + inline_extra > typed);
    }

    /// The validation table: input → the exact error (`field`, `message`), or accepted.
    #[test]
    fn validation_table() {
        let schema = json!({
            "type": "object",
            "required": ["city"],
            "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "units": {"enum": ["metric", "imperial"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}
            }
        });
        let v = compile(&schema).unwrap();
        let table: &[(&str, Option<(&str, &str)>)] = &[
            (r#"{"city":"Paris"}"#, None),
            (r#"{"city":"Paris","days":3,"units":"metric","tags":["a"]}"#, None),
            (
                r#"{"city":5}"#,
                Some(("$.city", r#"$.city: 5 is not of type "string" (rule: type at /properties/city/type)"#)),
            ),
            (
                r#"{}"#,
                Some(("$", r#"$: "city" is a required property (rule: required at /required)"#)),
            ),
            (
                r#"{"city":""}"#,
                Some(("$.city", r#"$.city: "" is shorter than 1 character (rule: minLength at /properties/city/minLength)"#)),
            ),
            (
                r#"{"city":"P","days":15}"#,
                Some(("$.days", "$.days: 15 is greater than the maximum of 14 (rule: maximum at /properties/days/maximum)")),
            ),
            (
                r#"{"city":"P","units":"kelvin"}"#,
                Some(("$.units", r#"$.units: "kelvin" is not one of "metric" or "imperial" (rule: enum at /properties/units/enum)"#)),
            ),
            (
                r#"{"city":"P","tags":["a",1]}"#,
                Some(("$.tags[1]", r#"$.tags[1]: 1 is not of type "string" (rule: type at /properties/tags/items/type)"#)),
            ),
            (
                r#"{"city":"P","extra":1}"#,
                Some(("$", "$: Additional properties are not allowed ('extra' was unexpected) (rule: additionalProperties at /additionalProperties)")),
            ),
            (
                "not json",
                Some(("$", "the capability declares an input schema and the body is not JSON: expected ident at line 1 column 2")),
            ),
        ];
        for (input, want) in table {
            let got = validate_input(&v, input.as_bytes());
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some((field, msg))) => {
                    assert_eq!(e.code, crate::contract::ErrorCode::BadRequest, "{input}");
                    assert_eq!(e.field.as_deref(), Some(*field), "{input}");
                    assert_eq!(e.message, *msg, "{input}");
                }
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
