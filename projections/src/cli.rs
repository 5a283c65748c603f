//! The command line of the `projections` binary, in the library so other launchers (the chaos
//! harness) start the very same service.

use std::time::Duration;

use crate::service::{Settings, run};
use crate::store::StoreOptions;
use anyhow::Context;
use clap::Parser;
use streams::runtime::NatsOptions;

/// Projection workers (events into SurrealDB) and the read API.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address of the read API.
    #[arg(long, env = "REG_READ_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// NATS server URL(s).
    #[arg(long, env = "REG_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
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
    pub surreal_pass: Option<String>,
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
    /// JetStream replicas per stream.
    #[arg(long, env = "REG_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Origins (comma-separated, e.g. `https://rejestracja.example.pl`) whose pages may
    /// read availability and status across origins (CORS). Unset: the citizens' page, the
    /// origin of `REG_CITIZEN_PAGE_URL`, else of `http://<REG_INGEST_LISTEN>` (127.0.0.1:8080).
    #[arg(long, env = "REG_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// The read API's public base URL, in the SMART Scheduling Links manifest's absolute
    /// links [default: REG_STATUS_BASE_URL, else http://<listen>].
    #[arg(long, env = "REG_READ_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Where citizens book: each free SMART slot links there (with region, location, date).
    #[arg(long, env = "REG_BOOKING_URL")]
    pub booking_url: Option<String>,
    /// Each region's time zone, where a slot's day ends (availability and the SMART files
    /// list no slot whose day is over): IANA names, comma-separated, bare for every region or
    /// `region=Zone` for one.
    #[arg(long, env = "REG_TIME_ZONES", default_value = "Europe/Warsaw")]
    pub time_zones: streams::calendar::Calendar,
    /// A phone number that books, on each free SMART slot and location.
    #[arg(long, env = "REG_BOOKING_PHONE")]
    pub booking_phone: Option<String>,
    /// The site directory (a JSON file): each vaccination site's name, street address with
    /// postal code, and phone, which SMART `Location`s require. Sites it does not list are
    /// not published to vaccine finders [default: none, so none are].
    #[arg(long, env = "REG_SITES_FILE")]
    pub sites_file: Option<std::path::PathBuf>,
}

/// Runs the service as its binary does, until `shutdown` fires.
pub async fn run_cli(
    args: Args,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let secret =
        std::env::var("REG_SECRET").unwrap_or_else(|_| streams::crypto::DEVELOPMENT_SECRET.into());
    let admin_token = std::env::var("REG_ADMIN_TOKEN")
        .unwrap_or_else(|_| streams::crypto::DEVELOPMENT_ADMIN_TOKEN.into());
    streams::runtime::check_credentials(&[
        ("REG_SECRET", &secret, streams::crypto::DEVELOPMENT_SECRET),
        (
            "REG_ADMIN_TOKEN",
            &admin_token,
            streams::crypto::DEVELOPMENT_ADMIN_TOKEN,
        ),
    ])?;
    let mut cors_origins: Vec<String> = args
        .cors_origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    if cors_origins.is_empty() {
        let page = std::env::var("REG_CITIZEN_PAGE_URL").ok();
        let edge = std::env::var("REG_INGEST_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        cors_origins = crate::cors::default_origins(page.as_deref(), &edge);
    }
    let listener = streams::runtime::bind(&args.listen)?;
    let public_url = args
        .public_url
        .or_else(|| std::env::var("REG_STATUS_BASE_URL").ok())
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let publication = crate::smart::Publication {
        public_url: public_url.trim_end_matches('/').to_owned(),
        booking_url: args.booking_url.filter(|u| !u.is_empty()),
        booking_phone: args.booking_phone.filter(|p| !p.is_empty()),
        sites: match &args.sites_file {
            None => crate::smart::Sites::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("Failed to read the site directory {}", path.display())
                })?;
                crate::smart::parse_sites(&text).map_err(|e| {
                    anyhow::anyhow!("The site directory {} is invalid: {e}", path.display())
                })?
            }
        },
    };
    tracing::info!(listen = %args.listen, surreal = %args.surreal, cors = ?cors_origins, sites = publication.sites.len(), "Projections starting.");
    run(
        Settings {
            nats: NatsOptions {
                url: args.nats_url,
                ..NatsOptions::from_env("projections")?
            },
            store: StoreOptions {
                endpoint: args.surreal,
                credentials: args.surreal_user.zip(args.surreal_pass),
                database: args.surreal_database,
            },
            secret,
            admin_token,
            cache_ttl: Duration::from_millis(args.cache_ttl_ms),
            linger: Duration::from_millis(args.linger_ms),
            workers: args.workers,
            replicas: args.replicas,
            cors_origins,
            publication,
            calendar: args.time_zones,
        },
        listener,
        shutdown,
    )
    .await
}
