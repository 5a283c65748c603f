//! `nats-accounts generate DIR`: per-service NATS identities for a development system;
//! `nats-accounts streams`: creates or updates the streams as the admin identity.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Per-service NATS identities, TLS settings and stream creation (see docs/security.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Log format, as the services'.
    #[command(flatten)]
    telemetry: streams::settings::TelemetryArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes `auth.conf` (the server's authorization block) and `admin.env`, `ingest.env`,
    /// `processors.env`, `projections.env` (each service's REG_NATS_* credentials) into
    /// DIR, and `tls.conf` with `--tls-dir`. Keeps what DIR already holds unless `--force`.
    Generate {
        /// Where to write.
        dir: PathBuf,
        /// A directory with `ca.pem`, `server.pem` and `server-key.pem` (`deploy/dev-ca`
        /// writes them): also write `tls.conf`, a `tls {}` block verifying clients.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// Replace existing credentials.
        #[arg(long)]
        force: bool,
    },
    /// Connects as the admin identity (REG_NATS_URL, REG_NATS_USER, REG_NATS_PASSWORD,
    /// REG_NATS_TLS_*) and creates or updates every stream and bucket.
    Streams {
        /// JetStream replicas per stream (1 on one node, 3 in a cluster).
        #[arg(long, env = "REG_REPLICAS", default_value_t = 1)]
        replicas: usize,
    },
    /// Connects as the admin identity and ends the retention of a region's personal data:
    /// erases every registration's own data key in it (JetStream's secure erase), after which
    /// none of its sealed personal data opens (docs/retention.md). Irreversible.
    EndRetention {
        /// The region whose campaign's retention is over.
        #[arg(long)]
        region: String,
        /// Confirms that this is meant: without it, nothing is erased.
        #[arg(long)]
        yes: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    streams::runtime::init_telemetry(args.telemetry.log_format);
    match args.command {
        Command::Generate {
            dir,
            tls_dir,
            force,
        } => {
            if let Some(tls_dir) = tls_dir {
                let tls = nats_accounts::ServerTls::development(&tls_dir);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("Failed to create {}", dir.display()))?;
                std::fs::write(dir.join("tls.conf"), tls.block())
                    .context("Failed to write tls.conf")?;
            }
            if dir.join("auth.conf").exists() && !force {
                tracing::info!(dir = %dir.display(), "Keeping the existing NATS identities.");
                return Ok(());
            }
            nats_accounts::Accounts::generate()
                .write(&dir)
                .with_context(|| {
                    format!("Failed to write the identities into {}", dir.display())
                })?;
            tracing::info!(dir = %dir.display(), "Wrote the NATS identities.");
        }
        Command::Streams { replicas } => {
            let shutdown = streams::runtime::shutdown_on_signals();
            let mut options = streams::runtime::NatsOptions::from_env("nats-accounts")?;
            options.manage_streams = true;
            streams::runtime::start_jetstream(
                &options,
                streams::config::Replication(replicas),
                &shutdown,
            )
            .await
            .context("Failed to create or update the streams")?;
            tracing::info!(replicas, "The streams and buckets are in place.");
        }
        Command::EndRetention { region, yes } => {
            let region = streams::model::Region::parse(&region)
                .map_err(|err| anyhow::anyhow!("--region: {err}"))?;
            anyhow::ensure!(
                yes,
                "this erases every personal data key of {region} for good: add --yes to go on"
            );
            let shutdown = streams::runtime::shutdown_on_signals();
            let options = streams::runtime::NatsOptions::from_env("nats-accounts")?;
            let client = streams::runtime::connect(&options, &shutdown)
                .await
                .context("Failed to connect to NATS")?;
            let js = async_nats::jetstream::new(client);
            let mut last = std::time::Instant::now();
            let erased = streams::seals::end_retention(&js, &region, &mut |done, total| {
                if last.elapsed() >= std::time::Duration::from_secs(5) {
                    last = std::time::Instant::now();
                    tracing::info!(%region, done, total, "Erasing keys.");
                }
            })
            .await
            .context("Failed to end the retention")?;
            tracing::info!(%region, erased, "Every personal data key of the region is erased.");
        }
    }
    Ok(())
}
