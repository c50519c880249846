//! The two exposition formats of `GET /metrics`, chosen by the `Accept` header:
//! OpenMetrics 1.0.0 (what `prometheus-client` encodes) when the scraper asks for
//! `application/openmetrics-text`, else the Prometheus text format 0.0.4 (no header, `*/*`,
//! `text/plain`), which every Prometheus-compatible scraper reads.
//!
//! `prometheus-client` encodes only OpenMetrics, and no maintained crate converts its output,
//! so [`to_text_004`] rewrites the OpenMetrics text line by line (ARCHITECTURE.md):
//! - `# EOF` and `# UNIT` lines are dropped (0.0.4 has neither);
//! - a counter family `x` becomes `# TYPE x_total counter` (0.0.4 names a family by its
//!   sample, and the samples keep their `_total` name); `info` becomes a `gauge` named
//!   `x_info`, `stateset` a `gauge`, `unknown` and `gaugehistogram` `untyped`;
//! - exemplars (` # {…} v`) and `_created` samples are dropped, timestamps turn from seconds
//!   into milliseconds;
//! - `HELP` text is re-escaped (OpenMetrics escapes `"`, 0.0.4 does not).

/// Content type of the OpenMetrics answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format answer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Longest `Accept` header considered, in bytes; a longer one is answered with the default
/// format (scrapers send about 150 bytes).
pub const ACCEPT_LEN_MAX: usize = 1024;
/// Most media ranges of an `Accept` header considered.
pub const ACCEPT_RANGES_MAX: usize = 16;

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text004,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text004 => TEXT_CONTENT_TYPE,
        }
    }
}

/// The format to answer for an `Accept` header: OpenMetrics when a range naming
/// `application/openmetrics-text` has a q-value above 0 and at least that of the best range
/// matching `text/plain` (`text/plain`, `text/*`, `*/*`); the text format otherwise.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept.filter(|a| a.len() <= ACCEPT_LEN_MAX) else {
        return Format::Text004;
    };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',').take(ACCEPT_RANGES_MAX) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
                }
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text004
    }
}

/// The type a family has in the text format, and the name its `# TYPE` line carries.
fn text_type<'a>(name: &str, om_type: &'a str) -> (String, &'a str) {
    match om_type {
        "counter" => (format!("{name}_total"), "counter"),
        "info" => (format!("{name}_info"), "gauge"),
        "stateset" => (name.to_string(), "gauge"),
        "gauge" | "histogram" | "summary" => (name.to_string(), om_type),
        _ => (name.to_string(), "untyped"),
    }
}

/// Where the metric name (and label set, if any) of a sample line ends, so that quotes in
/// label values are not mistaken for the value or an exemplar.
fn series_end(line: &str) -> usize {
    let b = line.as_bytes();
    let Some(open) = line.find(['{', ' ']) else {
        return line.len();
    };
    if b[open] == b' ' {
        return open;
    }
    let (mut i, mut quoted) = (open + 1, false);
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return i + 1,
            _ => {}
        }
        i += 1;
    }
    line.len()
}

/// OpenMetrics `HELP` text to 0.0.4's escaping (only `\\` and `\n` are escapes there).
fn help_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut chars = om.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('n') => out.push_str("\\n"),
            Some('\\') => out.push_str("\\\\"),
            Some(o) => {
                out.push_str("\\\\");
                out.push(o);
            }
            None => out.push_str("\\\\"),
        }
    }
    out
}

