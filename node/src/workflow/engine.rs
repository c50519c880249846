//! Runs a validated workflow on this node. Every call step is a mesh call through
//! [`MeshHandle::call`] (the same routing, retries and breakers as `POST /v1/call`), and every
//! step draws on one workflow deadline. Each step gets a `step` span under the run's
//! `workflow` span, and every call carries the run's trace id in `traceparent`.

use super::spec::{ForkJoin, Join, Kind, Loop, OnError, Step, Workflow};
use super::spec::{FANOUT_MAX, WORKFLOW_DEADLINE_MS_DEFAULT};
use crate::call::body::collect_body;
use crate::contract::{CallError, CallRequest, ErrorCode, BODY_BYTES_MAX};
use crate::runtime::MeshHandle;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// What one step did.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Step id (fork-join branches and loop iterations add `[i]`).
    pub step: String,
    /// `call`, `sequence`, `parallel`, `fork_join`, `loop`.
    pub kind: String,
    /// Capability called, for call-like steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// `"<node id>/<agent>"` that served the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Attempts the call took (retries included).
    pub attempts: u32,
    /// Wall time of the step, in ms.
    pub latency_ms: f64,
    /// `ok`, `failed`, `skipped`, `continued` (failed, on_error = continue) or `fallback`.
    pub outcome: String,
    /// The error, when the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Workflow name.
    pub workflow: String,
    /// `completed` or `failed`.
    pub status: String,
    /// The workflow's output (null if it failed).
    pub output: Value,
    /// The step that failed the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
    /// Every step, in the order each finished.
    pub steps: Vec<StepRecord>,
    /// Wall time of the run, in ms.
    pub latency_ms: f64,
    /// The W3C trace id every step's call carried.
    pub trace_id: String,
}

/// A step failure on its way up: the step at fault and why.
#[derive(Debug, Clone)]
struct Failure {
    step: String,
    error: CallError,
}

/// What a single mesh call returned.
struct Served {
    output: Value,
    served_by: String,
    attempts: u32,
}

struct Run<'a> {
    mesh: &'a MeshHandle,
    wf: &'a Workflow,
    input: Value,
    deadline: Instant,
    trace_id: [u8; 16],
    outputs: Mutex<Map<String, Value>>,
    records: Mutex<Vec<StepRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// JMESPath truthiness: false, null, and empty strings, arrays and objects are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Runs `wf` with `input` through `mesh`; `traceparent` (if any) makes the run part of the
/// caller's trace.
pub async fn run(
    mesh: &MeshHandle,
    wf: &Workflow,
    input: Value,
    traceparent: Option<&str>,
) -> RunResult {
    let started = Instant::now();
    let deadline_ms = wf.deadline_ms.unwrap_or(WORKFLOW_DEADLINE_MS_DEFAULT);
    let trace_id = traceparent
        .and_then(|t| t.split('-').nth(1))
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
        .unwrap_or_else(rand::random::<[u8; 16]>);
    let run = Run {
        mesh,
        wf,
        input,
        deadline: started + Duration::from_millis(deadline_ms),
        trace_id,
        outputs: Mutex::new(Map::new()),
        records: Mutex::new(Vec::new()),
    };
    let span = tracing::info_span!(
        "workflow",
        workflow = %wf.name,
        trace_id = %hex::encode(trace_id),
        status = tracing::field::Empty,
    );
    let result = async {
        let mut last = Value::Null;
        for s in &wf.steps {
            last = run.step(s, Map::new()).await?;
        }
        match &wf.output {
            Some(e) => wf
                .exprs
                .search(e, &run.context(&Map::new()))
                .map_err(|m| Failure {
                    step: "-".into(),
                    error: CallError::bad_field("output", m),
                }),
            None => Ok(last),
        }
    }
    .instrument(span.clone())
    .await;
    let steps = std::mem::take(&mut *lock(&run.records));
    let (status, output, failed_step, error) = match result {
        Ok(out) => ("completed", out, None, None),
        Err(f) => ("failed", Value::Null, Some(f.step), Some(f.error)),
    };
    span.record("status", status);
    RunResult {
        workflow: wf.name.clone(),
        status: status.into(),
        output,
        failed_step,
        error,
        steps,
        latency_ms: ms(started.elapsed()),
        trace_id: hex::encode(trace_id),
    }
}

