//! The `agentmesh` binary: parses the command line, sets up logging and runs the command.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc malloc: glibc's malloc and free were 12-15 % of a node's samples
/// on the call path (perf, 64 in flight); see ARCHITECTURE.md for the A/B.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Async worker threads when `TOKIO_WORKER_THREADS` is not set.
const DEFAULT_WORKER_THREADS: usize = 1;

fn main() -> ExitCode {
    let cli = agentmesh_node::cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // One worker unless TOKIO_WORKER_THREADS says otherwise: on the 2-core bench machine a
    // single worker cut the routed p50 by ~20 % (fewer cross-thread wake-ups), as Linkerd's
    // proxy also defaults to one core. Gossip runs on its own thread either way.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(DEFAULT_WORKER_THREADS);
    }
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
        let section = agentmesh_node::telemetry::section_for(&cli);
        agentmesh_node::telemetry::init(section.as_ref())
    };
    let code = runtime.block_on(agentmesh_node::cli::run(cli));
    telemetry.shutdown();
    code
}
