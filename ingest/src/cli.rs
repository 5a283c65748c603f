//! The command line of the `ingest` binary, in the library so other launchers (the chaos
//! harness) start the very same service. Every flag has a `REG_*` variable (`deploy/up
//! --help` lists them all); [`crate::settings::Settings::from_args`] turns them into what the
//! service consumes.

use clap::Parser;
use streams::settings::{
    Addresses, CalendarArgs, NatsArgs, OperatorArgs, SecretArgs, TelemetryArgs,
};

use crate::settings::{Settings, TrustedProxies};

/// The registration edge: citizens' submissions, cancellations and lost-link recoveries, and
/// the operators' capacity, windows, reviews and re-drives.
#[derive(Debug, Parser)]
#[command(name = "ingest", version, about)]
pub struct Args {
    /// The read API's public base URL, as the citizens' page reaches it (served to the page
    /// as `/config.json`; the only other origin its Content-Security-Policy allows)
    /// [default: REG_STATUS_BASE_URL].
    #[arg(long, env = "REG_READ_API_URL")]
    pub read_api_url: Option<String>,
    /// Largest request body accepted, in bytes (the contract caps it at 16 KiB).
    #[arg(long, env = "REG_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// Requests per second per client address (0: unlimited). Generous: thousands of
    /// citizens can share one carrier-grade NAT address.
    #[arg(long, env = "REG_RATE_PER_ADDRESS", default_value_t = 1000)]
    pub rate_per_address: u32,
    /// Submissions per minute per citizen (0: unlimited); a replay of a request already
    /// recorded is answered even over it.
    #[arg(long, env = "REG_RATE_PER_CITIZEN", default_value_t = 10)]
    pub rate_per_citizen: u32,
    /// Lost-link recoveries per hour per citizen (0: unlimited).
    #[arg(long, env = "REG_RECOVERIES_PER_HOUR", default_value_t = 3)]
    pub recoveries_per_hour: u32,
    /// Lost-link recoveries per minute per client address, whichever citizens they name (0:
    /// unlimited): tight, so nobody walks through national ids.
    #[arg(
        long,
        env = "REG_RECOVERIES_PER_ADDRESS_PER_MINUTE",
        default_value_t = 5
    )]
    pub recoveries_per_address_per_minute: u32,
    /// Waiting-room tickets per minute per client address (0: unlimited): one address
    /// cannot hold many places in a line (generous enough for a shared NAT address).
    #[arg(long, env = "REG_TICKETS_PER_ADDRESS_PER_MINUTE", default_value_t = 20)]
    pub tickets_per_address_per_minute: u32,
    /// The national id rule.
    #[arg(long, env = "REG_NATIONAL_ID_RULE", default_value = "pesel")]
    pub national_id_rule: streams::national_id::NationalIdRule,
    /// Group commit: most messages per durable write (2 per registration, 3 with an
    /// `Idempotency-Key`).
    #[arg(long, env = "REG_APPEND_MAX_BATCH", default_value_t = streams::appender::MAX_ATOMIC_BATCH)]
    pub append_max_batch: usize,
    /// Group commit: durable writes in flight at once.
    #[arg(long, env = "REG_APPEND_IN_FLIGHT", default_value_t = 1)]
    pub append_in_flight: usize,
    /// Group commit: the shortest time between the starts of two durable writes, in
    /// milliseconds (fewer, fuller batches under load; nothing waits after a quiet spell).
    #[arg(long, env = "REG_APPEND_MIN_INTERVAL_MS", default_value_t = 20)]
    pub append_min_interval_ms: u64,
    /// Answer `503` when a durable write takes longer than this, in milliseconds.
    #[arg(long, env = "REG_APPEND_TIMEOUT_MS", default_value_t = 5000)]
    pub append_timeout_ms: u64,
    /// Submissions this replica works on at once; one more is answered `503` overloaded with
    /// `Retry-After` (0: no bound).
    #[arg(long, env = "REG_MAX_OPEN_SUBMISSIONS", default_value_t = 512)]
    pub max_open_submissions: usize,
    /// HTTP worker threads.
    #[arg(long, env = "REG_INGEST_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Comma-separated addresses of the load balancers in front of the edge, whose
    /// `X-Forwarded-For` names the client [default: none, the header is ignored].
    #[arg(long, env = "REG_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<TrustedProxies>,
    /// Where every part of the system listens (the edge binds `--ingest-listen`).
    #[command(flatten)]
    pub addresses: Addresses,
    /// How to reach NATS.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The server secret.
    #[command(flatten)]
    pub secret: SecretArgs,
    /// The operators' token.
    #[command(flatten)]
    pub operators: OperatorArgs,
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
    args.secret
        .refuse_development_credentials(&[args.operators.credential()])?;
    let settings = Settings::from_args(&args)?;
    let listen = &args.addresses.ingest_listen;
    let listener = streams::runtime::bind(listen)?;
    tracing::info!(%listen, settings = ?settings, "Ingest edge starting.");
    crate::service::run(settings, listener, shutdown).await
}
