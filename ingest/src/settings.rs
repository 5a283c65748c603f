//! The edge's configuration: safe defaults, overridden by `REG_*` environment variables
//! (listed by `deploy/up --help`), passed explicitly to [`crate::service::run`].

use std::time::Duration;

use streams::national_id::NationalIdRule;
use streams::runtime::env_parse;

use crate::validate::Limits;

/// Development operator token used when `REG_ADMIN_TOKEN` is unset.
pub const DEVELOPMENT_ADMIN_TOKEN: &str = streams::crypto::DEVELOPMENT_ADMIN_TOKEN;

/// Everything the edge needs besides its listener and shutdown signal.
#[derive(Clone)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: streams::runtime::NatsOptions,
    /// Server secret from which tokens, citizen keys and the data key derive.
    pub secret: String,
    /// Bearer token of operators.
    pub admin_token: String,
    /// Largest accepted request body (the contract caps it at 16 KiB).
    pub max_body_bytes: usize,
    /// Requests per second allowed per client address (0 = unlimited). Generous by default:
    /// thousands of citizens can share one carrier-grade NAT address.
    pub rate_per_address: u32,
    /// Submissions per minute allowed per citizen (0 = unlimited).
    pub rate_per_citizen: u32,
    /// Lost-link recoveries per hour allowed per citizen (0 = unlimited).
    pub recoveries_per_hour: u32,
    /// Lost-link recoveries per minute allowed per client address (0 = unlimited), whichever
    /// citizens they name: tight, so nobody walks through national ids (a citizen needs one).
    pub recoveries_per_address_per_minute: u32,
    /// The national id rule.
    pub national_id_rule: NationalIdRule,
    /// Each region's time zone: a slot's day is over at midnight there (`REG_TIME_ZONES`).
    pub calendar: streams::calendar::Calendar,
    /// Field limits.
    pub limits: Limits,
    /// Group commit: most messages per durable write (a submission is two: claim and event).
    pub append_max_batch: usize,
    /// Group commit: durable writes in flight at once.
    pub append_in_flight: usize,
    /// How long an append may take before the request is answered 503.
    pub append_timeout: Duration,
    /// Submissions a replica works on at once (0 = no bound). Beyond it a valid submission
    /// is answered `503` with `Retry-After` at once instead of queueing for the group commit,
    /// so the queue, the wait for a `202` and the memory it holds stay bounded. (Bodies being
    /// read, up to 16 KiB per connection, come before admission: connections themselves are
    /// bounded in front of the edge, by the load balancer.)
    pub max_open_submissions: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// Stream replication (1 on one node, 3 in a cluster).
    pub replicas: usize,
    /// Where citizens read their status: the read API's public base URL, so `status_url`
    /// in a `202` can be followed as is (the edge itself serves no reads).
    pub status_base_url: String,
    /// Where the citizens' page reaches the read API (availability, status): its public
    /// base URL, served to the page as `/config.json` and allowed by its
    /// Content-Security-Policy. `REG_READ_API_URL`, by default `status_base_url`.
    pub read_api_url: String,
    /// Addresses of the load balancers in front of the edge: for a request from one of them,
    /// the client is the nearest untrusted address in `X-Forwarded-For` (otherwise every
    /// citizen behind the balancer would share one rate-limit bucket). Empty: the header is
    /// ignored, so a client cannot choose its own bucket.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("nats", &self.nats.url)
            .field("secret", &"<redacted>")
            .field("admin_token", &"<redacted>")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate_per_address", &self.rate_per_address)
            .field("rate_per_citizen", &self.rate_per_citizen)
            .field("recoveries_per_hour", &self.recoveries_per_hour)
            .field(
                "recoveries_per_address_per_minute",
                &self.recoveries_per_address_per_minute,
            )
            .field("national_id_rule", &self.national_id_rule)
            .field("append_max_batch", &self.append_max_batch)
            .field("append_in_flight", &self.append_in_flight)
            .field("max_open_submissions", &self.max_open_submissions)
            .field("workers", &self.workers)
            .field("status_base_url", &self.status_base_url)
            .field("read_api_url", &self.read_api_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .finish()
    }
}

