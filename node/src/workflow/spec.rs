//! The workflow file: its types, parsed with `deny_unknown_fields`, and the validation that
//! names the step and the field at fault. Expressions (mappings, conditions) are JMESPath and
//! are compiled here once, so a bad one is refused on load, never at run time.

use crate::contract::jmes::{Expr, ExprSet};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Largest workflow file, in bytes.
pub const WORKFLOW_BYTES_MAX: usize = 256 * 1024;
/// Most steps in one workflow, nested ones included.
pub const STEPS_MAX: usize = 256;
/// Deepest nesting of sequence / parallel / fallback.
pub const DEPTH_MAX: usize = 8;
/// Most branches of a fork-join or parallel step.
pub const FANOUT_MAX: usize = 32;
/// Most iterations of a loop.
pub const ITERATIONS_MAX: u32 = 100;
/// Longest expression, in bytes.
pub const EXPR_LEN_MAX: usize = 4096;
/// Longest workflow or step id.
pub const ID_LEN_MAX: usize = 64;
/// Longest workflow deadline, in ms.
pub const WORKFLOW_DEADLINE_MS_MAX: u64 = 10 * 60 * 1000;
/// Workflow deadline when the file names none, in ms.
pub const WORKFLOW_DEADLINE_MS_DEFAULT: u64 = 30_000;

/// A workflow as declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Name, used in `POST /v1/workflows/{name}/run`.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: Option<String>,
    /// One deadline shared by every step, in ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// JMESPath over `{input, steps}` giving the result; default: the last step's output.
    #[serde(default)]
    pub output: Option<String>,
    /// The steps, run in sequence.
    pub steps: Vec<Step>,
    /// Every expression above, compiled once by [`Workflow::compile`].
    #[serde(skip)]
    pub exprs: ExprSet,
}

/// What to do when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Fail the workflow, naming the step.
    #[default]
    Fail,
    /// Record the failure, give the step a null output and go on.
    Continue,
}

/// One step. Exactly one of `call`, `sequence`, `parallel`, `fork_join`, `loop` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id; its output is `steps.<id>` in later expressions.
    pub id: String,
    /// Call this capability.
    #[serde(default)]
    pub call: Option<String>,
    /// Run these steps in order; the output is the last one's.
    #[serde(default)]
    pub sequence: Option<Vec<Step>>,
    /// Run these steps at once; all must succeed; the output is `{id: output}`.
    #[serde(default)]
    pub parallel: Option<Vec<Step>>,
    /// Fan one capability out to N agents or N inputs and join.
    #[serde(default)]
    pub fork_join: Option<ForkJoin>,
    /// Call until a condition on the output holds.
    #[serde(default, rename = "loop")]
    pub loop_: Option<Loop>,
    /// JMESPath over `{input, steps}` building the call's input (default `input`).
    #[serde(default)]
    pub input: Option<String>,
    /// Routing policy of the call.
    #[serde(default)]
    pub policy: Option<String>,
    /// Preferred agent name or node id.
    #[serde(default)]
    pub prefer: Option<String>,
    /// Attribute constraints: name → JMESPath giving the value (a string).
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    /// This step's own deadline, in ms (capped by what is left of the workflow's).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// JMESPath over the answer giving the step's output (default: the whole answer).
    #[serde(default)]
    pub output: Option<String>,
    /// JMESPath condition; a falsy result skips the step (output null).
    #[serde(default)]
    pub when: Option<String>,
    /// `fail` (default) or `continue`.
    #[serde(default)]
    pub on_error: OnError,
    /// A step run instead when this one fails; its output becomes this step's.
    #[serde(default)]
    pub fallback: Option<Box<Step>>,
}

/// How a fork-join collects its branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Every branch must succeed; the output is every result, in order.
    All,
    /// The first success wins; the output is its result.
    Any,
    /// The first `k` successes; the output is their results.
    K(u32),
}

impl Serialize for Join {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Join::All => s.serialize_str("all"),
            Join::Any => s.serialize_str("any"),
            Join::K(k) => s.serialize_u32(*k),
        }
    }
}

