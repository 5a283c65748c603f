//! `<tool> serve <service>`: a tool binary (the chaos run, the contention benchmark) starts
//! the services as its own children, running the same code as the services' binaries.

use clap::Subcommand;

/// The service to run.
#[derive(Debug, Subcommand)]
pub enum Service {
    /// The ingest edge.
    Ingest(ingest::cli::Args),
    /// The reservation processor.
    Processors(processors::cli::Args),
    /// The projections and read API.
    Projections(projections::cli::Args),
}

/// Runs `service` until a signal, or until the parent tool dies: the parent holds our stdin
/// open, so end-of-file means it is gone, and a crashed run must not leave services behind.
pub async fn serve(service: Service) -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let shutdown = streams::runtime::shutdown_on_signals();
    let orphaned = shutdown.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        orphaned.cancel();
    });
    match service {
        Service::Ingest(args) => ingest::cli::run_cli(args, shutdown).await,
        Service::Processors(args) => processors::cli::run_cli(args, shutdown).await,
        Service::Projections(args) => projections::cli::run_cli(args, shutdown).await,
    }
}
