//! Registration windows per region, as this replica knows them: folded from the `WindowSet`
//! events of the intake stream (last one per region, then live), so every edge replica
//! enforces the same windows without a database. Until it has read them all, the replica is
//! not ready and accepts no submission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use streams::consume::{self, Decoded, Halt, Health, OrderedSpec, OrderedStep, Start};
use streams::events::{Event, WindowSet};
use streams::model::Region;
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

/// When a region accepts submissions: `[opens, closes)`.
type Window = (DateTime<Utc>, DateTime<Utc>);

/// The windows known to this replica. A region without a window is open.
#[derive(Clone, Default)]
pub struct Windows {
    inner: Arc<RwLock<HashMap<Region, Window>>>,
    /// Whether every window in the log has been read: until then a region about to open
    /// could look open, so the edge accepts nothing.
    known: Arc<AtomicBool>,
}

impl Windows {
    /// Whether `region` accepts submissions at `now`.
    pub fn is_open(&self, region: &Region, now: DateTime<Utc>) -> bool {
        match self.inner.read().expect("lock").get(region) {
            None => true,
            Some((opens, closes)) => *opens <= now && now < *closes,
        }
    }

    /// Whether this replica has read every window in the log (since its start).
    pub fn known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// Records a window (from the log, or from this replica's own accepted PUT).
    pub fn set(&self, window: &WindowSet) {
        self.inner
            .write()
            .expect("lock")
            .insert(window.region.clone(), (window.opens_at, window.closes_at));
    }

    /// Follows the intake stream's windows (the last one per region, then every new one)
    /// until `shutdown`, through the shared consumer loop: it stops at a window it cannot
    /// decode rather than enforce an older one.
    pub async fn follow(self, js: jetstream::Context, health: Health, shutdown: CancellationToken) {
        let spec = OrderedSpec {
            name: "windows".into(),
            stream: subjects::INTAKE_STREAM,
            filter: subjects::intake_kind_filter(&RegionFilter::All, IntakeKind::Window),
            max_group: 64,
            linger: std::time::Duration::ZERO,
        };
        let mut step = self;
        consume::run_ordered(&js, &spec, &mut step, &health, &shutdown).await;
    }
}

impl OrderedStep for Windows {
    async fn resume(&mut self) -> Result<Start, Halt> {
        Ok(Start::LastPerSubject)
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), Halt> {
        for record in group {
            if let Event::WindowSet(window) = record.envelope.event {
                self.set(&window);
            }
        }
        Ok(())
    }

    fn caught_up(&mut self) {
        if !self.known.swap(true, Ordering::AcqRel) {
            tracing::info!("Registration windows known; accepting submissions.");
        }
    }
}
