//! The command line of the `processors` binary, in the library so other launchers (the chaos
//! harness) start the very same service. Every flag has a `REG_*` variable (`deploy/up
//! --help` lists them all); [`crate::settings::Settings::from_args`] turns them into what the
//! processors consume.

use clap::Parser;
use streams::settings::{Addresses, CalendarArgs, NatsArgs, Secret, SecretArgs, TelemetryArgs};

use crate::settings::Settings;

/// Processors: reservation (slot decisions and the waiting list), verification against the
/// government registry, notifications to citizens, and the release of citizens' claims.
#[derive(Debug, Parser)]
#[command(name = "processors", version, about)]
pub struct Args {
    /// The verification processor's own NATS user (and the notification processor's
    /// below); unset: the process's connection (REG_NATS_USER).
    #[arg(long, env = "REG_NATS_VERIFICATION_USER", help_heading = "NATS")]
    pub nats_verification_user: Option<String>,
    /// The verification processor's NATS password.
    #[arg(
        long,
        env = "REG_NATS_VERIFICATION_PASSWORD",
        hide_env_values = true,
        help_heading = "NATS"
    )]
    pub nats_verification_password: Option<Secret>,
    /// The notification processor's own NATS user.
    #[arg(long, env = "REG_NATS_NOTIFICATION_USER", help_heading = "NATS")]
    pub nats_notification_user: Option<String>,
    /// The notification processor's NATS password.
    #[arg(
        long,
        env = "REG_NATS_NOTIFICATION_PASSWORD",
        hide_env_values = true,
        help_heading = "NATS"
    )]
    pub nats_notification_password: Option<Secret>,
    /// Region to decide for, or `*` for all.
    #[arg(long, env = "REG_REGION", default_value = "*")]
    pub region: String,
    /// How many registrations may wait in line for one full slot (default: as many as the
    /// slot's capacity). Beyond it a registration is rejected with `slot_full`.
    #[arg(long, env = "REG_WAITLIST_PER_SLOT")]
    pub waitlist_per_slot: Option<u32>,
    /// Store a snapshot of a region's reservation state after this many decisions, so a
    /// takeover folds at most about this many (0: never; every takeover folds the whole log).
    #[arg(long, env = "REG_SNAPSHOT_EVERY", default_value_t = crate::reservation::SNAPSHOT_EVERY)]
    pub snapshot_every: u64,
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
    /// The key webhook deliveries are signed with (HMAC), which the gateway checks. Unset: a
    /// development secret, which only REG_DEV_MODE allows.
    #[arg(
        long,
        env = "REG_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = crate::notification::DEVELOPMENT_WEBHOOK_SECRET,
        hide_default_value = true
    )]
    pub webhook_secret: Secret,
    /// Delivery attempts of one decision's messages before they are dead-lettered.
    #[arg(long, env = "REG_NOTIFY_MAX_ATTEMPTS", default_value_t = 10)]
    pub notify_max_attempts: u32,
    /// Decisions whose messages are delivered at once, per region.
    #[arg(long, env = "REG_NOTIFY_CONCURRENCY", default_value_t = 256)]
    pub notify_concurrency: usize,
    /// E-mails per second to the relay from this replica (0: unlimited).
    #[arg(long, env = "REG_MAIL_RATE", default_value_t = 200)]
    pub mail_rate: u32,
    /// Texts per second to the gateway from this replica (0: unlimited).
    #[arg(long, env = "REG_WEBHOOK_RATE", default_value_t = 200)]
    pub webhook_rate: u32,
    /// Where every part of the system listens (the processors bind `--processor-listen`;
    /// status links go to the citizens' page).
    #[command(flatten)]
    pub addresses: Addresses,
    /// How to reach NATS (the reservation processor's and the claims releaser's identity).
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The server secret.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Each region's time zone.
    #[command(flatten)]
    pub calendar: CalendarArgs,
    /// Log format.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Runs the service as its binary does, until `shutdown` fires.
pub async fn run_cli(
    args: Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    args.secret.refuse_development_credentials(&[(
        "REG_WEBHOOK_SECRET",
        &args.webhook_secret,
        crate::notification::DEVELOPMENT_WEBHOOK_SECRET,
    )])?;
    let settings = Settings::from_args(&args)?;
    let listen = &args.addresses.processor_listen;
    let listener = streams::runtime::bind(listen)?;
    tracing::info!(%listen, region = %args.region, verification = args.verification, notifications = args.notifications, "Processors starting.");
    crate::service::run(settings, listener, shutdown).await
}