/// Rewrites OpenMetrics text as the Prometheus text format 0.0.4 (see the module doc).
pub fn to_text_004(om: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, t)) = rest.split_once(' ') {
                types.insert(name, t.trim());
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.is_empty() || line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, t) = text_type(name, t.trim());
            out.push_str(&format!("# TYPE {name} {t}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let t = types.get(name).copied().unwrap_or("unknown");
            let (name, _) = text_type(name, t);
            out.push_str(&format!("# HELP {name} {}\n", help_text(help)));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let end = series_end(line);
        let series = &line[..end];
        let metric = &series[..series.find('{').unwrap_or(series.len())];
        if metric.ends_with("_created") {
            continue;
        }
        // Value and optional timestamp; the exemplar after ` # ` is dropped.
        let rest = line[end..].split(" # ").next().unwrap_or("");
        let mut fields = rest.split_whitespace();
        let Some(value) = fields.next() else { continue };
        out.push_str(series);
        out.push(' ');
        out.push_str(value);
        if let Some(ts) = fields.next().and_then(|t| t.parse::<f64>().ok()) {
            out.push_str(&format!(" {}", (ts * 1000.0).round() as i64));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_accept_and_q_values() {
        use Format::*;
        for (accept, want) in [
            (None, Text004),
            (Some(""), Text004),
            (Some("*/*"), Text004),
            (Some("text/plain"), Text004),
            (Some("text/plain;version=0.0.4"), Text004),
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("Application/OpenMetrics-Text; version=1.0.0"), OpenMetrics),
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Text004,
            ),
            (
                Some("application/openmetrics-text;q=0.8, text/plain;q=0.8"),
                OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Text004),
            (Some("application/openmetrics-text;q=junk"), Text004),
            (Some("application/json"), Text004),
            // Prometheus 2.x before scrape_protocols, and the 0.0.4-only scrape protocol.
            (
                Some("application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"),
                Text004,
            ),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
        let long = format!(
            "{},application/openmetrics-text",
            "x".repeat(ACCEPT_LEN_MAX)
        );
        assert_eq!(negotiate(Some(&long)), Format::Text004, "over the bound");
    }

    const OM: &str = "# HELP agentmesh_calls Routed calls \\\"made\\\" here.\n\
# TYPE agentmesh_calls counter\n\
agentmesh_calls_total{source_agent=\"a # b\",outcome=\"ok\"} 6\n\
agentmesh_calls_created{source_agent=\"a # b\",outcome=\"ok\"} 1700000000.5\n\
# HELP agentmesh_call_duration_seconds Latency.\n\
# TYPE agentmesh_call_duration_seconds histogram\n\
# UNIT agentmesh_call_duration_seconds seconds\n\
agentmesh_call_duration_seconds_sum{p=\"x\"} 0.25\n\
agentmesh_call_duration_seconds_count{p=\"x\"} 2\n\
agentmesh_call_duration_seconds_bucket{le=\"0.1\",p=\"x\"} 1 # {trace_id=\"abc\"} 0.05 1700000000.000\n\
agentmesh_call_duration_seconds_bucket{le=\"+Inf\",p=\"x\"} 2\n\
# HELP agentmesh_in_flight In flight.\n\
# TYPE agentmesh_in_flight gauge\n\
agentmesh_in_flight{direction=\"in\\\"bound\"} 3 1700000000.25\n\
# HELP agentmesh_build Build information.\n\
# TYPE agentmesh_build info\n\
agentmesh_build_info{version=\"0.1.0\"} 1\n\
# TYPE agentmesh_odd unknown\n\
agentmesh_odd 1\n\
# EOF\n";

    #[test]
    fn openmetrics_converts_to_text_004() {
        let t = to_text_004(OM);
        let want = "# HELP agentmesh_calls_total Routed calls \"made\" here.\n\
# TYPE agentmesh_calls_total counter\n\
agentmesh_calls_total{source_agent=\"a # b\",outcome=\"ok\"} 6\n\
# HELP agentmesh_call_duration_seconds Latency.\n\
# TYPE agentmesh_call_duration_seconds histogram\n\
agentmesh_call_duration_seconds_sum{p=\"x\"} 0.25\n\
agentmesh_call_duration_seconds_count{p=\"x\"} 2\n\
agentmesh_call_duration_seconds_bucket{le=\"0.1\",p=\"x\"} 1\n\
agentmesh_call_duration_seconds_bucket{le=\"+Inf\",p=\"x\"} 2\n\
# HELP agentmesh_in_flight In flight.\n\
# TYPE agentmesh_in_flight gauge\n\
agentmesh_in_flight{direction=\"in\\\"bound\"} 3 1700000000250\n\
# HELP agentmesh_build_info Build information.\n\
# TYPE agentmesh_build_info gauge\n\
agentmesh_build_info{version=\"0.1.0\"} 1\n\
# TYPE agentmesh_odd untyped\n\
agentmesh_odd 1\n";
        assert_eq!(t, want);
    }

    #[test]
    fn the_node_registry_converts_cleanly() {
        let m = crate::obs::metrics::Metrics::new();
        m.record_call("a", "b", "x.y", "ok", 0.01);
        m.record_refusal("x.y", "no_eligible_agent");
        let om = m.encode(&Default::default());
        assert!(om.ends_with("# EOF\n"), "{om}");
        let t = to_text_004(&om);
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
        assert!(t.contains("# TYPE agentmesh_calls_total counter\n"), "{t}");
        assert!(t.contains("agentmesh_calls_total{"), "{t}");
        assert!(
            t.contains("# TYPE agentmesh_routing_refusals_total counter\n"),
            "{t}"
        );
        // Every sample belongs to the family its last `# TYPE` names.
        let mut family = String::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or("").to_string();
            } else if !line.starts_with('#') {
                let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
                let ok = name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family.as_str()));
                assert!(ok, "{name} under {family}: {t}");
            }
        }
    }
}
