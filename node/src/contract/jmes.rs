//! JMESPath, the one expression language of workflow bindings and quorum keys.

/// Evaluates a JMESPath expression over `data`; the result as JSON.
pub fn jmes(expr: &str, data: &serde_json::Value) -> Result<serde_json::Value, String> {
    let e = jmespath::compile(expr).map_err(|e| e.to_string())?;
    let r = e.search(data).map_err(|e| e.to_string())?;
    serde_json::to_value(&*r).map_err(|e| e.to_string())
}
