//! `projections`: projection workers and the read API.

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    let args: projections::cli::Args = streams::settings::parse();
    streams::runtime::init_telemetry(args.telemetry.log_format);
    projections::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
