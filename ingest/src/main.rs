//! `ingest`: the HTTP edge citizens and operators write to.

use clap::Parser;

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let args = ingest::cli::Args::parse();
    ingest::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
