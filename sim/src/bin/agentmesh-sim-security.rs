//! `agentmesh-sim-security`: the security scenarios (`revoke`, `attacks`) as one JSON object.

use clap::Parser;

/// Security scenarios of the agentmesh simulator.
#[derive(Parser, Debug)]
#[command(name = "agentmesh-sim-security", version)]
struct Cli {
    /// `revoke` (time to revoke a member across the mesh) or `attacks`.
    #[arg(long, default_value = "revoke")]
    scenario: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Message loss probability (revoke).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Simulated seconds (revoke).
    #[arg(long = "duration-s", default_value_t = 10)]
    duration_s: u64,
    /// Sybil identities (attacks).
    #[arg(long, default_value_t = 500)]
    sybils: usize,
}

fn main() {
    let c = Cli::parse();
    if c.nodes < 4 || !(0.0..=1.0).contains(&c.loss) {
        eprintln!("--nodes must be at least 4 and --loss within 0..=1");
        std::process::exit(2);
    }
    let json = match c.scenario.as_str() {
        "revoke" => serde_json::to_string(&agentmesh_sim::security::revoke(
            c.nodes,
            c.seed,
            c.loss,
            c.duration_s,
        )),
        "attacks" => {
            serde_json::to_string(&agentmesh_sim::security::attacks(c.nodes, c.seed, c.sybils))
        }
        other => {
            eprintln!("unknown scenario {other:?}: expected revoke or attacks");
            std::process::exit(2);
        }
    };
    println!("{}", json.expect("report serialises"));
}
