//! `quorum-sim`: the byzantine quorum simulation table (see `agentmesh_sim::quorum`).
//!
//! `cargo run -p agentmesh-sim --bin quorum-sim -- --seeds 1000 [--f 1,2,3] [--json]`
//! Exit 1 if any run decided a wrong value or failed to decide when it must.

use agentmesh_sim::quorum::{render, table};
use clap::Parser;

/// Byzantine quorum simulation.
#[derive(Parser)]
struct Args {
    /// Seeds per row.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Fault levels (n = 3f+1 each).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    f: Vec<u32>,
    /// Print JSON rows.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let rows = table(&a.f, a.seeds, a.first_seed);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        print!("{}", render(&rows));
    }
    let unsafe_runs: u32 = rows.iter().map(|r| r.decided_wrong).sum();
    // Within tolerance (byz <= f) every non-silent and silent case must decide the truth.
    let undecided: u32 = rows
        .iter()
        .filter(|r| r.byzantine <= r.f)
        .map(|r| r.runs - r.decided_truth)
        .sum();
    if unsafe_runs > 0 || undecided > 0 {
        eprintln!(
            "FAILED: {unsafe_runs} wrong decision(s), {undecided} undecided within tolerance"
        );
        return std::process::ExitCode::FAILURE;
    }
    eprintln!("ok: no wrong value decided; every run within tolerance decided the truth");
    std::process::ExitCode::SUCCESS
}
