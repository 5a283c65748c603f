//! The command line of the `ingest` binary, in the library so other launchers (the chaos
//! harness) start the very same service.

use crate::settings::Settings;
use clap::Parser;

/// The registration edge. Every other setting comes from `REG_*` variables (see
/// `deploy/up --help`).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "REG_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The read API's public base URL, as the citizens' page reaches it (served to the page
    /// as `/config.json`; the only other origin its Content-Security-Policy allows). Unset:
    /// `REG_STATUS_BASE_URL`, itself by default `http://<REG_READ_LISTEN>` under `deploy/up`.
    #[arg(long, env = "REG_READ_API_URL")]
    pub read_api_url: Option<String>,
}

/// Runs the service as its binary does, until `shutdown` fires.
pub async fn run_cli(
    args: Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    if let Some(url) = args.read_api_url {
        settings.read_api_url = url.trim_end_matches('/').to_owned();
    }
    streams::runtime::check_credentials(&[
        (
            "REG_SECRET",
            &settings.secret,
            streams::crypto::DEVELOPMENT_SECRET,
        ),
        (
            "REG_ADMIN_TOKEN",
            &settings.admin_token,
            crate::settings::DEVELOPMENT_ADMIN_TOKEN,
        ),
    ])?;
    let listener = streams::runtime::bind(&args.listen)?;
    tracing::info!(listen = %args.listen, settings = ?settings, "Ingest edge starting.");
    crate::service::run(settings, listener, shutdown).await
}
