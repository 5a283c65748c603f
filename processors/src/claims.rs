//! The claims releaser: when a registration ends (rejected, cancelled), its citizen's claim is
//! deleted so the citizen may register again.
//!
//! A durable consumer on the reservation decisions, acknowledged only after the claim is
//! gone (at-least-once, and idempotent: a claim is deleted only if it still names the
//! registration that ended, at the revision read, so a newer registration's claim is never
//! touched).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::pull, kv};
use futures::StreamExt;
use streams::claims::Claim;
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

async fn run_once(js: &jetstream::Context, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let claims = js
        .get_key_value(subjects::CLAIMS_BUCKET)
        .await
        .context("Failed to open the claims bucket")?;
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
    let mut messages = consumer.messages().await?;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => next,
        };
        let Some(message) = next else {
            anyhow::bail!("the releaser's consumer ended")
        };
        let message = message?;
        let ended = match Envelope::decode(&message.payload).map(|e| e.event) {
            Ok(Event::SlotRejected(e)) => Some((e.citizen_key, e.registration_id)),
            Ok(Event::RegistrationCancelled(e)) => Some((e.citizen_key, e.registration_id)),
            _ => None,
        };
        let outcome = match ended {
            Some((citizen_key, id)) => release(&claims, &citizen_key, &id).await,
            None => Ok(()),
        };
        match outcome {
            Ok(()) => message.ack().await.map_err(|e| anyhow::anyhow!(e))?,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "A claim could not be released yet; it will be retried.");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
        }
    }
}

/// Deletes the citizen's claim if it still belongs to `id`.
pub async fn release(
    claims: &kv::Store,
    citizen_key: &str,
    id: &RegistrationId,
) -> anyhow::Result<()> {
    let Some(entry) = claims.entry(citizen_key).await? else {
        return Ok(());
    };
    if entry.operation != kv::Operation::Put {
        return Ok(());
    }
    match serde_json::from_slice::<Claim>(&entry.value) {
        Ok(claim) if &claim.registration_id == id => {
            claims
                .delete_expect_revision(citizen_key, Some(entry.revision))
                .await
                .context("Failed to delete a claim")?;
            tracing::debug!(registration_id = %id, "Claim released.");
        }
        _ => {}
    }
    Ok(())
}
