//! `agentmesh top`: a live-refreshing terminal view of the mesh-wide traffic (from
//! `GET /v1/mesh/summary` and `/v1/mesh/matrix`): the busiest pairs with their call rate,
//! error rate and latency, the slowest pairs, the most-called and the idle agents.

use crate::cli::{clip, exit, fail, get_json, print_json, ApiArgs, CmdResult, HUMAN_COLS_MAX};
use crate::obs::mesh_view::{Matrix, Summary};
use clap::Args;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest refresh interval accepted, in ms.
pub const TOP_INTERVAL_MS_MIN: u64 = 200;
/// Most pair rows shown.
pub const TOP_ROWS_MAX: usize = 20;

/// `agentmesh top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Which node to ask.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Refresh interval, in ms.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Print one frame and exit (for scripts).
    #[arg(long)]
    pub once: bool,
    /// Print the summary and matrix as JSON once and exit.
    #[arg(long)]
    pub json: bool,
}

type Key = (String, String, String);

/// Runs `agentmesh top` until interrupted (or once).
pub async fn run(a: TopArgs) -> CmdResult {
    if a.interval_ms < TOP_INTERVAL_MS_MIN {
        return Err(fail(
            exit::USAGE,
            format!("--interval-ms must be at least {TOP_INTERVAL_MS_MIN}"),
        ));
    }
    let mut last: Option<(Instant, HashMap<Key, u64>)> = None;
    loop {
        let (summary, matrix) = fetch(&a.api).await?;
        if a.json {
            print_json(&serde_json::json!({ "summary": summary, "matrix": matrix }));
            return Ok(());
        }
        let now = Instant::now();
        let counts: HashMap<Key, u64> = matrix
            .pairs
            .iter()
            .map(|p| {
                (
                    (p.source.clone(), p.target.clone(), p.capability.clone()),
                    p.count,
                )
            })
            .collect();
        let rates = last.as_ref().map(|(t, prev)| {
            let dt = now.duration_since(*t).as_secs_f64().max(0.001);
            counts
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        c.saturating_sub(*prev.get(k).unwrap_or(&0)) as f64 / dt,
                    )
                })
                .collect::<HashMap<Key, f64>>()
        });
        let frame = render(&summary, &matrix, rates.as_ref());
        if a.once {
            println!("{frame}");
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        println!("\x1b[2J\x1b[H{frame}");
        last = Some((now, counts));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(a.interval_ms)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn fetch(api: &ApiArgs) -> Result<(Summary, Matrix), crate::cli::Failure> {
    let s = get_json(api, "/v1/mesh/summary").await?;
    let m = get_json(api, "/v1/mesh/matrix").await?;
    let bad = |e: serde_json::Error| fail(exit::REMOTE_ERROR, format!("unexpected answer: {e}"));
    Ok((
        serde_json::from_value(s).map_err(bad)?,
        serde_json::from_value(m).map_err(bad)?,
    ))
}

/// One frame of `top`, every line at most [`HUMAN_COLS_MAX`] columns. `rates` are calls per
/// second since the previous frame (None on the first).
pub fn render(s: &Summary, m: &Matrix, rates: Option<&HashMap<Key, f64>>) -> String {
    let mut out = vec![format!(
        "agentmesh top · node …{} · {} members · {} calls · {} errors",
        &s.node_id[s.node_id.len().saturating_sub(8)..],
        s.members,
        s.calls_total,
        s.errors_total
    )];
    out.push(String::new());
    out.push(format!(
        "{:<16} {:<16} {:<20} {:>8} {:>7} {:>6} {:>8} {:>8}",
        "SOURCE", "TARGET", "CAPABILITY", "CALLS", "RATE/s", "ERR%", "P50ms", "P99ms"
    ));
    for p in m.pairs.iter().take(TOP_ROWS_MAX) {
        let key = (p.source.clone(), p.target.clone(), p.capability.clone());
        let rate = rates
            .and_then(|r| r.get(&key))
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into());
        let line = format!(
            "{:<16} {:<16} {:<20} {:>8} {:>7} {:>6.1} {:>8.1} {:>8.1}",
            clip(&p.source, 16),
            clip(&p.target, 16),
            clip(&p.capability, 20),
            p.count,
            rate,
            p.error_rate * 100.0,
            p.p50_ms,
            p.p99_ms
        );
        out.push(clip(&line, HUMAN_COLS_MAX));
    }
    if m.pairs.is_empty() {
        out.push("(no traffic reported yet)".into());
    }
    out.push(String::new());
    let slow: Vec<String> = s
        .slowest_pairs
        .iter()
        .take(5)
        .map(|p| format!("{}→{} {:.0}ms", p.source, p.target, p.p99_ms))
        .collect();
    out.push(clip(
        &format!("slowest p99: {}", slow.join(", ")),
        HUMAN_COLS_MAX,
    ));
    let hot: Vec<String> = s
        .most_called
        .iter()
        .take(5)
        .map(|a| format!("{} ({})", a.agent, a.calls_in))
        .collect();
    out.push(clip(
        &format!("most called: {}", hot.join(", ")),
        HUMAN_COLS_MAX,
    ));
    let idle: Vec<&str> = s.idle_agents.iter().map(|a| a.agent.as_str()).collect();
    out.push(clip(
        &format!("no incoming traffic: {}", idle.join(", ")),
        HUMAN_COLS_MAX,
    ));
    let open: Vec<String> = s
        .breakers
        .iter()
        .map(|b| format!("{} {}", b.agent, b.state))
        .collect();
    out.push(clip(
        &format!(
            "breakers not closed: {}",
            if open.is_empty() {
                "none".to_string()
            } else {
                open.join(", ")
            }
        ),
        HUMAN_COLS_MAX,
    ));
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obs::mesh_view::PairRow;

    #[test]
    fn frame_fits_and_shows_rates() {
        let pair = PairRow {
            source: "a".repeat(40),
            source_node: "n".into(),
            target: "b".into(),
            capability: "cap".into(),
            count: 10,
            errors: 1,
            error_rate: 0.1,
            p50_ms: 2.0,
            p99_ms: 9.5,
        };
        let m = Matrix {
            node_id: "12D3KooWabcdefgh".into(),
            agents: vec![],
            pairs: vec![pair.clone()],
        };
        let s = crate::obs::mesh_view::summary(&m, vec![], vec![], Default::default());
        let mut rates = HashMap::new();
        rates.insert((pair.source.clone(), "b".into(), "cap".into()), 2.5);
        let f = render(&s, &m, Some(&rates));
        assert!(
            f.lines().all(|l| l.chars().count() <= HUMAN_COLS_MAX),
            "{f}"
        );
        assert!(f.contains("2.5"), "{f}");
        assert!(f.contains(" 10 "), "{f}");
    }
}
