//! The `agentmesh` binary: parses the command line, sets up logging and runs the command.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = agentmesh_node::cli::Cli::parse();
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
    // Logs go to stderr (RUST_LOG, default info), so stdout stays for results; spans go to
    // OTLP when configured. The gRPC exporter needs the runtime, hence `enter`.
    let telemetry = {
        let _rt = runtime.enter();
        let section = agentmesh_node::telemetry::section_for(&cli);
        agentmesh_node::telemetry::init(section.as_ref())
    };
    let code = runtime.block_on(agentmesh_node::cli::run(cli));
    telemetry.shutdown();
    code
}
