//! `processors`: runs the reservation processor for one region or all.

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    let args: processors::cli::Args = streams::settings::parse();
    streams::runtime::init_telemetry(args.telemetry.log_format);
    processors::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
