//! `projections`: projection workers and the read API.

use clap::Parser;

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let args = projections::cli::Args::parse();
    projections::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