impl Settings {
    /// Defaults for a development machine, pointing at `nats_url`.
    pub fn development(nats_url: &str) -> Self {
        Settings {
            nats: streams::runtime::NatsOptions::new(nats_url, "ingest"),
            secret: streams::crypto::DEVELOPMENT_SECRET.into(),
            admin_token: DEVELOPMENT_ADMIN_TOKEN.into(),
            max_body_bytes: 16 * 1024,
            rate_per_address: 1000,
            rate_per_citizen: 10,
            recoveries_per_hour: 3,
            recoveries_per_address_per_minute: 5,
            national_id_rule: NationalIdRule::default(),
            limits: Limits::default(),
            calendar: Default::default(),
            append_max_batch: streams::appender::MAX_ATOMIC_BATCH,
            append_in_flight: 1,
            append_timeout: Duration::from_secs(5),
            max_open_submissions: 512,
            workers: 2,
            replicas: 1,
            trusted_proxies: Vec::new(),
            status_base_url: "http://127.0.0.1:8081".into(),
            read_api_url: "http://127.0.0.1:8081".into(),
        }
    }

    /// Defaults overridden by the `REG_*` environment variables.
    pub fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("REG_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let mut s = Settings::development(&url);
        s.nats = streams::runtime::NatsOptions::from_env("ingest")?;
        if let Ok(secret) = std::env::var("REG_SECRET") {
            s.secret = secret;
        }
        if let Ok(token) = std::env::var("REG_ADMIN_TOKEN") {
            s.admin_token = token;
        }
        if let Some(v) = env_parse("REG_MAX_BODY_BYTES")? {
            s.max_body_bytes = v;
        }
        if let Some(v) = env_parse("REG_RATE_PER_ADDRESS")? {
            s.rate_per_address = v;
        }
        if let Some(v) = env_parse("REG_RATE_PER_CITIZEN")? {
            s.rate_per_citizen = v;
        }
        if let Some(v) = env_parse("REG_RECOVERIES_PER_HOUR")? {
            s.recoveries_per_hour = v;
        }
        if let Some(v) = env_parse("REG_RECOVERIES_PER_ADDRESS_PER_MINUTE")? {
            s.recoveries_per_address_per_minute = v;
        }
        if let Some(v) = env_parse("REG_NATIONAL_ID_RULE")? {
            s.national_id_rule = v;
        }
        if let Some(v) = env_parse("REG_TIME_ZONES")? {
            s.calendar = v;
        }
        if let Some(v) = env_parse("REG_APPEND_MAX_BATCH")? {
            s.append_max_batch = v;
        }
        if let Some(v) = env_parse("REG_APPEND_IN_FLIGHT")? {
            s.append_in_flight = v;
        }
        if let Some(v) = env_parse::<u64>("REG_APPEND_TIMEOUT_MS")? {
            s.append_timeout = Duration::from_millis(v);
        }
        if let Some(v) = env_parse("REG_MAX_OPEN_SUBMISSIONS")? {
            s.max_open_submissions = v;
        }
        if let Some(v) = env_parse("REG_INGEST_WORKERS")? {
            s.workers = v;
        }
        if let Some(v) = env_parse("REG_REPLICAS")? {
            s.replicas = v;
        }
        if let Ok(list) = std::env::var("REG_TRUSTED_PROXIES") {
            s.trusted_proxies = list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse().map_err(|e| {
                        anyhow::anyhow!("REG_TRUSTED_PROXIES: {a:?} is not an IP address: {e}")
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Ok(url) = std::env::var("REG_STATUS_BASE_URL") {
            s.status_base_url = url.trim_end_matches('/').to_owned();
            s.read_api_url = s.status_base_url.clone();
        }
        Ok(s)
    }
}
