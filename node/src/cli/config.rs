//! `agentmesh config validate|show|reload`, and the SIGHUP reload of a running node.

use crate::cli::{
    authed, client, exit, fail, get_json, print_json, read_ok, unreachable, url, ApiArgs,
    CmdResult, CLI_HTTP_TIMEOUT_MS, HUMAN_COLS_MAX,
};
use crate::config::NodeConfig;
use crate::runtime::MeshHandle;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// `agentmesh config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a node.toml without starting a node (exit 3 if invalid).
    ///
    /// The error names the file, the key and the valid values.
    Validate(ValidateArgs),
    /// Print the effective routing and resilience settings per capability of a running node.
    Show(ShowArgs),
    /// Make a running node re-read its config file, as SIGHUP does.
    ///
    /// An invalid file is refused and the old settings stay.
    Reload(ShowArgs),
}

/// `agentmesh config validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The file to check.
    pub file: PathBuf,
    /// Print the effective settings as JSON when valid.
    #[arg(long)]
    pub json: bool,
}

/// `agentmesh config show|reload`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Which node to ask.
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `config` subcommand.
pub async fn run(c: ConfigCommand) -> CmdResult {
    match c {
        ConfigCommand::Validate(a) => {
            let cfg = NodeConfig::load(&a.file).map_err(|e| fail(exit::CONFIG, e.to_string()))?;
            if a.json {
                print_json(&serde_json::to_value(&cfg.mesh).unwrap_or_default());
            } else {
                println!(
                    "{}: valid ({} capability section(s))",
                    a.file.display(),
                    cfg.mesh.capabilities.len()
                );
            }
            Ok(())
        }
        ConfigCommand::Show(a) => {
            let v = get_json(&a.api, "/v1/config").await?;
            show(&v, a.json);
            Ok(())
        }
        ConfigCommand::Reload(a) => {
            let c = client(Duration::from_millis(CLI_HTTP_TIMEOUT_MS))?;
            let resp = authed(c.post(url(&a.api, "/v1/config/reload")), &a.api)
                .send()
                .await
                .map_err(|e| unreachable(&a.api, e))?;
            let body = read_ok(&a.api, resp).await?;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            eprintln!("reloaded");
            show(&v, a.json);
            Ok(())
        }
    }
}

fn show(v: &serde_json::Value, json: bool) {
    if json {
        print_json(v);
    } else {
        println!("{}", settings_table(v));
    }
}

/// One line per capability (defaults first), at most [`HUMAN_COLS_MAX`] columns.
pub fn settings_table(v: &serde_json::Value) -> String {
    let mut lines = vec![format!(
        "{:<24} {:<12} {:>8} {:>5} {:>6} {:>6} {:<16}",
        "CAPABILITY", "POLICY", "DEADLINE", "RETRY", "BRK_FR", "PANIC", "FALLBACK"
    )];
    let row = |name: &str, s: &serde_json::Value| {
        let line = format!(
            "{:<24} {:<12} {:>8} {:>5} {:>6} {:>6} {:<16}",
            crate::cli::clip(name, 24),
            s["policy"].as_str().unwrap_or("?"),
            s["deadline"]["default_ms"].as_u64().unwrap_or(0),
            s["retry"]["max_retries"].as_u64().unwrap_or(0),
            s["breaker"]["failure_rate"].as_f64().unwrap_or(0.0),
            s["breaker"]["panic_threshold"].as_f64().unwrap_or(0.0),
            s["fallback"].as_str().unwrap_or("-"),
        );
        crate::cli::clip(&line, HUMAN_COLS_MAX)
    };
    lines.push(row("[defaults]", &v["defaults"]));
    if let Some(caps) = v["capabilities"].as_object() {
        for (name, s) in caps {
            lines.push(row(name, s));
        }
    }
    lines.push(format!(
        "shedding: experimental at {} %, standard at {} %, critical at 100 % of capacity",
        v["shedding"]["experimental_pct"].as_u64().unwrap_or(0),
        v["shedding"]["standard_pct"].as_u64().unwrap_or(0)
    ));
    lines.join("\n")
}

/// Re-reads the config file on every SIGHUP; an invalid file is logged and refused.
pub async fn reload_on_sighup(mesh: MeshHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use `agentmesh config reload`");
        return;
    };
    while hup.recv().await.is_some() {
        match mesh.reload_config() {
            Ok(_) => tracing::info!("SIGHUP: configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration refused; old settings stay")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits() {
        let spec = crate::routing::settings::MeshConfig::default();
        let v = serde_json::to_value(&spec).unwrap();
        let t = settings_table(&v);
        assert!(
            t.lines().all(|l| l.chars().count() <= HUMAN_COLS_MAX),
            "{t}"
        );
        assert!(t.contains("latency"));
    }
}
