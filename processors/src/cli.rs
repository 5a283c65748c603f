//! The command line of the `processors` binary, in the library so other launchers (the chaos
//! harness) start the very same service.

use std::time::Duration;

use crate::service::{Settings, run};
use crate::verification::{VerificationConfig, decide::Limits};
use anyhow::Context as _;
use clap::Parser;
use streams::config::Replication;
use streams::runtime::NatsOptions;
use streams::subjects::RegionFilter;

/// Processors: reservation (slot decisions and the waiting list), verification against the
/// government registry, and the release of citizens' claims.
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
    /// Verify every registration that holds a place against the government registry
    /// (`false`: registrations stay `reserved`, e.g. while the registry is not connected).
    #[arg(long, env = "REG_VERIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub verification: bool,
    /// The government registry's base URL (the simulator `deploy/up` starts by default).
    #[arg(
        long,
        env = "REG_REGISTRY_URL",
        default_value = "http://127.0.0.1:8090"
    )]
    pub registry_url: String,
    /// How long one registry call may take, in milliseconds.
    #[arg(long, env = "REG_REGISTRY_TIMEOUT_MS", default_value_t = 5000)]
    pub registry_timeout_ms: u64,
    /// Registry calls in flight at once, per region.
    #[arg(long, env = "REG_REGISTRY_CONCURRENCY", default_value_t = 64)]
    pub registry_concurrency: usize,
    /// Registry calls per second from this replica (0: unlimited).
    #[arg(long, env = "REG_REGISTRY_RATE", default_value_t = 500)]
    pub registry_rate: u32,
    /// Registry calls for one registration before it goes to manual review.
    #[arg(long, env = "REG_VERIFY_MAX_ATTEMPTS", default_value_t = 8)]
    pub verify_max_attempts: u32,
    /// Seconds after its place was granted before a registration the registry has not
    /// answered for goes to manual review.
    #[arg(long, env = "REG_VERIFY_MAX_AGE_S", default_value_t = 900)]
    pub verify_max_age_s: u64,
}

/// Runs the service as its binary does, until `shutdown` fires.
pub async fn run_cli(
    args: Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let regions = RegionFilter::parse(&args.region).context("Invalid --region")?;
    let secret =
        std::env::var("REG_SECRET").unwrap_or_else(|_| streams::crypto::DEVELOPMENT_SECRET.into());
    streams::runtime::check_credentials(&[(
        "REG_SECRET",
        &secret,
        streams::crypto::DEVELOPMENT_SECRET,
    )])?;
    let verification = args.verification.then(|| VerificationConfig {
        timeout: Duration::from_millis(args.registry_timeout_ms),
        concurrency: args.registry_concurrency,
        rate_per_second: args.registry_rate,
        limits: Limits {
            max_attempts: args.verify_max_attempts,
            max_age: Duration::from_secs(args.verify_max_age_s),
            ..Limits::default()
        },
        ..VerificationConfig::new(regions.clone(), args.registry_url.clone())
    });
    let listener = streams::runtime::bind(&args.listen)?;
    tracing::info!(listen = %args.listen, region = %args.region, verification = args.verification, "Processors starting.");
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
            verification,
            keys: streams::crypto::Keys::from_secret(&secret),
        },
        listener,
        shutdown,
    )
    .await
}
