//! The projections' configuration: [`Settings`], what the process consumes, built from its
//! command line and `REG_*` variables ([`crate::cli::Args`], listed by `deploy/up --help`)
//! and passed explicitly to [`crate::service::run`].

use std::time::Duration;

use anyhow::Context as _;
use streams::settings::Secret;

use crate::cli::Args;
use crate::store::StoreOptions;

/// Everything the projections process needs besides its listener and shutdown signal. Its
/// `Debug` output (secrets left out) can be logged.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: streams::runtime::NatsOptions,
    /// Where SurrealDB is.
    pub store: StoreOptions,
    /// The server secret (tokens).
    pub secret: Secret,
    /// The operators' bearer token.
    pub admin_token: Secret,
    /// Availability cache lifetime (the staleness bound).
    pub cache_ttl: Duration,
    /// How long a projection batch waits for more events after its first (see
    /// [`worker::project`]).
    pub linger: Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// Stream replication.
    pub replicas: usize,
    /// Origins whose pages may read availability and status (CORS): the citizens' page.
    pub cors_origins: Vec<String>,
    /// Where the SMART Scheduling Links publication points.
    pub publication: crate::smart::Publication,
    /// Each region's time zone: availability lists no slot whose day is over there.
    pub calendar: streams::calendar::Calendar,
}

impl Settings {
    /// The settings `args` give. Reads the site directory (`REG_SITES_FILE`), if any.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let mut cors_origins: Vec<String> = args
            .cors_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if cors_origins.is_empty() {
            cors_origins = crate::cors::default_origins(
                args.addresses.citizen_page_url.as_deref(),
                &args.addresses.ingest_listen,
            );
        }
        let public_url = args
            .public_url
            .clone()
            .unwrap_or_else(|| args.addresses.status_base_url());
        let publication = crate::smart::Publication {
            public_url: public_url.trim_end_matches('/').to_owned(),
            booking_url: args.booking_url.clone().filter(|u| !u.is_empty()),
            booking_phone: args.booking_phone.clone().filter(|p| !p.is_empty()),
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
        Ok(Settings {
            nats: args.nats.options("projections")?,
            store: StoreOptions {
                endpoint: args.surreal.clone(),
                credentials: args.surreal_user.clone().zip(args.surreal_pass.clone()),
                database: args.surreal_database.clone(),
            },
            secret: args.secret.secret.clone(),
            admin_token: args.operators.admin_token.clone(),
            cache_ttl: Duration::from_millis(args.cache_ttl_ms),
            linger: Duration::from_millis(args.linger_ms),
            workers: args.workers,
            replicas: args.nats.replicas,
            cors_origins,
            publication,
            calendar: args.calendar.time_zones.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        streams::settings::try_parse_without_env(
            std::iter::once("projections").chain(argv.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn the_page_and_public_links_follow_the_shared_addresses() {
        let s = Settings::from_args(&args(&["--read-listen", "10.0.0.2:81"])).unwrap();
        assert_eq!(s.publication.public_url, "http://10.0.0.2:81");
        assert_eq!(
            s.cors_origins,
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        let s = Settings::from_args(&args(&[
            "--status-base-url",
            "https://status.example/",
            "--citizen-page-url",
            "https://page.example/register/",
        ]))
        .unwrap();
        assert_eq!(s.publication.public_url, "https://status.example");
        assert_eq!(s.cors_origins, ["https://page.example"]);
        let s = Settings::from_args(&args(&[
            "--public-url",
            "https://read.example/",
            "--cors-origins",
            "https://a.example/, https://b.example",
        ]))
        .unwrap();
        assert_eq!(s.publication.public_url, "https://read.example");
        assert_eq!(s.cors_origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn secrets_stay_out_of_what_is_logged() {
        let args = args(&[
            "--secret",
            "s3cret-server",
            "--admin-token",
            "s3cret-operator",
            "--surreal-user",
            "root",
            "--surreal-pass",
            "s3cret-surreal",
            "--nats-user",
            "projections",
            "--nats-password",
            "s3cret-nats",
        ]);
        let settings = Settings::from_args(&args).unwrap();
        assert!(settings.store.credentials.is_some());
        for printed in [format!("{settings:?}"), format!("{args:?}")] {
            for secret in [
                "s3cret-server",
                "s3cret-operator",
                "s3cret-surreal",
                "s3cret-nats",
            ] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
    }
}
