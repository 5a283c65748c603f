//! `processors`: runs the reservation processor for one region or all.

use anyhow::Context as _;
use clap::Parser;
use processors::service::{Settings, run};
use streams::config::Replication;
use streams::runtime::NatsOptions;
use streams::subjects::RegionFilter;

/// Reservation processor: turns accepted registrations into slot decisions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// NATS server URL(s).
    #[arg(long, env = "REG_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Region to decide for, or `*` for all.
    #[arg(long, env = "REG_REGION", default_value = "*")]
    region: String,
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "REG_PROCESSOR_LISTEN", default_value = "127.0.0.1:8082")]
    listen: String,
    /// JetStream replicas per stream (1 on one node, 3 in a cluster).
    #[arg(long, env = "REG_REPLICAS", default_value_t = 1)]
    replicas: usize,
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    streams::runtime::init_telemetry();
    let args = Args::parse();
    let regions = RegionFilter::parse(&args.region).context("Invalid --region")?;
    let listener = std::net::TcpListener::bind(&args.listen)
        .with_context(|| format!("Failed to bind {}", args.listen))?;
    tracing::info!(listen = %args.listen, region = %args.region, "Reservation processor starting.");
    let shutdown = streams::runtime::shutdown_on_signals();
    run(
        Settings {
            nats: NatsOptions {
                url: args.nats_url,
                name: format!("reservation-{}", args.region),
                credentials: None,
            },
            regions,
            replication: Replication(args.replicas),
        },
        listener,
        shutdown,
    )
    .await
}
