//! JMESPath, the one expression language of workflow bindings and quorum keys. Expressions
//! are compiled once ([`Expr`]) where they are validated, and evaluated many times.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A JMESPath expression, compiled once; cheap to clone and share across tasks.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    compiled: Arc<jmespath::Expression<'static>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Compiles `source`; the error says why it is not a JMESPath expression.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let compiled = jmespath::compile(source).map_err(|e| e.to_string())?;
        Ok(Expr {
            source: source.into(),
            compiled: Arc::new(compiled),
        })
    }

    /// The expression's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression over `data`; the result as JSON.
    pub fn search(&self, data: &Value) -> Result<Value, String> {
        let r = self.compiled.search(data).map_err(|e| e.to_string())?;
        serde_json::to_value(&*r).map_err(|e| e.to_string())
    }
}

/// The compiled expressions of one workflow, by source text. Filled when the workflow is
/// validated, so a run compiles nothing; bounded by the workflow's own limits on steps and
/// expression length.
#[derive(Debug, Clone, Default)]
pub struct ExprSet(BTreeMap<Arc<str>, Expr>);

impl PartialEq for ExprSet {
    /// Derived data: two workflows are equal by their text, whatever they have compiled.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ExprSet {
    /// Adds a compiled expression.
    pub fn insert(&mut self, e: Expr) {
        self.0.insert(e.source.clone(), e);
    }

    /// How many distinct expressions are compiled.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is compiled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Evaluates `source` over `data` with its compiled form (compiling it here only if the
    /// workflow was built without validation).
    pub fn search(&self, source: &str, data: &Value) -> Result<Value, String> {
        match self.0.get(source) {
            Some(e) => e.search(data),
            None => Expr::compile(source)?.search(data),
        }
    }
}

/// Evaluates a JMESPath expression over `data`; the result as JSON. Compiles `expr` each time:
/// for expressions used once (a quorum's key is compiled once per quorum by the caller).
pub fn jmes(expr: &str, data: &Value) -> Result<Value, String> {
    Expr::compile(expr)?.search(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiled_once_evaluates_like_the_text() {
        let data = json!({"a": {"b": [1, 2, 3]}, "s": "x"});
        for (src, want) in [
            ("a.b[1]", json!(2)),
            ("length(a.b)", json!(3)),
            ("s", json!("x")),
            ("missing", Value::Null),
        ] {
            let e = Expr::compile(src).unwrap();
            assert_eq!(e.search(&data).unwrap(), want, "{src}");
            assert_eq!(jmes(src, &data).unwrap(), want, "{src}");
            let mut set = ExprSet::default();
            set.insert(e);
            assert_eq!(set.search(src, &data).unwrap(), want, "{src}");
        }
        assert!(Expr::compile("a.[").is_err());
    }
}
