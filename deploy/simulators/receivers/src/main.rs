//! `receivers`: serves the SMTP sink and the webhook receiver until Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use receivers::{DEVELOPMENT_WEBHOOK_SECRET, Knobs, Receivers, Simulator as _};
use simkit::Knobs as _;

/// Local receivers for notifications: an SMTP sink (plain SMTP, no TLS, no AUTH) storing each
/// message as <data-dir>/mail/<X-Notification-Id>.eml, and a webhook receiver
/// (POST /webhook, signed with HMAC-SHA256) appending each delivery to
/// <data-dir>/webhook/deliveries.ndjson. Both are idempotent by notification id.
///
/// Knobs start from the defaults (nothing fails), then --knobs; they change at runtime with
/// `PUT /_sim/knobs` on the webhook listener (a partial JSON object). Admin: GET/PUT
/// /_sim/knobs, GET /_sim/counts, GET /healthz. Logs follow RUST_LOG (default: info;
/// REG_LOG_FORMAT=json for JSON lines).
#[derive(Debug, Parser)]
#[command(name = "receivers", version, about, long_about)]
struct Cli {
    /// Directory the deliveries are stored under (mail/ and webhook/ are created in it).
    #[arg(long, env = "REG_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Address the SMTP sink listens on.
    #[arg(long, env = "REG_SMTP_LISTEN", default_value = "127.0.0.1:2525")]
    smtp_listen: String,

    /// Address the webhook receiver and the admin endpoints listen on.
    #[arg(long, env = "REG_WEBHOOK_LISTEN", default_value = "127.0.0.1:8091")]
    webhook_listen: String,

    /// The shared secret webhook signatures are checked with (the development default when
    /// not given).
    #[arg(long, env = "REG_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,

    /// Knobs as a JSON object; fields not given keep their defaults. Fields: smtp_fail_rate,
    /// webhook_fail_rate (probabilities, 0 to 1). Example: '{"smtp_fail_rate":0.1}'
    #[arg(long, env = "REG_RECEIVERS_KNOBS", value_name = "JSON")]
    knobs: Option<String>,
    /// How mail is kept: `files`, one `<notification id>.eml` per message, or `mbox`, every
    /// message appended to mail/messages.mbox (a write per message instead of a new file:
    /// what the benchmark uses, so the stand-in does not cost more than the system).
    #[arg(long, env = "REG_MAIL_STORE", value_enum, default_value = "files")]
    mail_store: receivers::MailStore,
    #[command(flatten)]
    telemetry: streams::settings::TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = streams::settings::parse();
    streams::runtime::init_telemetry(cli.telemetry.log_format);
    let knobs =
        Knobs::over_defaults(cli.knobs.as_deref()).context("--knobs / REG_RECEIVERS_KNOBS")?;
    let secret = match cli.webhook_secret {
        Some(secret) if secret.is_empty() => {
            anyhow::bail!(
                "--webhook-secret / REG_WEBHOOK_SECRET is empty: give a secret or leave it unset"
            )
        }
        Some(secret) => secret,
        None => {
            tracing::warn!(
                "no REG_WEBHOOK_SECRET: checking webhook signatures with the development secret"
            );
            DEVELOPMENT_WEBHOOK_SECRET.to_owned()
        }
    };
    let receivers = Receivers::keeping_mail(cli.data_dir, knobs, secret, cli.mail_store)?;
    let smtp = tokio::net::TcpListener::bind(&cli.smtp_listen)
        .await
        .with_context(|| format!("listening on {} (SMTP)", cli.smtp_listen))?;
    let http = tokio::net::TcpListener::bind(&cli.webhook_listen)
        .await
        .with_context(|| format!("listening on {} (webhook)", cli.webhook_listen))?;
    let knobs = serde_json::to_string(&receivers.knobs())?;
    tracing::info!(
        smtp = %smtp.local_addr()?,
        webhook = %http.local_addr()?,
        mail_dir = %receivers.mail_dir().display(),
        webhook_file = %receivers.webhook_file().display(),
        %knobs,
        "receivers listening"
    );
    simkit::serve_until_signalled(|shutdown| receivers.serve(smtp, http, shutdown)).await?;
    tracing::info!("receivers stopped");
    Ok(())
}
