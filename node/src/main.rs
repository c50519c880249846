//! The `agentmesh` binary: parses the command line, sets up logging and runs the command.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = agentmesh_node::cli::Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(agentmesh_node::cli::exit::FAILURE);
        }
    };
    runtime.block_on(agentmesh_node::cli::run(cli))
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays for results.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
