//! Projection workers: one per stream, each the shared ordered consumer loop
//! ([`streams::consume::run_ordered`]) from the store's checkpoint, applying each group of
//! events and its checkpoint in one transaction (see [`crate::store`]). A record the worker
//! cannot decode stops it there: its checkpoint never moves past what it did not apply.

use std::time::Duration;

use async_nats::jetstream;
use streams::consume::{self, Decoded, Halt, OrderedSpec, OrderedStep, Start};
use streams::subjects::{self, RegionFilter};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{ApplyError, Store};

/// Most messages applied per transaction.
pub const MAX_BATCH: usize = 500;

/// The streams the projections fold, each with the filter its worker reads it with.
pub fn projected_streams() -> [(&'static str, String); 2] {
    [
        (
            subjects::INTAKE_STREAM,
            subjects::intake_filter(&RegionFilter::All),
        ),
        (
            subjects::DECISIONS_STREAM,
            subjects::decisions_filter(&RegionFilter::All),
        ),
    ]
}

/// Projects `stream` (messages matching `filter`) into `store` until `shutdown`, resuming
/// after any error from the store's checkpoint. A batch takes what has arrived, waiting up to
/// `linger` after its first message for more (see [`streams::replay::next_group`]).
pub async fn project(
    js: jetstream::Context,
    store: Store,
    stream: &'static str,
    filter: String,
    linger: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let spec = OrderedSpec {
        name: format!("projection.{}", stream.to_ascii_lowercase()),
        stream,
        filter,
        max_group: MAX_BATCH,
        linger,
    };
    let mut step = Projection {
        store,
        stream,
        checkpoint: 0,
        metrics: metrics.clone(),
    };
    consume::run_ordered(&js, &spec, &mut step, &metrics.health, &shutdown).await;
}

/// One stream's projection step.
struct Projection {
    store: Store,
    stream: &'static str,
    /// The last sequence applied, as this worker knows it: each batch applies only on top of
    /// it (another worker on the same database makes this one resume instead).
    checkpoint: u64,
    metrics: Metrics,
}

impl OrderedStep for Projection {
    async fn resume(&mut self) -> Result<Start, Halt> {
        self.checkpoint = self.store.checkpoint(self.stream).await?;
        Ok(Start::At(self.checkpoint + 1))
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), Halt> {
        let last_seq = group.last().map_or(0, |r| r.seq);
        let count = group.len() as u64;
        let events: Vec<_> = group.into_iter().map(|r| (r.seq, r.envelope)).collect();
        match self
            .store
            .apply(self.stream, &events, self.checkpoint, last_seq)
            .await
        {
            Ok(()) => self.checkpoint = last_seq,
            Err(ApplyError::CheckpointMoved) => return Err(Halt::Rebuild),
            Err(ApplyError::Store(err)) => return Err(Halt::Transient(err)),
        }
        self.metrics
            .applied
            .with_label_values(&[self.stream])
            .inc_by(count);
        self.metrics
            .checkpoint
            .with_label_values(&[self.stream])
            .set(last_seq as i64);
        Ok(())
    }
}
