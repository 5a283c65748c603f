//! The command line of the `processors` binary, in the library so other launchers (the chaos
//! harness) start the very same service.

use std::time::Duration;

use crate::notification::NotificationConfig;
use crate::service::{Settings, run};
use crate::verification::{VerificationConfig, decide::Limits};
use anyhow::Context as _;
use clap::Parser;
use streams::config::Replication;
use streams::runtime::NatsOptions;
use streams::subjects::RegionFilter;

/// Processors: reservation (slot decisions and the waiting list), verification against the
/// government registry, notifications to citizens, and the release of citizens' claims.
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
    /// Store a snapshot of a region's reservation state after this many decisions, so a
    /// takeover folds at most about this many (0: never; every takeover folds the whole log).
    #[arg(long, env = "REG_SNAPSHOT_EVERY", default_value_t = crate::reservation::SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
    /// Each region's time zone, where a slot's day ends: IANA names, comma-separated, bare
    /// for every region or `region=Zone` for one.
    #[arg(long, env = "REG_TIME_ZONES", default_value = "Europe/Warsaw")]
    pub time_zones: streams::calendar::Calendar,
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
    /// Tell citizens of every decision, by e-mail and through the text-message gateway.
    #[arg(long, env = "REG_NOTIFICATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub notifications: bool,
    /// The SMTP relay (`host:port`; plain SMTP, e.g. a local relay or the development sink).
    #[arg(long, env = "REG_SMTP_ADDRESS", default_value = "127.0.0.1:2525")]
    pub smtp_address: String,
    /// The sender of the e-mails.
    #[arg(
        long,
        env = "REG_MAIL_FROM",
        default_value = "Rejestracja <no-reply@rejestracja.example>"
    )]
    pub mail_from: String,
    /// The text-message gateway's webhook.
    #[arg(
        long,
        env = "REG_WEBHOOK_URL",
        default_value = "http://127.0.0.1:8091/webhook"
    )]
    pub webhook_url: String,
    /// The page a status link opens (the registration and its token go in the fragment).
    #[arg(
        long,
        env = "REG_CITIZEN_PAGE_URL",
        default_value = "http://127.0.0.1:8080/"
    )]
    pub citizen_page_url: String,
    /// Delivery attempts of one decision's messages before they are dead-lettered.
    #[arg(long, env = "REG_NOTIFY_MAX_ATTEMPTS", default_value_t = 10)]
    pub notify_max_attempts: u32,
    /// E-mails per second to the relay from this replica (0: unlimited).
    #[arg(long, env = "REG_MAIL_RATE", default_value_t = 200)]
    pub mail_rate: u32,
    /// Texts per second to the gateway from this replica (0: unlimited).
    #[arg(long, env = "REG_WEBHOOK_RATE", default_value_t = 200)]
    pub webhook_rate: u32,
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
    let webhook_secret = std::env::var("REG_WEBHOOK_SECRET")
        .unwrap_or_else(|_| crate::notification::DEVELOPMENT_WEBHOOK_SECRET.into());
    streams::runtime::check_credentials(&[(
        "REG_WEBHOOK_SECRET",
        &webhook_secret,
        crate::notification::DEVELOPMENT_WEBHOOK_SECRET,
    )])?;
    // The process's identity (REG_NATS_USER) is the reservation processor's and the claims
    // releaser's; verification and notification may each have their own.
    let base_nats = NatsOptions::from_env(&format!("reservation-{}", args.region))?;
    let part_nats = |who: &str| -> anyhow::Result<Option<NatsOptions>> {
        let mut own = base_nats.clone().with_identity_from_env(who)?;
        own.name = format!("{who}-{}", args.region);
        own.url = args.nats_url.clone();
        Ok((own.credentials != base_nats.credentials).then_some(own))
    };
    let verification_nats = part_nats("verification")?;
    let notification_nats = part_nats("notification")?;
    let notification = if args.notifications {
        let (host, port) = args
            .smtp_address
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .context("REG_SMTP_ADDRESS must be host:port")?;
        Some(NotificationConfig {
            smtp_host: host,
            smtp_port: port,
            mail_from: args.mail_from.clone(),
            webhook_url: args.webhook_url.clone(),
            webhook_secret,
            page_url: args.citizen_page_url.clone(),
            max_attempts: args.notify_max_attempts,
            mail_rate: args.mail_rate,
            webhook_rate: args.webhook_rate,
            nats: notification_nats,
            ..NotificationConfig::development(regions.clone())
        })
    } else {
        None
    };
    let verification = args.verification.then(|| VerificationConfig {
        timeout: Duration::from_millis(args.registry_timeout_ms),
        concurrency: args.registry_concurrency,
        rate_per_second: args.registry_rate,
        limits: Limits {
            max_attempts: args.verify_max_attempts,
            max_age: Duration::from_secs(args.verify_max_age_s),
            ..Limits::default()
        },
        nats: verification_nats,
        ..VerificationConfig::new(regions.clone(), args.registry_url.clone())
    });
    let listener = streams::runtime::bind(&args.listen)?;
    tracing::info!(listen = %args.listen, region = %args.region, verification = args.verification, "Processors starting.");
    run(
        Settings {
            nats: NatsOptions {
                url: args.nats_url,
                ..base_nats.clone()
            },
            regions,
            replication: Replication(args.replicas),
            policy: crate::reservation::decide::Policy {
                waitlist_per_slot: args.waitlist_per_slot,
            },
            snapshot_every: args.snapshot_every,
            calendar: args.time_zones,
            verification,
            notification,
            keys: streams::crypto::Keys::from_secret(&secret),
        },
        listener,
        shutdown,
    )
    .await
}