impl<'de> Deserialize<'de> for Join {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            K(u32),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(Join::All),
            Raw::Word(w) if w == "any" => Ok(Join::Any),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "join {w:?}: expected \"all\", \"any\" or a number k"
            ))),
            Raw::K(k) => Ok(Join::K(k)),
        }
    }
}

fn default_join() -> Join {
    Join::All
}

/// `fork_join = { call = "…", agents = N | inputs = "expr", join = "all" | "any" | k }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkJoin {
    /// The capability every branch calls.
    pub call: String,
    /// Fan out to this many agents, each on its own node (same input).
    #[serde(default)]
    pub agents: Option<u32>,
    /// Fan out over the array this JMESPath gives (one call per element, as `item`).
    #[serde(default)]
    pub inputs: Option<String>,
    /// JMESPath building each branch's input (default: `item` with `inputs`, else `input`).
    #[serde(default)]
    pub input: Option<String>,
    /// `all` (default), `any`, or a number k.
    #[serde(default = "default_join")]
    pub join: Join,
    /// Routing policy of the calls.
    #[serde(default)]
    pub policy: Option<String>,
}

/// `loop = { call = "…", input = "expr", until = "expr", max_iterations = N }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loop {
    /// The capability called each iteration.
    pub call: String,
    /// JMESPath building each iteration's input; sees `iteration` (0-based) and `last`
    /// (the previous output, null at first).
    #[serde(default)]
    pub input: Option<String>,
    /// JMESPath condition over `{input, steps, output, iteration}`; the loop ends when it
    /// is truthy.
    pub until: String,
    /// Most calls made; the step fails if the condition never held.
    pub max_iterations: u32,
    /// Routing policy of the calls.
    #[serde(default)]
    pub policy: Option<String>,
}

/// The kind of a validated step, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    /// A call.
    Call(&'a str),
    /// Steps in order.
    Sequence(&'a [Step]),
    /// Steps at once.
    Parallel(&'a [Step]),
    /// Fan-out and join.
    ForkJoin(&'a ForkJoin),
    /// Repeated call.
    Loop(&'a Loop),
}

impl Kind<'_> {
    /// The kind's name, as in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Call(_) => "call",
            Kind::Sequence(_) => "sequence",
            Kind::Parallel(_) => "parallel",
            Kind::ForkJoin(_) => "fork_join",
            Kind::Loop(_) => "loop",
        }
    }
}

impl Step {
    /// The step's kind. Only meaningful after [`Workflow::validate`].
    pub fn kind(&self) -> Kind<'_> {
        if let Some(c) = &self.call {
            Kind::Call(c)
        } else if let Some(s) = &self.sequence {
            Kind::Sequence(s)
        } else if let Some(p) = &self.parallel {
            Kind::Parallel(p)
        } else if let Some(f) = &self.fork_join {
            Kind::ForkJoin(f)
        } else if let Some(l) = &self.loop_ {
            Kind::Loop(l)
        } else {
            Kind::Sequence(&[])
        }
    }
}

/// A workflow refused on load: the file, the step and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{file}: step {step}: {field}: {message}")]
pub struct WorkflowError {
    /// The file (or `<request>` for an ad-hoc workflow).
    pub file: String,
    /// The step id (`-` for the workflow itself).
    pub step: String,
    /// The field, e.g. `fork_join.join`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

struct Checker<'a> {
    file: &'a str,
    ids: BTreeSet<String>,
    count: usize,
    /// The expressions compiled while checking, kept so a run compiles nothing.
    exprs: std::cell::RefCell<ExprSet>,
}

