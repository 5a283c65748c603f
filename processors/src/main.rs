//! `processors`: runs the reservation processor for one region or all.

use clap::Parser;

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let args = processors::cli::Args::parse();
    processors::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
