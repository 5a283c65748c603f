//! The command line of the `projections` binary, in the library so other launchers (the
//! chaos harness) start the very same service. Every flag has a `REG_*` variable
//! (`deploy/up --help` lists them all); [`crate::settings::Settings::from_args`] turns them
//! into what the service consumes.

use clap::Parser;
use streams::settings::{
    Addresses, CalendarArgs, NatsArgs, OperatorArgs, Secret, SecretArgs, TelemetryArgs,
};

use crate::settings::Settings;

/// Projection workers (events into SurrealDB) and the read API.
#[derive(Debug, Parser)]
#[command(name = "projections", version, about)]
pub struct Args {
    /// SurrealDB endpoint: `surrealkv://<dir>` (embedded), `mem://`, or `ws://host:port`.
    #[arg(
        long,
        env = "REG_SURREAL_ENDPOINT",
        default_value = "surrealkv://data/surreal"
    )]
    pub surreal: String,
    /// SurrealDB root user (remote servers).
    #[arg(long, env = "REG_SURREAL_USER")]
    pub surreal_user: Option<String>,
    /// SurrealDB root password (remote servers).
    #[arg(long, env = "REG_SURREAL_PASS", hide_env_values = true)]
    pub surreal_pass: Option<Secret>,
    /// The SurrealDB database the projections live in (namespace `registration`): switch the
    /// read API to a rebuilt one (`rebuild_…`, see `POST /v1/admin/rebuilds`) once it compared
    /// equal; its workers carry on from the rebuild's checkpoints.
    #[arg(long, env = "REG_SURREAL_DATABASE", default_value = crate::store::LIVE_DATABASE)]
    pub surreal_database: String,
    /// Availability cache lifetime in milliseconds (the staleness bound).
    #[arg(long, env = "REG_CACHE_TTL_MS", default_value_t = 1000)]
    pub cache_ttl_ms: u64,
    /// How long a projection batch waits for more events after its first, in milliseconds:
    /// fewer, larger SurrealDB transactions, the status API that much later. The default
    /// took a sixth off the projections' CPU per registration at 4,300/s
    /// (docs/write-path.md), for a decision shown on the status page up to 50 ms later.
    #[arg(long, env = "REG_PROJECTION_LINGER_MS", default_value_t = 50)]
    pub linger_ms: u64,
    /// HTTP worker threads.
    #[arg(long, env = "REG_READ_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Origins (comma-separated, e.g. `https://rejestracja.example.pl`) whose pages may
    /// read availability and status across origins (CORS). Unset: the citizens' page, the
    /// origin of `REG_CITIZEN_PAGE_URL`, else of `http://<REG_INGEST_LISTEN>` (127.0.0.1:8080).
    #[arg(long, env = "REG_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The read API's public base URL, in the SMART Scheduling Links manifest's absolute
    /// links [default: REG_STATUS_BASE_URL].
    #[arg(long, env = "REG_READ_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where citizens book: each free SMART slot links there (with region, location, date).
    #[arg(long, env = "REG_BOOKING_URL")]
    pub booking_url: Option<String>,
    /// A phone number that books, on each free SMART slot and location.
    #[arg(long, env = "REG_BOOKING_PHONE")]
    pub booking_phone: Option<String>,
    /// The site directory (a JSON file): each vaccination site's name, street address with
    /// postal code, and phone, which SMART `Location`s require. Sites it does not list are
    /// not published to vaccine finders [default: none, so none are].
    #[arg(long, env = "REG_SITES_FILE")]
    pub sites_file: Option<std::path::PathBuf>,
    /// Where every part of the system listens (the read API binds `--read-listen`; the
    /// citizens' page is the origin it answers across origins).
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
    /// Each region's time zone (availability and the SMART files list no slot whose day is
    /// over).
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
    let listen = &args.addresses.read_listen;
    let listener = streams::runtime::bind(listen)?;
    tracing::info!(
        %listen,
        surreal = %settings.store.endpoint,
        cors = ?settings.cors_origins,
        sites = settings.publication.sites.len(),
        "Projections starting."
    );
    crate::service::run(settings, listener, shutdown).await
}