impl Run<'_> {
    /// `{input, steps, ...extra}`: what expressions see.
    fn context(&self, extra: &Map<String, Value>) -> Value {
        let mut m = Map::new();
        m.insert("input".into(), self.input.clone());
        m.insert("steps".into(), Value::Object(lock(&self.outputs).clone()));
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    // A failure ends the run; its size does not matter on that path.
    #[allow(clippy::result_large_err)]
    fn eval(&self, step: &str, field: &str, e: &str, ctx: &Value) -> Result<Value, Failure> {
        self.wf.exprs.search(e, ctx).map_err(|m| Failure {
            step: step.into(),
            error: CallError::bad_field(field, m),
        })
    }

    fn record(&self, r: StepRecord) {
        lock(&self.records).push(r);
    }

    fn step<'b>(
        &'b self,
        s: &'b Step,
        extra: Map<String, Value>,
    ) -> BoxFuture<'b, Result<Value, Failure>> {
        let kind = s.kind();
        let span = tracing::info_span!(
            "step",
            workflow = %self.wf.name,
            step = %s.id,
            kind = kind.name(),
            outcome = tracing::field::Empty,
        );
        async move {
            let started = Instant::now();
            if let Some(w) = &s.when {
                let ctx = self.context(&extra);
                if !truthy(&self.eval(&s.id, "when", w, &ctx)?) {
                    self.finish(s, started, "skipped", None);
                    lock(&self.outputs).insert(s.id.clone(), Value::Null);
                    return Ok(Value::Null);
                }
            }
            let result = match kind {
                Kind::Call(cap) => self.call_step(s, cap, &extra).await,
                Kind::Sequence(steps) => {
                    let mut last = Value::Null;
                    for c in steps {
                        last = self.step(c, extra.clone()).await?;
                    }
                    Ok(last)
                }
                Kind::Parallel(steps) => self.parallel(steps, &extra).await,
                Kind::ForkJoin(f) => self.fork_join(s, f, &extra).await,
                Kind::Loop(l) => self.looped(s, l, &extra).await,
            };
            let out = match result {
                Ok(v) => {
                    if !matches!(kind, Kind::Call(_)) {
                        self.finish(s, started, "ok", None);
                    }
                    v
                }
                Err(f) => self.recover(s, f, started, extra).await?,
            };
            tracing::Span::current().record("outcome", "done");
            lock(&self.outputs).insert(s.id.clone(), out.clone());
            Ok(out)
        }
        .instrument(span)
        .boxed()
    }

    /// A failed step: its fallback, `on_error = "continue"`, or the failure itself.
    async fn recover(
        &self,
        s: &Step,
        f: Failure,
        started: Instant,
        extra: Map<String, Value>,
    ) -> Result<Value, Failure> {
        if let Some(fb) = &s.fallback {
            tracing::info!(step = %s.id, error = %f.error, fallback = %fb.id, "step failed; running its fallback");
            self.finish(s, started, "fallback", Some(f.error));
            return self.step(fb, extra).await;
        }
        if s.on_error == OnError::Continue {
            tracing::info!(step = %s.id, error = %f.error, "step failed; on_error = continue");
            self.finish(s, started, "continued", Some(f.error));
            return Ok(Value::Null);
        }
        if !matches!(s.kind(), Kind::Call(_)) {
            self.finish(s, started, "failed", Some(f.error.clone()));
        }
        Err(f)
    }

    fn finish(&self, s: &Step, started: Instant, outcome: &str, error: Option<CallError>) {
        self.record(StepRecord {
            step: s.id.clone(),
            kind: s.kind().name().into(),
            capability: None,
            served_by: None,
            attempts: 0,
            latency_ms: ms(started.elapsed()),
            outcome: outcome.into(),
            error,
        });
    }

    async fn call_step(
        &self,
        s: &Step,
        cap: &str,
        extra: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        let ctx = self.context(extra);
        let input = match &s.input {
            Some(e) => self.eval(&s.id, "input", e, &ctx)?,
            None => self.input.clone(),
        };
        let mut attrs = std::collections::BTreeMap::new();
        for (k, e) in &s.attrs {
            let v = self.eval(&s.id, &format!("attrs.{k}"), e, &ctx)?;
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            attrs.insert(k.clone(), v);
        }
        let opts = CallOpts {
            policy: s.policy.clone(),
            prefer: s.prefer.clone(),
            attrs,
            pin: None,
            deadline_ms: s.deadline_ms,
        };
        let out = self.traced_call(&s.id, cap, input, opts).await?;
        match &s.output {
            // The output expression sees the answer's fields directly.
            Some(e) => self.eval(&s.id, "output", e, &out),
            None => Ok(out),
        }
    }

    /// One mesh call, recorded under `id`.
    async fn traced_call(
        &self,
        id: &str,
        cap: &str,
        input: Value,
        opts: CallOpts,
    ) -> Result<Value, Failure> {
        let started = Instant::now();
        let result = self.mesh_call(cap, input, &opts).await;
        let (outcome, served_by, attempts, error) = match &result {
            Ok(s) => ("ok", Some(s.served_by.clone()), s.attempts, None),
            Err(e) => ("failed", None, e.attempts, Some(e.clone())),
        };
        tracing::info!(step = id, capability = cap, served_by = ?served_by, attempts, outcome, "step call");
        self.record(StepRecord {
            step: id.to_string(),
            kind: "call".into(),
            capability: Some(cap.to_string()),
            served_by,
            attempts,
            latency_ms: ms(started.elapsed()),
            outcome: outcome.into(),
            error,
        });
        result.map(|s| s.output).map_err(|error| Failure {
            step: id.to_string(),
            error,
        })
    }

    async fn mesh_call(&self, cap: &str, input: Value, o: &CallOpts) -> Result<Served, CallError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let left_ms = left.as_millis() as u64;
        if left_ms == 0 {
            return Err(CallError::new(
                ErrorCode::DeadlineExceeded,
                "the workflow deadline passed before this step",
            ));
        }
        let step_deadline_ms = o.deadline_ms.map_or(left_ms, |d| d.min(left_ms));
        let span_id: [u8; 8] = rand::random();
        let req = CallRequest {
            capability: cap.to_string(),
            attrs: o.attrs.clone(),
            deadline_ms: Some(step_deadline_ms.max(1)),
            prefer: o.prefer.clone(),
            policy: o.policy.clone(),
            traceparent: Some(format!(
                "00-{}-{}-01",
                hex::encode(self.trace_id),
                hex::encode(span_id)
            )),
            content_type: Some("application/json".into()),
            body: serde_json::to_vec(&input).unwrap_or_default().into(),
            pin: o.pin,
            ..CallRequest::default()
        };
        let resp = self.mesh.call(req).await?;
        let until = Instant::now() + Duration::from_millis(step_deadline_ms);
        let bytes = collect_body(resp.body, BODY_BYTES_MAX, until).await?;
        if !(200..300).contains(&resp.status) {
            return Err(CallError {
                status: Some(resp.status),
                body: Some(String::from_utf8_lossy(&bytes).chars().take(1024).collect()),
                attempts: resp.attempts,
                ..CallError::new(
                    ErrorCode::AgentError,
                    format!("agent {} answered {}", resp.served_by, resp.status),
                )
            });
        }
        let output = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Served {
            output,
            served_by: resp.served_by,
            attempts: resp.attempts,
        })
    }

    async fn parallel(&self, steps: &[Step], extra: &Map<String, Value>) -> Result<Value, Failure> {
        let results =
            futures::future::join_all(steps.iter().map(|c| self.step(c, extra.clone()))).await;
        let mut out = Map::new();
        for (c, r) in steps.iter().zip(results) {
            out.insert(c.id.clone(), r?);
        }
        Ok(Value::Object(out))
    }

    async fn fork_join(
        &self,
        s: &Step,
        f: &ForkJoin,
        extra: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        let ctx = self.context(extra);
        let fail = |m: String| Failure {
            step: s.id.clone(),
            error: CallError::new(ErrorCode::NoEligibleAgent, m),
        };
        // Each branch: (input, pinned node).
        let mut branches: Vec<(Value, Option<agentmesh_crypto::NodeId>)> = Vec::new();
        if let Some(n) = f.agents {
            let input = match &f.input {
                Some(e) => self.eval(&s.id, "fork_join.input", e, &ctx)?,
                None => self.input.clone(),
            };
            let pick = CallRequest {
                capability: f.call.clone(),
                policy: f.policy.clone(),
                ..CallRequest::default()
            };
            let cands = self.mesh.ranked_candidates(&pick).map_err(|e| Failure {
                step: s.id.clone(),
                error: e,
            })?;
            let mut nodes = Vec::new();
            for c in cands {
                if !nodes.contains(&c.node_id) {
                    nodes.push(c.node_id);
                }
            }
            if nodes.len() < n as usize {
                return Err(fail(format!(
                    "fork_join needs {n} agents on distinct nodes for {}; {} eligible",
                    f.call,
                    nodes.len()
                )));
            }
            for node in nodes.into_iter().take(n as usize) {
                branches.push((input.clone(), Some(node)));
            }
        } else if let Some(e) = &f.inputs {
            let items = match self.eval(&s.id, "fork_join.inputs", e, &ctx)? {
                Value::Array(a) => a,
                other => return Err(fail(format!("fork_join.inputs gave {other}, not an array"))),
            };
            if items.len() > FANOUT_MAX {
                return Err(fail(format!(
                    "fork_join.inputs gave more than {FANOUT_MAX} items"
                )));
            }
            for (i, item) in items.into_iter().enumerate() {
                let input = match &f.input {
                    Some(e) => {
                        let mut x = extra.clone();
                        x.insert("item".into(), item);
                        x.insert("index".into(), Value::from(i));
                        self.eval(&s.id, "fork_join.input", e, &self.context(&x))?
                    }
                    None => item,
                };
                branches.push((input, None));
            }
        }
        let total = branches.len();
        let need = match f.join {
            Join::All => total,
            Join::Any => 1.min(total),
            Join::K(k) => k as usize,
        };
        if need > total {
            return Err(fail(format!("join needs {need} of {total} branches")));
        }
        let mut pending: FuturesUnordered<_> = branches
            .into_iter()
            .enumerate()
            .map(|(i, (input, pin))| {
                let opts = CallOpts {
                    policy: f.policy.clone(),
                    prefer: None,
                    attrs: Default::default(),
                    pin,
                    deadline_ms: s.deadline_ms,
                };
                let id = format!("{}[{i}]", s.id);
                async move { (i, self.traced_call(&id, &f.call, input, opts).await) }
            })
            .collect();
        let mut ok: Vec<(usize, Value)> = Vec::new();
        let mut failed = 0usize;
        let mut last_err = None;
        while let Some((i, r)) = pending.next().await {
            match r {
                Ok(v) => ok.push((i, v)),
                Err(e) => {
                    failed += 1;
                    last_err = Some(e);
                }
            }
            if ok.len() >= need {
                break;
            }
            if total - failed < need {
                let e = last_err.take().map(|e| e.error).unwrap_or_else(|| {
                    CallError::new(ErrorCode::AgentError, "fork_join branch failed")
                });
                return Err(Failure {
                    step: s.id.clone(),
                    error: CallError {
                        message: format!(
                            "fork_join: {failed} of {total} branches failed, {need} needed: {}",
                            e.message
                        ),
                        ..e
                    },
                });
            }
        }
        ok.sort_by_key(|(i, _)| *i);
        let values: Vec<Value> = ok.into_iter().map(|(_, v)| v).collect();
        Ok(match f.join {
            Join::Any => values.into_iter().next().unwrap_or(Value::Null),
            _ => Value::Array(values),
        })
    }

    async fn looped(
        &self,
        s: &Step,
        l: &Loop,
        extra: &Map<String, Value>,
    ) -> Result<Value, Failure> {
        let mut last = Value::Null;
        for i in 0..l.max_iterations {
            let mut x = extra.clone();
            x.insert("iteration".into(), Value::from(i));
            x.insert("last".into(), last.clone());
            let ctx = self.context(&x);
            let input = match &l.input {
                Some(e) => self.eval(&s.id, "loop.input", e, &ctx)?,
                None => self.input.clone(),
            };
            let opts = CallOpts {
                policy: l.policy.clone(),
                prefer: None,
                attrs: Default::default(),
                pin: None,
                deadline_ms: s.deadline_ms,
            };
            let id = format!("{}[{i}]", s.id);
            last = self.traced_call(&id, &l.call, input, opts).await?;
            x.insert("output".into(), last.clone());
            if truthy(&self.eval(&s.id, "loop.until", &l.until, &self.context(&x))?) {
                return Ok(last);
            }
        }
        Err(Failure {
            step: s.id.clone(),
            error: CallError::new(
                ErrorCode::AgentError,
                format!(
                    "loop: condition {:?} did not hold after {} iterations",
                    l.until, l.max_iterations
                ),
            ),
        })
    }
}

struct CallOpts {
    policy: Option<String>,
    prefer: Option<String>,
    attrs: std::collections::BTreeMap<String, String>,
    pin: Option<agentmesh_crypto::NodeId>,
    deadline_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_jmespath() {
        for (v, t) in [
            (serde_json::json!(null), false),
            (serde_json::json!(false), false),
            (serde_json::json!(""), false),
            (serde_json::json!([]), false),
            (serde_json::json!({}), false),
            (serde_json::json!(0), true),
            (serde_json::json!("x"), true),
            (serde_json::json!({"a": 1}), true),
        ] {
            assert_eq!(truthy(&v), t, "{v}");
        }
    }
}
