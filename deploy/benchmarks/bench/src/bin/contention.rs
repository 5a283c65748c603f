//! `contention`: this project's reservation design against the seed's Redis `WATCH`/`MULTI`
//! design on the same contended workloads, in one run (`deploy/bench-contention`).

use clap::{Parser, Subcommand};

/// Measure decisions/s, submit-to-decision latency and aborted transactions under
/// contention, for this project and for the seed's Redis design. Reports, never gates on a
/// timing; exits 1 only if a design overbooks.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the benchmark and writes the report.
    Run(bench::contention::Options),
    /// Runs one service (started by `run`; not meant to be typed).
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        service: Box<e2e::serve::Service>,
    },
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(options) => e2e::serve::until_interrupted(bench::contention::run(options))
            .await
            .map(|_| ()),
        Command::Serve { service } => e2e::serve::serve(*service).await,
    }
}
