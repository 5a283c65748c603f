//! `ingest`: the HTTP edge citizens and operators write to.

use anyhow::Context as _;
use clap::Parser;
use ingest::settings::Settings;

/// The registration edge. Every other setting comes from `REG_*` variables (see
/// `deploy/up --help`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "REG_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let args = Args::parse();
    let settings = Settings::from_env()?;
    if settings.secret == streams::crypto::DEVELOPMENT_SECRET {
        tracing::warn!(
            "REG_SECRET is unset: using the development secret. Never do this in production."
        );
    }
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("Failed to bind {}", args.listen))?;
    tracing::info!(listen = %args.listen, settings = ?settings, "Ingest edge starting.");
    let shutdown = streams::runtime::shutdown_on_signals();
    ingest::service::run(settings, listener, shutdown).await
}
