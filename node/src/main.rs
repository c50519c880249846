//! The `agentmesh` binary: parses the command line, sets up logging and runs the command.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: glibc's malloc and free were 12-15 % of a node's samples
/// on the call path (perf, 64 in flight); see ARCHITECTURE.md for the A/B.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = agentmesh_node::cli::Cli::parse();
    // One thread runs the node's async work unless TOKIO_WORKER_THREADS asks for a pool:
    // tokio's current-thread scheduler spent 15-20 % less CPU per routed call at 64 in flight
    // than a one-worker multi-thread pool (ARCHITECTURE.md). Gossip has its own thread either way.
    let mut builder = if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
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
        let section = agentmesh_node::cli::telemetry_section(&cli);
        let instance = agentmesh_node::cli::telemetry_instance(&cli);
        agentmesh_node::obs::telemetry::init(section.as_ref(), instance.as_deref())
    };
    runtime.block_on(async move {
        let code = agentmesh_node::cli::run(cli).await;
        // The last flush needs the runtime's tasks (the gRPC connection), so it runs beside
        // them rather than after the runtime has stopped.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        code
    })
}
