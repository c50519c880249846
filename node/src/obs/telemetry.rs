//! Logging and OpenTelemetry traces: the process's `tracing` subscriber, the OTLP exporter
//! (gRPC or HTTP/protobuf) and the spans of a mesh call.
//!
//! **Configuration.** `[telemetry]` in `node.toml`, else the standard variables:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`, the default), `OTEL_SERVICE_NAME`. With no endpoint anywhere there is no
//! exporter and no span is even created ([`enabled`] is false), so tracing costs nothing.
//!
//! ```toml
//! [telemetry]
//! otlp_endpoint = "http://127.0.0.1:4317"   # base URL, like OTEL_EXPORTER_OTLP_ENDPOINT
//! otlp_protocol = "grpc"                    # grpc | http/protobuf
//! service_name = "agentmesh"
//! ```
//!
//! **Which node, which agent.** The resource carries `service.instance.id` = the node id (the
//! id the API prints), so Jaeger or Tempo tell the nodes of one service apart. Every span also
//! carries `agentmesh.node.id` (the node that recorded it) and `agentmesh.agent`: the agent the
//! span works for on that node, the calling agent on the caller's node (`mesh.route`,
//! `mesh.attempt`), the serving agent on the callee's node (`mesh.serve`, `mesh.agent`).
//!
//! **Spans of one call** (each with `mesh.*` attributes and the semantic-convention `rpc.*`
//! and `http.*` ones):
//! - caller's node: `mesh.route <cap>` (internal, the whole call, child of the agent's
//!   `traceparent`) with one `mesh.attempt <cap>` client span per attempt;
//! - callee's node: `mesh.serve <cap>` (server, child of the attempt: its context travels in
//!   the call header over QUIC) and `mesh.agent <cap>` (client, the HTTP handoff to the agent,
//!   whose context the agent receives as `traceparent`). An agent that calls onward passes it
//!   on, and the trace continues on its node.

use crate::net::call_proto::CallHeader;
use agentmesh_crypto::NodeId;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The `tracing` target of mesh spans; only these go to the exporter.
pub const TRACE_TARGET: &str = "agentmesh::trace";
/// Longest OTLP endpoint accepted, in bytes.
pub const ENDPOINT_LEN_MAX: usize = 2048;
/// The default service name.
pub const SERVICE_NAME_DEFAULT: &str = "agentmesh";
/// The span attribute naming the node that recorded the span.
pub const ATTR_NODE_ID: &str = "agentmesh.node.id";
/// The span attribute naming the agent the span works for on that node.
pub const ATTR_AGENT: &str = "agentmesh.agent";
/// How long shutdown waits for the last spans to be exported.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `[telemetry]` in `node.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// OTLP base endpoint (`http://host:4317` for gRPC, `http://host:4318` for HTTP; the
    /// HTTP path `/v1/traces` is added when absent).
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: Option<String>,
    /// `service.name` of the spans.
    pub service_name: Option<String>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

impl Protocol {
    /// Parses `grpc` or `http/protobuf`.
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(format!(
                "unsupported OTLP protocol {other:?}: expected grpc or http/protobuf"
            )),
        }
    }
}

/// The resolved exporter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The endpoint given in `node.toml`, if any (the exporter reads the variables itself).
    pub endpoint: Option<String>,
    /// The transport.
    pub protocol: Protocol,
    /// `service.name`.
    pub service_name: String,
}

impl TelemetrySection {
    /// Checks the section (called when `node.toml` is loaded); the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(e) = &self.otlp_endpoint {
            if e.len() > ENDPOINT_LEN_MAX || reqwest::Url::parse(e).is_err() {
                return Err((
                    "telemetry.otlp_endpoint",
                    format!("{e:?} is not a URL such as \"http://127.0.0.1:4317\""),
                ));
            }
        }
        if let Some(p) = &self.otlp_protocol {
            Protocol::parse(p).map_err(|m| ("telemetry.otlp_protocol", m))?;
        }
        Ok(())
    }
}

