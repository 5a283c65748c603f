//! Projection workers: one per stream, each the shared ordered consumer loop
//! ([`streams::consume::run_ordered`]) from the store's checkpoint, applying each group of
//! events and its checkpoint in one transaction (see [`crate::store`]). A record the worker
//! cannot decode stops it there: its checkpoint never moves past what it did not apply.

use std::time::Duration;

use async_nats::jetstream;
use streams::consume::{self, Decoded, Halt, OrderedSpec, OrderedStep, Start};
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{ApplyError, Store};

/// Most messages applied per transaction.
pub const MAX_BATCH: usize = 500;

/// The streams the projections fold, each with the filter its worker reads it with.
///
/// From intake only the operators' capacity changes: a registration's status starts with its
/// first decision, and until then the read API answers `received` for any id with a valid
/// token (tokens are only handed out with a `202`). So the projections never read the 4 kB
/// submissions, by far most of the intake stream: nats-server does not deliver them and no
/// row is written for them (the first step of the rush-hour work measured the intake worker
/// at about half of the projections' CPU, see `docs/write-path.md`).
pub fn projected_streams() -> [(&'static str, String); 2] {
    projected_streams_of(&RegionFilter::All)
}

/// [`projected_streams`] of the regions in `regions` only: one region's part of each (a
/// parallel rebuild applies each region's part on its own).
pub fn projected_streams_of(regions: &RegionFilter) -> [(&'static str, String); 2] {
    [
        (
            subjects::INTAKE_STREAM,
            subjects::intake_kind_filter(regions, IntakeKind::Capacity),
        ),
        (
            subjects::DECISIONS_STREAM,
            subjects::decisions_filter(regions),
        ),
    ]
}

/// Where each projected stream's worker would stand if it had applied everything there is:
/// the sequence of the last message its filter matches (0 if none). The workers' checkpoints
/// (`projection_checkpoint` in `/metrics`) reach these when the projections have caught up.
pub async fn ends(js: &jetstream::Context) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let mut ends = Vec::new();
    for (stream, filter) in projected_streams() {
        let last = js
            .get_stream(stream)
            .await?
            .get_last_raw_message_by_subject(&filter)
            .await;
        let seq = match last {
            Ok(message) => message.sequence,
            Err(err)
                if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                0
            }
            Err(err) => return Err(err.into()),
        };
        ends.push((stream, seq));
    }
    Ok(ends)
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
        name: streams::subjects::projection_reader(stream),
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

#[cfg(test)]
mod tests {
    use super::*;
    use streams::model::Region;
    use streams::subjects::matches;

    /// The projections read capacity changes from intake and nothing else there: the
    /// submissions (4 kB each) never reach them.
    #[test]
    fn the_intake_worker_reads_capacity_changes_and_no_submissions() {
        let [(stream, filter), (decisions, decisions_filter)] = projected_streams();
        assert_eq!(stream, subjects::INTAKE_STREAM);
        assert_eq!(decisions, subjects::DECISIONS_STREAM);
        let region = Region::parse("mazowieckie").unwrap();
        assert!(matches(
            &filter,
            &subjects::intake(&region, IntakeKind::Capacity)
        ));
        for kind in [
            IntakeKind::Submitted,
            IntakeKind::Cancel,
            IntakeKind::Verification,
            IntakeKind::Window,
        ] {
            assert!(
                !matches(&filter, &subjects::intake(&region, kind)),
                "{kind:?}"
            );
        }
        assert!(matches(
            &decisions_filter,
            &subjects::reservation_decisions(&region)
        ));
        assert!(matches(
            &decisions_filter,
            &subjects::notification_decisions(&region)
        ));
    }
}
