//! `chaos`: runs the chaos scenario (`chaos run`), or one service as a child of it
//! (`chaos serve <service>`, the same code as the service's own binary).

use clap::{Parser, Subcommand};

/// Kill reservation replicas and nats-server while citizens register, then check every
/// invariant from the event log and the projection. Exits 1 on any violation.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the scenario and prints the verdict.
    Run(e2e::chaos::Options),
    /// Runs one service (started by `run`; not meant to be typed).
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        service: Service,
    },
}

#[derive(Debug, Subcommand)]
enum Service {
    Ingest(ingest::cli::Args),
    Processors(processors::cli::Args),
    Projections(projections::cli::Args),
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(options) => {
            let verdict = e2e::chaos::run(options).await?;
            verdict.print();
            if !verdict.violations.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { service } => {
            streams::runtime::init_telemetry();
            let shutdown = streams::runtime::shutdown_on_signals();
            // The chaos run holds our stdin open; end-of-file means it is gone, and so must
            // we be, or a crashed run leaves services behind.
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
    }
}
