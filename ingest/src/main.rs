//! `ingest`: the HTTP edge citizens and operators write to.

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    let args: ingest::cli::Args = streams::settings::parse();
    streams::runtime::init_telemetry(args.telemetry.log_format);
    ingest::cli::run_cli(args, streams::runtime::shutdown_on_signals()).await
}
