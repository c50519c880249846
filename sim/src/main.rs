//! `agentmesh-sim`: runs one scenario and prints one JSON object.

use clap::Parser;

/// Deterministic simulator of agentmesh gossip.
#[derive(Parser, Debug)]
#[command(name = "agentmesh-sim", version)]
struct Cli {
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// RNG seed: one seed, one run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenario: steady, update, crash, loss, stall, partition-heal, churn, join, byzantine.
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// Message loss probability (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Simulated duration in seconds.
    #[arg(long = "duration-s", default_value_t = 30)]
    duration_s: u64,
    /// Gossip profile: lan or wan.
    #[arg(long, default_value = "lan")]
    profile: String,
    /// Gossip config override, `key=value` (repeatable), e.g. `suspicion_alpha=0.8`.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Print the JSON report (the only output format).
    #[arg(long)]
    json: bool,
    /// Show progress on stderr.
    #[arg(long)]
    progress: bool,
}

fn main() {
    let cli = Cli::parse();
    if !(0.0..=1.0).contains(&cli.loss) {
        eprintln!("--loss must be between 0 and 1");
        std::process::exit(2);
    }
    let params = agentmesh_sim::Params {
        nodes: cli.nodes,
        seed: cli.seed,
        scenario: cli.scenario,
        loss: cli.loss,
        duration_s: cli.duration_s,
        progress: cli.progress,
        profile: cli.profile,
        overrides: cli.set,
    };
    let started = std::time::Instant::now();
    match agentmesh_sim::run(&params) {
        Ok(report) => {
            let _ = cli.json;
            println!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            if params.progress {
                eprintln!("[sim] wall time {:.1}s", started.elapsed().as_secs_f64());
            }
        }
        Err(e) => {
            eprintln!("agentmesh-sim: {e}");
            std::process::exit(2);
        }
    }
}
