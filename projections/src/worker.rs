//! Projection workers: one per stream, each an ordered consumer from the store's checkpoint,
//! applying batches in one transaction each (see [`crate::store`]).

use std::time::Duration;

use async_nats::jetstream;
use streams::replay::{self, Record};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

/// Most messages applied per transaction.
pub const MAX_BATCH: usize = 500;

/// Projects `stream` (messages matching `filter`) into `store` until `shutdown`, resuming
/// after any error from the store's checkpoint. A batch takes what has arrived, waiting up to
/// `linger` after its first message for more (see [`replay::next_group`]).
pub async fn project(
    js: jetstream::Context,
    store: Store,
    stream: &'static str,
    filter: String,
    linger: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    while !shutdown.is_cancelled() {
        match project_once(&js, &store, stream, &filter, linger, &metrics, &shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(stream, error = %format!("{err:#}"), "A projection worker failed; resuming from its checkpoint.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn project_once(
    js: &jetstream::Context,
    store: &Store,
    stream: &'static str,
    filter: &str,
    linger: Duration,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let checkpoint = store.checkpoint(stream).await?;
    let (mut messages, _) = replay::ordered(js, stream, filter.to_owned(), checkpoint + 1).await?;
    let mut events = Vec::with_capacity(MAX_BATCH);
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            group = replay::next_group(&mut messages, MAX_BATCH, linger) => group?,
        };
        let Some(batch) = batch else {
            anyhow::bail!("the consumer of {stream} ended");
        };
        events.clear();
        let mut last_seq = checkpoint;
        for message in &batch {
            let record = Record::from_message(message)?;
            last_seq = record.seq;
            match record.envelope {
                Ok(envelope) => events.push((record.seq, envelope)),
                Err(err) => {
                    metrics.undecodable.inc();
                    tracing::error!(stream, seq = record.seq, error = %err, "An undecodable message was skipped.");
                }
            }
        }
        store.apply(stream, &events, last_seq).await?;
        metrics
            .applied
            .with_label_values(&[stream])
            .inc_by(batch.len() as u64);
        metrics
            .checkpoint
            .with_label_values(&[stream])
            .set(last_seq as i64);
    }
}