/// Resolves the exporter settings from the section and the environment (`env` reads a
/// variable). `None` means no endpoint anywhere: no export.
pub fn resolve(
    section: Option<&TelemetrySection>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportSettings>, String> {
    let section = section.cloned().unwrap_or_default();
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let env_endpoint = nonempty(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| nonempty(env("OTEL_EXPORTER_OTLP_ENDPOINT")));
    if section.otlp_endpoint.is_none() && env_endpoint.is_none() {
        return Ok(None);
    }
    let protocol = match nonempty(section.otlp_protocol.clone())
        .or_else(|| nonempty(env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")))
        .or_else(|| nonempty(env("OTEL_EXPORTER_OTLP_PROTOCOL")))
    {
        Some(p) => Protocol::parse(&p)?,
        None => Protocol::HttpProtobuf,
    };
    let endpoint = section.otlp_endpoint.map(|e| match protocol {
        Protocol::HttpProtobuf if !e.trim_end_matches('/').ends_with("/v1/traces") => {
            format!("{}/v1/traces", e.trim_end_matches('/'))
        }
        _ => e,
    });
    let service_name = section
        .service_name
        .or_else(|| nonempty(env("OTEL_SERVICE_NAME")))
        .unwrap_or_else(|| SERVICE_NAME_DEFAULT.to_string());
    Ok(Some(ExportSettings {
        endpoint,
        protocol,
        service_name,
    }))
}

/// The installed subscriber's exporter; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by [`FLUSH_TIMEOUT`]).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.force_flush();
            let _ = p.shutdown_with_timeout(FLUSH_TIMEOUT);
        }
    }
}

fn build_provider(
    s: &ExportSettings,
    instance_id: Option<&str>,
) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = match s.protocol {
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig;
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| "the HTTP exporter needs the node's runtime".to_string())?;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(super::otlp_http::OtlpHttp::new(runtime))
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = &s.endpoint {
                b = b.with_endpoint(e.clone());
            }
            b.build()
        }
    }
    .map_err(|e| e.to_string())?;
    let mut resource =
        opentelemetry_sdk::Resource::builder_empty().with_service_name(s.service_name.clone());
    if let Some(id) = instance_id {
        // The semantic-convention name backends use to tell instances of a service apart.
        resource = resource.with_attributes([
            opentelemetry::KeyValue::new("service.instance.id", id.to_string()),
            opentelemetry::KeyValue::new(ATTR_NODE_ID, id.to_string()),
        ]);
    }
    let resource = resource.build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Installs the process's subscriber: logs to stderr filtered by `RUST_LOG` (default
/// `info`), and, when an OTLP endpoint is configured, mesh spans to the exporter. Call it
/// inside the Tokio runtime (the gRPC client needs one). `instance_id` (the node id) becomes the
/// resource's `service.instance.id`.
pub fn init(section: Option<&TelemetrySection>, instance_id: Option<&str>) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let settings = resolve(section, |k| std::env::var(k).ok());
    let (provider, problem) = match settings {
        Ok(Some(s)) => match build_provider(&s, instance_id) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("OTLP exporter not started: {e}"))),
        },
        Ok(None) => (None, None),
        Err(e) => (None, Some(format!("OTLP exporter not started: {e}"))),
    };
    let otel = provider.as_ref().map(|p| {
        let spans_only = tracing_subscriber::filter::Targets::new()
            .with_target(TRACE_TARGET, tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("agentmesh"))
            .with_filter(spans_only)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(p) = problem {
        tracing::error!("{p}");
    }
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    Telemetry { provider }
}

/// The OpenTelemetry context of a W3C `traceparent` (and `tracestate`); empty if absent or
/// invalid, which starts a new trace.
fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    if let Some(tp) = traceparent {
        carrier.insert("traceparent".to_string(), tp.to_string());
    }
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_string(), ts.to_string());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The W3C `traceparent` and `tracestate` of `span`, or None when it is not recorded.
pub fn inject(span: &Span) -> Option<(String, Option<String>)> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let tp = carrier.remove("traceparent")?;
    let ts = carrier.remove("tracestate").filter(|s| !s.is_empty());
    Some((tp, ts))
}

/// What the caller's node knows when a call starts.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// Capability.
    pub capability: &'a str,
    /// This node.
    pub caller_node: &'a NodeId,
    /// This node's agent.
    pub caller_agent: &'a str,
    /// The agent's `traceparent`.
    pub traceparent: Option<&'a str>,
    /// The agent's `tracestate`.
    pub tracestate: Option<&'a str>,
}

/// The span of a whole routed call on the caller's node (all attempts nest under it).
pub fn route_span(c: CallContext<'_>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        parent: None,
        "mesh.route",
        otel.name = %format!("mesh.route {}", c.capability),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        agentmesh.node.id = %c.caller_node,
        agentmesh.agent = %c.caller_agent,
        mesh.caller.node = %c.caller_node,
        mesh.caller.agent = %c.caller_agent,
        mesh.capability = %c.capability,
        mesh.policy = tracing::field::Empty,
        mesh.attempts = tracing::field::Empty,
        mesh.outcome = tracing::field::Empty,
    );
    let _ = span.set_parent(extract(c.traceparent, c.tracestate));
    span
}

