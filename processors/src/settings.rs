//! The processors' configuration: [`Settings`], what the process consumes, built from its
//! command line and `REG_*` variables ([`crate::cli::Args`], listed by `deploy/up --help`)
//! and passed explicitly to [`crate::service::run`].

use std::time::Duration;

use anyhow::Context as _;
use streams::config::Replication;
use streams::subjects::RegionFilter;

use crate::cli::Args;
use crate::notification::NotificationConfig;
use crate::reservation::decide::Policy;
use crate::verification::{VerificationConfig, decide::Limits};

/// Everything the processor process needs besides its listener and shutdown signal. Its
/// `Debug` output (secrets left out) can be logged.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: streams::runtime::NatsOptions,
    /// Which regions this replica decides for.
    pub regions: RegionFilter,
    /// Stream replication.
    pub replication: Replication,
    /// The reservation rule's settings.
    pub policy: Policy,
    /// Decisions between two snapshots of a region's state (0: none).
    pub snapshot_every: u64,
    /// Each region's time zone.
    pub calendar: streams::calendar::Calendar,
    /// The verification processor, if this replica runs one (with the registry to ask).
    pub verification: Option<VerificationConfig>,
    /// The notification processor, if this replica runs one (with the providers to use).
    pub notification: Option<NotificationConfig>,
    /// The keys that open the citizens' sealed personal data (for the registry's questions).
    pub keys: streams::crypto::Keys,
}

impl Settings {
    /// The settings `args` give: the reservation processor and the claims releaser on the
    /// process's NATS identity, verification and notification on their own when they have
    /// one.
    pub fn from_args(args: &Args) -> anyhow::Result<Self> {
        let regions = RegionFilter::parse(&args.region)
            .with_context(|| format!("REG_REGION={:?} is invalid", args.region))?;
        let nats = args.nats.options(&format!("reservation-{}", args.region))?;
        // A part's own connection, when it has its own identity; `None`: the process's.
        let part = |who: &str, user: &Option<String>, password, variables| -> anyhow::Result<_> {
            let mut own = nats
                .clone()
                .with_identity(user.as_deref(), password, variables)?;
            own.name = format!("{who}-{}", args.region);
            Ok((own.credentials != nats.credentials).then_some(own))
        };
        let verification_nats = part(
            "verification",
            &args.nats_verification_user,
            args.nats_verification_password.as_ref(),
            (
                "REG_NATS_VERIFICATION_USER",
                "REG_NATS_VERIFICATION_PASSWORD",
            ),
        )?;
        let notification_nats = part(
            "notification",
            &args.nats_notification_user,
            args.nats_notification_password.as_ref(),
            (
                "REG_NATS_NOTIFICATION_USER",
                "REG_NATS_NOTIFICATION_PASSWORD",
            ),
        )?;
        let notification = if args.notifications {
            let (host, port) = args
                .smtp_address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .with_context(|| {
                    format!(
                        "REG_SMTP_ADDRESS={:?} is invalid: not host:port",
                        args.smtp_address
                    )
                })?;
            Some(NotificationConfig {
                smtp_host: host,
                smtp_port: port,
                mail_from: args.mail_from.clone(),
                webhook_url: args.webhook_url.clone(),
                webhook_secret: args.webhook_secret.clone(),
                page_url: args.addresses.citizen_page_url(),
                max_attempts: args.notify_max_attempts,
                concurrency: args.notify_concurrency.max(1),
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
        Ok(Settings {
            nats,
            regions,
            replication: args.nats.replication(),
            policy: Policy {
                waitlist_per_slot: args.waitlist_per_slot,
            },
            snapshot_every: args.snapshot_every,
            calendar: args.calendar.time_zones.clone(),
            verification,
            notification,
            keys: args.secret.keys(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        streams::settings::try_parse_without_env(
            std::iter::once("processors").chain(argv.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn verification_and_notification_connect_as_themselves_only_when_given_an_identity() {
        let shared = Settings::from_args(&args(&[
            "--nats-user",
            "processors",
            "--nats-password",
            "p",
        ]))
        .unwrap();
        assert!(shared.verification.unwrap().nats.is_none());
        assert!(shared.notification.unwrap().nats.is_none());
        let own = Settings::from_args(&args(&[
            "--region",
            "mazowieckie",
            "--nats-user",
            "processors",
            "--nats-password",
            "p",
            "--nats-verification-user",
            "verification",
            "--nats-verification-password",
            "v",
        ]))
        .unwrap();
        let verification = own.verification.unwrap().nats.unwrap();
        assert_eq!(
            verification.credentials,
            Some(("verification".to_owned(), "v".to_owned()))
        );
        assert_eq!(verification.name, "verification-mazowieckie");
        assert!(own.notification.unwrap().nats.is_none());
        let err =
            Settings::from_args(&args(&["--nats-notification-user", "notification"])).unwrap_err();
        assert!(
            err.to_string().contains("REG_NATS_NOTIFICATION_PASSWORD"),
            "{err}"
        );
    }

    #[test]
    fn links_and_addresses_come_from_the_shared_settings() {
        let s = Settings::from_args(&args(&["--ingest-listen", "10.0.0.1:80"])).unwrap();
        assert_eq!(s.notification.unwrap().page_url, "http://10.0.0.1:80/");
        let err = Settings::from_args(&args(&["--smtp-address", "mail.example"])).unwrap_err();
        assert!(err.to_string().contains("REG_SMTP_ADDRESS"), "{err}");
        let err = Settings::from_args(&args(&["--region", "a.b"])).unwrap_err();
        assert!(err.to_string().contains("REG_REGION"), "{err}");
        let off = Settings::from_args(&args(&[
            "--verification",
            "false",
            "--notifications",
            "false",
        ]))
        .unwrap();
        assert!(off.verification.is_none() && off.notification.is_none());
    }

    #[test]
    fn secrets_stay_out_of_what_is_logged() {
        let args = args(&[
            "--secret",
            "s3cret-server",
            "--webhook-secret",
            "s3cret-webhook",
            "--nats-user",
            "processors",
            "--nats-password",
            "s3cret-nats",
            "--nats-verification-user",
            "verification",
            "--nats-verification-password",
            "s3cret-verification",
            "--nats-notification-user",
            "notification",
            "--nats-notification-password",
            "s3cret-notification",
        ]);
        let settings = Settings::from_args(&args).unwrap();
        for printed in [format!("{settings:?}"), format!("{args:?}")] {
            for secret in [
                "s3cret-server",
                "s3cret-webhook",
                "s3cret-nats",
                "s3cret-verification",
                "s3cret-notification",
            ] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
    }
}
