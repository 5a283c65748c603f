//! The edge's configuration: [`Settings`], what the service consumes, built from its
//! command line and `REG_*` variables ([`crate::cli::Args`], listed by `deploy/up --help`)
//! and passed explicitly to [`crate::service::run`].

use std::time::Duration;

use streams::national_id::NationalIdRule;
use streams::settings::Secret;

use crate::cli::Args;
use crate::validate::Limits;

/// Development operator token used when `REG_ADMIN_TOKEN` is unset.
pub const DEVELOPMENT_ADMIN_TOKEN: &str = streams::crypto::DEVELOPMENT_ADMIN_TOKEN;

/// Everything the edge needs besides its listener and shutdown signal. Its `Debug` output
/// (logged at start) leaves the secrets out.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: streams::runtime::NatsOptions,
    /// Server secret from which tokens, citizen keys and the data key derive.
    pub secret: Secret,
    /// Bearer token of operators.
    pub admin_token: Secret,
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
    /// Waiting-room tickets per minute allowed per client address (0 = unlimited).
    pub tickets_per_address_per_minute: u32,
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
    /// Group commit: the shortest time between the starts of two durable writes.
    pub append_min_interval: Duration,
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

impl Settings {
    /// The defaults (those of [`Args`], no flag and no variable read), pointing at
    /// `nats_url`: a development machine, and the tests' starting point.
    pub fn development(nats_url: &str) -> Self {
        let mut settings = Settings::from_args(&streams::settings::defaults::<Args>())
            .expect("the defaults are valid settings");
        settings.nats.url = nats_url.to_owned();
        settings
    }

    /// The settings `args` give.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let status_base_url = args.addresses.status_base_url();
        Ok(Settings {
            nats: args.nats.options("ingest")?,
            secret: args.secret.secret.clone(),
            admin_token: args.operators.admin_token.clone(),
            max_body_bytes: args.max_body_bytes,
            rate_per_address: args.rate_per_address,
            rate_per_citizen: args.rate_per_citizen,
            recoveries_per_hour: args.recoveries_per_hour,
            recoveries_per_address_per_minute: args.recoveries_per_address_per_minute,
            tickets_per_address_per_minute: args.tickets_per_address_per_minute,
            national_id_rule: args.national_id_rule,
            calendar: args.calendar.time_zones.clone(),
            limits: Limits::default(),
            append_max_batch: args.append_max_batch,
            append_in_flight: args.append_in_flight,
            append_timeout: Duration::from_millis(args.append_timeout_ms),
            append_min_interval: Duration::from_millis(args.append_min_interval_ms),
            max_open_submissions: args.max_open_submissions,
            workers: args.workers,
            replicas: args.nats.replicas,
            read_api_url: args.read_api_url.as_deref().map_or_else(
                || status_base_url.clone(),
                |url| url.trim_end_matches('/').to_owned(),
            ),
            status_base_url,
            trusted_proxies: args.trusted_proxies.clone().unwrap_or_default().0,
        })
    }
}

/// The load balancers named by `REG_TRUSTED_PROXIES`: comma-separated IP addresses, blanks
/// around them and empty entries ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<std::net::IpAddr>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse()
                    .map_err(|e| format!("{a:?} is not an IP address: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        streams::settings::try_parse_without_env(
            std::iter::once("ingest").chain(argv.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn the_development_settings_are_the_documented_defaults() {
        let s = Settings::development("nats://127.0.0.1:4999");
        assert_eq!(s.nats.url, "nats://127.0.0.1:4999");
        assert!(s.nats.manage_streams && s.nats.credentials.is_none() && s.nats.tls.is_none());
        assert_eq!(s.secret.expose(), streams::crypto::DEVELOPMENT_SECRET);
        assert_eq!(s.admin_token.expose(), DEVELOPMENT_ADMIN_TOKEN);
        assert_eq!(
            (
                s.max_body_bytes,
                s.rate_per_address,
                s.rate_per_citizen,
                s.recoveries_per_hour,
                s.recoveries_per_address_per_minute
            ),
            (16 * 1024, 1000, 10, 3, 5)
        );
        assert_eq!(
            (
                s.append_max_batch,
                s.append_in_flight,
                s.append_timeout,
                s.max_open_submissions,
                s.workers,
                s.replicas
            ),
            (1000, 1, Duration::from_secs(5), 512, 2, 1)
        );
        assert_eq!(s.national_id_rule, NationalIdRule::Pesel);
        assert_eq!(s.calendar, streams::calendar::Calendar::default());
        assert_eq!(s.status_base_url, "http://127.0.0.1:8081");
        assert_eq!(s.read_api_url, s.status_base_url);
        assert!(s.trusted_proxies.is_empty());
    }

    #[test]
    fn the_command_line_reaches_the_settings() {
        let s = Settings::from_args(&args(&[
            "--read-listen",
            "10.0.0.1:81",
            "--trusted-proxies",
            " 10.0.0.7, ,::1",
            "--append-timeout-ms",
            "250",
            "--read-api-url",
            "https://read.example/",
            "--time-zones",
            "Europe/Lisbon",
        ]))
        .unwrap();
        assert_eq!(s.status_base_url, "http://10.0.0.1:81");
        assert_eq!(s.read_api_url, "https://read.example");
        let proxies: Vec<std::net::IpAddr> =
            vec!["10.0.0.7".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(s.trusted_proxies, proxies);
        assert_eq!(s.append_timeout, Duration::from_millis(250));
        assert_eq!(s.calendar, "Europe/Lisbon".parse().unwrap());
        let s =
            Settings::from_args(&args(&["--status-base-url", "https://status.example/"])).unwrap();
        assert_eq!(s.status_base_url, "https://status.example");
        assert_eq!(s.read_api_url, "https://status.example");
        assert!("10.0.0.7, bogus".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn secrets_stay_out_of_what_is_logged() {
        let args = args(&[
            "--secret",
            "s3cret-server",
            "--admin-token",
            "s3cret-operator",
            "--nats-user",
            "ingest",
            "--nats-password",
            "s3cret-nats",
        ]);
        let settings = Settings::from_args(&args).unwrap();
        assert_eq!(settings.admin_token.expose(), "s3cret-operator");
        for printed in [format!("{settings:?}"), format!("{args:?}")] {
            for secret in ["s3cret-server", "s3cret-operator", "s3cret-nats"] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
    }
}
