//! The claims releaser: when a registration ends (rejected, cancelled), its citizen's claim is
//! released so the citizen may register again.
//!
//! A durable consumer on the reservation decisions, acknowledged only after the release is
//! stored (at-least-once, and idempotent: a [`ClaimRecord::Released`] is appended only if the
//! claim subject's last record still holds the registration that ended, fenced on its
//! sequence, so a newer registration's claim is never touched). Many decisions are handled at
//! once and their releases share the group commit: a rush of rejections costs a few durable
//! writes, not one each.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use streams::appender::{AppendError, Appender, AppenderOptions, Unit, last_message};
use streams::claims::ClaimRecord;
use streams::events::{Envelope, Event};
use streams::model::RegistrationId;
use streams::subjects::{self, RegionFilter};
use tokio_util::sync::CancellationToken;

/// Durable consumer name of the releaser.
const CONSUMER: &str = "claims_releaser";

/// Runs the releaser until `shutdown`, resuming after errors.
pub async fn run(client: async_nats::Client, shutdown: CancellationToken) {
    let js = jetstream::new(client);
    while !shutdown.is_cancelled() {
        if let Err(err) = run_once(&js, &shutdown).await {
            tracing::warn!(error = %format!("{err:#}"), "The claims releaser failed; resuming.");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// Decisions handled at once (and releases that may share one durable write).
const CONCURRENCY: usize = 512;

async fn run_once(js: &jetstream::Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let intake = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let appender = Appender::start(
        js.client(),
        subjects::INTAKE_STREAM,
        AppenderOptions::default(),
    );
    let stream = js.get_stream(subjects::DECISIONS_STREAM).await?;
    let consumer = stream
        .get_or_create_consumer(
            CONSUMER,
            pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: subjects::reservation_decisions_filter(&RegionFilter::All),
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 4096,
                ..Default::default()
            },
        )
        .await
        .context("Failed to create the claims releaser's consumer")?;
    let messages = consumer.messages().await?;
    let handled = messages
        .map(|message| {
            let (intake, appender) = (&intake, &appender);
            async move {
                let message = message.map_err(|e| anyhow::anyhow!(e))?;
                let ended = match Envelope::decode(&message.payload).map(|e| e.event) {
                    Ok(Event::SlotRejected(e)) => Some((e.citizen_key, e.registration_id)),
                    Ok(Event::RegistrationCancelled(e)) => Some((e.citizen_key, e.registration_id)),
                    _ => None,
                };
                let outcome = match ended {
                    Some((citizen_key, id)) => release(intake, appender, &citizen_key, &id).await,
                    None => Ok(()),
                };
                match outcome {
                    Ok(()) => message.ack().await.map_err(|e| anyhow::anyhow!(e)),
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "A claim could not be released yet; it will be retried.");
                        message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                            .map_err(|e| anyhow::anyhow!(e))
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY);
    tokio::pin!(handled);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = handled.next() => next,
        };
        match next {
            Some(result) => result?,
            None => anyhow::bail!("the releaser's consumer ended"),
        }
    }
}

/// Releases the citizen's claim if it still holds `id`.
pub async fn release(
    intake: &jetstream::stream::Stream<()>,
    appender: &Appender,
    citizen_key: &str,
    id: &RegistrationId,
) -> anyhow::Result<()> {
    let mut last = last_message(intake, &subjects::claim(citizen_key))
        .await
        .context("Failed to read a claim")?;
    // A fence failure means the claim changed since it was read: the appender hands back
    // what is there now.
    for _ in 0..4 {
        let Some(record) = last else { return Ok(()) };
        match ClaimRecord::decode(&record.payload) {
            Ok(ClaimRecord::Held(claim)) if &claim.registration_id == id => {}
            // Released already, or held by a newer registration: nothing to do.
            Ok(_) => return Ok(()),
            Err(err) => return Err(err).context("A stored claim is unreadable"),
        }
        let released = ClaimRecord::Released {
            registration_id: id.clone(),
        };
        let unit = Unit::fenced(vec![released.message(citizen_key)], record.sequence);
        match appender.append_unit(unit).await {
            Ok(_) => {
                tracing::debug!(registration_id = %id, "Claim released.");
                return Ok(());
            }
            Err(AppendError::Moved { last: now }) => last = now.map(|m| *m),
            Err(err) => return Err(err).context("Failed to release a claim"),
        }
    }
    anyhow::bail!("the claim kept changing while being released")
}
