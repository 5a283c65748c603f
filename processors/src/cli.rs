//! The command line of the `processors` binary, in the library so other launchers (the chaos
//! harness) start the very same service.

use crate::service::{Settings, run};
use anyhow::Context as _;
use clap::Parser;
use streams::config::Replication;
use streams::runtime::NatsOptions;
use streams::subjects::RegionFilter;

/// Reservation processor: turns accepted registrations into slot decisions.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// NATS server URL(s).
    #[arg(long, env = "REG_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Region to decide for, or `*` for all.
    #[arg(long, env = "REG_REGION", default_value = "*")]
    pub region: String,
    /// Address of the health and metrics endpoint.
    #[arg(long, env = "REG_PROCESSOR_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: String,
    /// JetStream replicas per stream (1 on one node, 3 in a cluster).
    #[arg(long, env = "REG_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// How many registrations may wait in line for one full slot (default: as many as the
    /// slot's capacity). Beyond it a registration is rejected with `slot_full`.
    #[arg(long, env = "REG_WAITLIST_PER_SLOT")]
    pub waitlist_per_slot: Option<u32>,
}

/// Runs the service as its binary does, until `shutdown` fires.
pub async fn run_cli(
    args: Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let regions = RegionFilter::parse(&args.region).context("Invalid --region")?;
    let listener = streams::runtime::bind(&args.listen)?;
    tracing::info!(listen = %args.listen, region = %args.region, "Reservation processor starting.");
    run(
        Settings {
            nats: NatsOptions {
                url: args.nats_url,
                name: format!("reservation-{}", args.region),
                credentials: None,
            },
            regions,
            replication: Replication(args.replicas),
            policy: crate::reservation::decide::Policy {
                waitlist_per_slot: args.waitlist_per_slot,
            },
        },
        listener,
        shutdown,
    )
    .await
}