/// Who an attempt goes to.
#[derive(Debug, Clone, Copy)]
pub struct AttemptTarget<'a> {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The callee's node.
    pub node: &'a NodeId,
    /// The callee's agent.
    pub agent: &'a str,
    /// The policy that picked it.
    pub policy: &'a str,
    /// Its breaker state when picked.
    pub breaker: &'a str,
    /// True when the agent is this node's own (no network hop).
    pub local: bool,
}

/// A client span for one attempt, child of `route`.
pub fn attempt_span(route: &Span, c: CallContext<'_>, t: AttemptTarget<'_>) -> Span {
    if route.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TRACE_TARGET,
        parent: route,
        "mesh.attempt",
        otel.name = %format!("mesh.attempt {}", c.capability),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        agentmesh.node.id = %c.caller_node,
        agentmesh.agent = %c.caller_agent,
        mesh.caller.node = %c.caller_node,
        mesh.caller.agent = %c.caller_agent,
        mesh.callee.node = %t.node,
        mesh.callee.agent = %t.agent,
        mesh.capability = %c.capability,
        mesh.policy = %t.policy,
        mesh.attempt = t.attempt as i64,
        mesh.breaker.state = %t.breaker,
        mesh.local = t.local,
        mesh.outcome = tracing::field::Empty,
        rpc.system = "agentmesh",
        rpc.service = "agentmesh.call",
        rpc.method = %c.capability,
        server.address = %t.node,
        http.response.status_code = tracing::field::Empty,
    )
}

/// The server span of an inbound call on the callee's node, child of the caller's attempt.
pub fn server_span(h: &CallHeader, from: &NodeId, me: &NodeId, agent: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        parent: None,
        "mesh.serve",
        otel.name = %format!("mesh.serve {}", h.capability),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        agentmesh.node.id = %me,
        agentmesh.agent = %agent,
        mesh.caller.node = %from,
        mesh.caller.agent = %h.caller_agent.as_deref().unwrap_or(crate::obs::metrics::NONE_LABEL),
        mesh.callee.node = %me,
        mesh.callee.agent = %agent,
        mesh.capability = %h.capability,
        mesh.outcome = tracing::field::Empty,
        rpc.system = "agentmesh",
        rpc.service = "agentmesh.call",
        rpc.method = %h.capability,
        client.address = %from,
        http.response.status_code = tracing::field::Empty,
    );
    let _ = span.set_parent(extract(h.traceparent.as_deref(), h.tracestate.as_deref()));
    span
}

/// The client span of the HTTP handoff to the local agent, child of `parent`; `me` is this
/// (the callee's) node.
pub fn handoff_span(
    parent: &Span,
    me: &NodeId,
    capability: &str,
    agent: &str,
    handler: &str,
) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: TRACE_TARGET,
        parent: parent,
        "mesh.agent",
        otel.name = %format!("mesh.agent {capability}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        agentmesh.node.id = %me,
        agentmesh.agent = %agent,
        mesh.callee.agent = %agent,
        mesh.capability = %capability,
        mesh.outcome = tracing::field::Empty,
        http.request.method = "POST",
        url.full = %handler,
        http.response.status_code = tracing::field::Empty,
    )
}

/// Records the outcome (and the agent's status, if it answered) on `span`.
pub fn finish(span: &Span, outcome: &str, status: Option<u16>) {
    if span.is_disabled() {
        return;
    }
    span.record("mesh.outcome", outcome);
    if let Some(s) = status {
        span.record("http.response.status_code", s as i64);
    }
    span.record(
        "otel.status_code",
        if outcome == "ok" { "ok" } else { "error" },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(resolve(None, env(&[])).unwrap(), None);
        let empty = TelemetrySection::default();
        assert_eq!(resolve(Some(&empty), env(&[])).unwrap(), None);
    }

    #[test]
    fn config_wins_over_environment() {
        let s = TelemetrySection {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            otlp_protocol: Some("http/protobuf".into()),
            service_name: None,
        };
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "svc"),
        ]);
        let r = resolve(Some(&s), e).unwrap().unwrap();
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            r.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(r.service_name, "svc");
    }

    #[test]
    fn environment_alone_enables_export() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]);
        let r = resolve(None, e).unwrap().unwrap();
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.endpoint, None, "the exporter reads the variable itself");
        let bad = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ]);
        assert!(resolve(None, bad).is_err());
    }

    #[test]
    fn section_validation_names_the_field() {
        let s = TelemetrySection {
            otlp_endpoint: Some("not a url".into()),
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().0, "telemetry.otlp_endpoint");
        let s = TelemetrySection {
            otlp_protocol: Some("http/json".into()),
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().0, "telemetry.otlp_protocol");
    }

    #[test]
    fn disabled_spans_inject_nothing() {
        assert!(inject(&Span::none()).is_none());
    }
}