impl Checker<'_> {
    fn err(&self, step: &str, field: &str, message: impl Into<String>) -> WorkflowError {
        WorkflowError {
            file: self.file.to_string(),
            step: step.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn expr(&self, step: &str, field: &str, e: &str) -> Result<(), WorkflowError> {
        if e.len() > EXPR_LEN_MAX {
            return Err(self.err(step, field, format!("longer than {EXPR_LEN_MAX} bytes")));
        }
        let compiled = Expr::compile(e)
            .map_err(|x| self.err(step, field, format!("not a JMESPath expression: {x}")))?;
        self.exprs.borrow_mut().insert(compiled);
        Ok(())
    }

    fn opt_expr(&self, step: &str, field: &str, e: &Option<String>) -> Result<(), WorkflowError> {
        match e {
            Some(e) => self.expr(step, field, e),
            None => Ok(()),
        }
    }

    fn capability(&self, step: &str, field: &str, c: &str) -> Result<(), WorkflowError> {
        if crate::contract::names::is_capability_name(c) {
            return Ok(());
        }
        Err(self.err(
            step,
            field,
            format!("{c:?} is not a capability name: 1 to 128 characters of [a-z0-9_.-]"),
        ))
    }

    fn policy(&self, step: &str, field: &str, p: &Option<String>) -> Result<(), WorkflowError> {
        if let Some(p) = p {
            crate::routing::policies::PolicyName::parse(p)
                .map_err(|e| self.err(step, field, e.message))?;
        }
        Ok(())
    }

    fn step(&mut self, s: &Step, depth: usize) -> Result<(), WorkflowError> {
        let id = s.id.as_str();
        if !valid_id(id) {
            return Err(self.err(
                if id.is_empty() { "-" } else { id },
                "id",
                format!("{id:?} is not an id: 1 to {ID_LEN_MAX} characters of [A-Za-z0-9_-]"),
            ));
        }
        if !self.ids.insert(id.to_string()) {
            return Err(self.err(id, "id", "another step has the same id"));
        }
        self.count += 1;
        if self.count > STEPS_MAX {
            return Err(self.err(id, "-", format!("more than {STEPS_MAX} steps")));
        }
        if depth > DEPTH_MAX {
            return Err(self.err(id, "-", format!("nested deeper than {DEPTH_MAX}")));
        }
        let kinds = [
            s.call.is_some(),
            s.sequence.is_some(),
            s.parallel.is_some(),
            s.fork_join.is_some(),
            s.loop_.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(self.err(
                id,
                "call",
                "a step needs exactly one of call, sequence, parallel, fork_join, loop",
            ));
        }
        let call_only = s.input.is_some()
            || s.policy.is_some()
            || s.prefer.is_some()
            || !s.attrs.is_empty()
            || s.output.is_some();
        if call_only && s.call.is_none() {
            return Err(self.err(
                id,
                "input",
                "input, policy, prefer, attrs and output belong to call steps",
            ));
        }
        self.opt_expr(id, "input", &s.input)?;
        self.opt_expr(id, "output", &s.output)?;
        self.opt_expr(id, "when", &s.when)?;
        self.policy(id, "policy", &s.policy)?;
        for (k, e) in &s.attrs {
            if k.is_empty() || k.len() > crate::contract::names::ATTR_LEN_MAX {
                return Err(self.err(
                    id,
                    "attrs",
                    format!(
                        "attribute names are 1 to {} bytes",
                        crate::contract::names::ATTR_LEN_MAX
                    ),
                ));
            }
            self.expr(id, &format!("attrs.{k}"), e)?;
        }
        if let Some(d) = s.deadline_ms {
            if d == 0 || d > WORKFLOW_DEADLINE_MS_MAX {
                return Err(self.err(
                    id,
                    "deadline_ms",
                    format!("must be 1 to {WORKFLOW_DEADLINE_MS_MAX}"),
                ));
            }
        }
        match s.kind() {
            Kind::Call(c) => self.capability(id, "call", c)?,
            Kind::Sequence(steps) | Kind::Parallel(steps) => {
                let field = s.kind().name();
                if steps.is_empty() {
                    return Err(self.err(id, field, "needs at least one step"));
                }
                if field == "parallel" && steps.len() > FANOUT_MAX {
                    return Err(self.err(id, field, format!("at most {FANOUT_MAX} branches")));
                }
                for c in steps {
                    self.step(c, depth + 1)?;
                }
            }
            Kind::ForkJoin(f) => self.fork_join(id, f)?,
            Kind::Loop(l) => {
                self.capability(id, "loop.call", &l.call)?;
                self.opt_expr(id, "loop.input", &l.input)?;
                self.expr(id, "loop.until", &l.until)?;
                self.policy(id, "loop.policy", &l.policy)?;
                if l.max_iterations == 0 || l.max_iterations > ITERATIONS_MAX {
                    return Err(self.err(
                        id,
                        "loop.max_iterations",
                        format!("must be 1 to {ITERATIONS_MAX}"),
                    ));
                }
            }
        }
        if let Some(fb) = &s.fallback {
            if s.on_error == OnError::Continue {
                return Err(self.err(
                    id,
                    "fallback",
                    "a step has either a fallback or on_error = \"continue\", not both",
                ));
            }
            self.step(fb, depth + 1)?;
        }
        Ok(())
    }

    fn fork_join(&self, id: &str, f: &ForkJoin) -> Result<(), WorkflowError> {
        self.capability(id, "fork_join.call", &f.call)?;
        self.opt_expr(id, "fork_join.inputs", &f.inputs)?;
        self.opt_expr(id, "fork_join.input", &f.input)?;
        self.policy(id, "fork_join.policy", &f.policy)?;
        let width = match (f.agents, &f.inputs) {
            (Some(n), None) => {
                if n == 0 || n as usize > FANOUT_MAX {
                    return Err(self.err(
                        id,
                        "fork_join.agents",
                        format!("must be 1 to {FANOUT_MAX}"),
                    ));
                }
                Some(n)
            }
            (None, Some(_)) => None,
            _ => {
                return Err(self.err(
                    id,
                    "fork_join.agents",
                    "set exactly one of agents (N agents) or inputs (N inputs)",
                ))
            }
        };
        if let Join::K(k) = f.join {
            let too_many = width.is_some_and(|w| k > w);
            if k == 0 || too_many || k as usize > FANOUT_MAX {
                return Err(self.err(
                    id,
                    "fork_join.join",
                    "k must be at least 1 and at most the number of branches",
                ));
            }
        }
        Ok(())
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Workflow {
    /// Parses TOML text and validates it; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Workflow, WorkflowError> {
        if text.len() > WORKFLOW_BYTES_MAX {
            return Err(whole(
                file,
                format!("larger than {WORKFLOW_BYTES_MAX} bytes"),
            ));
        }
        let w: Workflow = toml::from_str(text).map_err(|e| parse_error(file, text, &e))?;
        w.compile(file)
    }

    /// Validates a workflow given as JSON (the ad-hoc API form).
    pub fn from_json(v: serde_json::Value, file: &str) -> Result<Workflow, WorkflowError> {
        let w: Workflow = serde_json::from_value(v).map_err(|e| whole(file, e.to_string()))?;
        w.compile(file)
    }

    /// Checks every rule and compiles every expression once; the workflow a run uses.
    pub fn compile(mut self, file: &str) -> Result<Workflow, WorkflowError> {
        self.exprs = self.check(file)?;
        Ok(self)
    }

    /// Checks every rule, naming the first step and field at fault.
    pub fn validate(&self, file: &str) -> Result<(), WorkflowError> {
        self.check(file).map(|_| ())
    }

    fn check(&self, file: &str) -> Result<ExprSet, WorkflowError> {
        let mut c = Checker {
            file,
            ids: BTreeSet::new(),
            count: 0,
            exprs: Default::default(),
        };
        if !valid_id(&self.name) {
            return Err(c.err(
                "-",
                "name",
                format!(
                    "{:?} is not a name: 1 to {ID_LEN_MAX} of [A-Za-z0-9_-]",
                    self.name
                ),
            ));
        }
        if let Some(d) = self.deadline_ms {
            if d == 0 || d > WORKFLOW_DEADLINE_MS_MAX {
                return Err(c.err(
                    "-",
                    "deadline_ms",
                    format!("must be 1 to {WORKFLOW_DEADLINE_MS_MAX}"),
                ));
            }
        }
        c.opt_expr("-", "output", &self.output)?;
        if self.steps.is_empty() {
            return Err(c.err("-", "steps", "needs at least one step"));
        }
        for s in &self.steps {
            c.step(s, 1)?;
        }
        Ok(c.exprs.into_inner())
    }
}

fn whole(file: &str, message: String) -> WorkflowError {
    WorkflowError {
        file: file.to_string(),
        step: "-".into(),
        field: "-".into(),
        message,
    }
}

/// A TOML error, with the step whose table holds the error's position when it can be found.
fn parse_error(file: &str, text: &str, e: &toml::de::Error) -> WorkflowError {
    let mut step = "-".to_string();
    if let Some(span) = e.span() {
        // The nearest `id = "…"` before the error is the step being parsed.
        let before = &text[..span.start.min(text.len())];
        if let Some(pos) = before.rfind("id = \"") {
            let rest = &before[pos + 6..];
            if let Some(end) = rest.find('"') {
                step = rest[..end].to_string();
            }
        }
    }
    let msg = e.message().to_string();
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| msg.split(p).nth(1))
        .and_then(|r| r.split('`').next())
        .unwrap_or("-")
        .to_string();
    WorkflowError {
        file: file.to_string(),
        step,
        field,
        message: msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "w"
deadline_ms = 5000
[[steps]]
id = "a"
call = "x.y"
input = "{text: input.text}"
[[steps]]
id = "b"
parallel = [ { id = "b1", call = "p" }, { id = "b2", call = "q", on_error = "continue" } ]
[[steps]]
id = "c"
fork_join = { call = "r", agents = 3, join = 2 }
[[steps]]
id = "d"
loop = { call = "s", until = "ok", max_iterations = 3 }
fallback = { id = "d-fb", call = "t" }
"#;

    #[test]
    fn good_workflow_parses() {
        let w = Workflow::from_toml(GOOD, "good.toml").unwrap();
        assert_eq!(w.steps.len(), 4);
        assert!(matches!(w.steps[2].kind(), Kind::ForkJoin(f) if f.join == Join::K(2)));
        // Both expressions are compiled once, here, so a run compiles nothing.
        assert_eq!(w.exprs.len(), 2, "{:?}", w.exprs);
        assert!(Workflow::from_toml(GOOD, "good.toml").unwrap().exprs.len() == 2);
    }

    /// Each broken workflow, and the step and field its error must name.
    #[test]
    fn errors_name_step_and_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"Bad Cap\"\n",
                "a",
                "call",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\ninput = \"a[\"\n",
                "a",
                "input",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\nsequence = []\n",
                "a",
                "call",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\n[[steps]]\nid = \"a\"\ncall = \"y\"\n",
                "a",
                "id",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"f\"\nfork_join = { call = \"x\", agents = 2, join = 3 }\n",
                "f",
                "fork_join.join",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"f\"\nfork_join = { call = \"x\" }\n",
                "f",
                "fork_join.agents",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"l\"\nloop = { call = \"x\", until = \"ok\", max_iterations = 0 }\n",
                "l",
                "loop.max_iterations",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"l\"\nloop = { call = \"x\", until = \"==\", max_iterations = 2 }\n",
                "l",
                "loop.until",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\npolicy = \"fastest\"\n",
                "a",
                "policy",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\ncolour = 1\n",
                "a",
                "colour",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\non_error = \"continue\"\nfallback = { id = \"b\", call = \"y\" }\n",
                "a",
                "fallback",
            ),
            (
                "name = \"w\"\n[[steps]]\nid = \"a\"\nsequence = [ { id = \"b\", call = \"x\", deadline_ms = 0 } ]\n",
                "b",
                "deadline_ms",
            ),
            ("name = \"w\"\nsteps = []\n", "-", "steps"),
            ("name = \"w w\"\n[[steps]]\nid = \"a\"\ncall = \"x\"\n", "-", "name"),
        ];
        for (text, step, field) in cases {
            let e = Workflow::from_toml(text, "t.toml").expect_err(text);
            assert_eq!((e.step.as_str(), e.field.as_str()), (*step, *field), "{e}");
            assert!(e.to_string().starts_with("t.toml: step "), "{e}");
        }
    }

    #[test]
    fn json_form_is_validated_the_same_way() {
        let v =
            serde_json::json!({"name": "w", "steps": [{"id": "a", "call": "x", "input": "a["}]});
        let e = Workflow::from_json(v, "<request>").unwrap_err();
        assert_eq!(e.field, "input");
    }
}
