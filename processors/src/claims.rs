//! The claims releaser: when a registration ends (rejected, cancelled), its citizen's claim is
//! released so the citizen may register again.
//!
//! A pure step, [`ended`] (which decisions end a registration) and
//! [`streams::claims::ClaimRecord::release`] (what to append), run by the shared durable
//! consumer loop ([`streams::consume::run_durable`]): a decision is acknowledged only after
//! the release is stored, and the release is idempotent (appended through the one fenced
//! claim update, [`streams::claims::update`], only while the claim still holds the
//! registration that ended, so a newer registration's claim is never touched). Many
//! decisions are handled at once and their releases share the group commit: a rush of
//! rejections costs a few durable writes, not one each.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, message::StreamMessage};
use streams::appender::{Appender, AppenderOptions};
use streams::claims::{self, Step};
use streams::consume::{self, Decoded, DurableSpec, Health, Outcome};
use streams::events::Event;
use streams::model::RegistrationId;
use streams::subjects::{self, RegionFilter};
use tokio_util::sync::CancellationToken;

/// Durable consumer name of the releaser.
const CONSUMER: &str = "claims_releaser";

/// Decisions handled at once (and releases that may share one durable write).
const CONCURRENCY: usize = 512;

/// How long a release waits before it is tried again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// The citizen and registration a decision ends, if it ends one.
pub fn ended(event: &Event) -> Option<(&str, &RegistrationId)> {
    match event {
        Event::SlotRejected(e) => Some((&e.citizen_key, &e.registration_id)),
        Event::RegistrationCancelled(e) => Some((&e.citizen_key, &e.registration_id)),
        _ => None,
    }
}

/// Runs the releaser until `shutdown`.
pub async fn run(client: async_nats::Client, health: Health, shutdown: CancellationToken) {
    let js = jetstream::new(client.clone());
    let appender = Appender::start(client, subjects::INTAKE_STREAM, AppenderOptions::default());
    let spec = DurableSpec {
        name: CONSUMER.into(),
        stream: subjects::DECISIONS_STREAM,
        consumer: pull::Config {
            filter_subject: subjects::reservation_decisions_filter(&RegionFilter::All),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4096,
            ..Default::default()
        },
        concurrency: CONCURRENCY,
    };
    let step = |record: Decoded| {
        let (js, appender) = (&js, &appender);
        async move {
            let Some((citizen_key, id)) = ended(&record.envelope.event) else {
                return Outcome::Done;
            };
            match release(js, appender, citizen_key, id).await {
                Ok(()) => Outcome::Done,
                Err(err) => {
                    tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "A claim could not be released yet; it will be retried.");
                    Outcome::Retry(RETRY)
                }
            }
        }
    };
    consume::run_durable(&js, &spec, step, &health, &shutdown).await;
}

/// Releases the citizen's claim if it still holds `id`.
pub async fn release(
    js: &jetstream::Context,
    appender: &Appender,
    citizen_key: &str,
    id: &RegistrationId,
) -> anyhow::Result<()> {
    let seen = claims::last(js, citizen_key)
        .await
        .context("Failed to read a claim")?;
    release_seen(js, appender, citizen_key, id, seen).await
}

/// [`release`], given what a read of the claim subject returned (`seen`), which any replica
/// of the stream may have answered.
///
/// A release that is appended is fenced on the record it was decided on, so a stale `seen`
/// costs only a refused fence and a decision on the leader's record. But "nothing to release"
/// appends nothing and no fence checks it: decided on a replica still catching up (an older
/// record, or none), it would skip the release, the decision would be acknowledged, and the
/// citizen would stay locked out (`409 already_registered`) for good. So before skipping, the
/// releaser asks the stream's leader and decides again on its answer.
pub async fn release_seen(
    js: &jetstream::Context,
    appender: &Appender,
    citizen_key: &str,
    id: &RegistrationId,
    seen: Option<StreamMessage>,
) -> anyhow::Result<()> {
    let decide = |record: Option<&claims::ClaimRecord>| match record.and_then(|r| r.release(id)) {
        Some(released) => Step::Append(vec![released.message(citizen_key)], true),
        // Released already, or held by a newer registration: nothing to do.
        None => Step::Answer(false),
    };
    let mut released = claims::update(appender, seen, decide)
        .await
        .context("Failed to release a claim")?;
    if !released {
        let leader = claims::last_from_leader(js, citizen_key)
            .await
            .context("Failed to read a claim from the stream leader")?;
        released = claims::update(appender, leader, decide)
            .await
            .context("Failed to release a claim")?;
    }
    if released {
        tracing::debug!(registration_id = %id, "Claim released.");
    }
    Ok(())
}
