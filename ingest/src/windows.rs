//! What operators configured per region, as this replica knows it: the registration windows
//! folded from the `WindowSet` events of the intake stream and the regions that have a
//! capacity or a window (last record per subject, then live), so every edge replica enforces
//! the same windows and refuses the same unconfigured regions without a database. Until it
//! has read both, the replica is not ready and accepts no submission.

use std::collections::{HashMap, HashSet};
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

/// The windows and configured regions known to this replica. A configured region without a
/// window is open.
#[derive(Clone, Default)]
pub struct Windows {
    inner: Arc<RwLock<HashMap<Region, Window>>>,
    /// Regions an operator set a capacity or a window for: the only ones that take
    /// submissions (anything else an anonymous request names creates nothing).
    configured: Arc<RwLock<HashSet<Region>>>,
    /// Whether every window in the log has been read: until then a region about to open
    /// could look open, so the edge accepts nothing.
    known: Arc<AtomicBool>,
    /// Whether every region with a capacity has been read.
    capacities_known: Arc<AtomicBool>,
}

/// The follower of the regions' capacities: only which regions have one.
struct Capacities(Windows);

impl Windows {
    /// Whether an operator configured `region` (set a capacity or a window for it).
    pub fn is_configured(&self, region: &Region) -> bool {
        self.configured.read().expect("lock").contains(region)
    }

    /// Records that `region` has a capacity (from the log, or this replica's own PUT).
    pub fn configure(&self, region: &Region) {
        if !self.is_configured(region) {
            self.configured
                .write()
                .expect("lock")
                .insert(region.clone());
        }
    }

    /// When `region`'s window opens (`None`: it has none).
    pub fn opens(&self, region: &Region) -> Option<DateTime<Utc>> {
        self.inner
            .read()
            .expect("lock")
            .get(region)
            .map(|(opens, _)| *opens)
    }

    /// Whether `region` accepts submissions at `now`.
    pub fn is_open(&self, region: &Region, now: DateTime<Utc>) -> bool {
        match self.inner.read().expect("lock").get(region) {
            None => true,
            Some((opens, closes)) => *opens <= now && now < *closes,
        }
    }

    /// Whether this replica has read every window and every configured region in the log
    /// (since its start).
    pub fn known(&self) -> bool {
        self.known.load(Ordering::Acquire) && self.capacities_known.load(Ordering::Acquire)
    }

    /// Records a window (from the log, or from this replica's own accepted PUT).
    pub fn set(&self, window: &WindowSet) {
        self.inner
            .write()
            .expect("lock")
            .insert(window.region.clone(), (window.opens_at, window.closes_at));
        self.configure(&window.region);
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
        let capacities = OrderedSpec {
            name: "capacities".into(),
            stream: subjects::INTAKE_STREAM,
            filter: subjects::intake_kind_filter(&RegionFilter::All, IntakeKind::Capacity),
            max_group: 64,
            linger: std::time::Duration::ZERO,
        };
        let mut regions = Capacities(self.clone());
        let mut step = self;
        tokio::join!(
            consume::run_ordered(&js, &spec, &mut step, &health, &shutdown),
            consume::run_ordered(&js, &capacities, &mut regions, &health, &shutdown),
        );
    }
}

impl OrderedStep for Capacities {
    async fn resume(&mut self) -> Result<Start, Halt> {
        // One record per region is enough: any capacity makes the region configured.
        Ok(Start::LastPerSubject)
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), Halt> {
        for record in group {
            if let Event::CapacitySet(set) = record.envelope.event {
                self.0.configure(&set.slot.region);
            }
        }
        Ok(())
    }

    fn caught_up(&mut self) {
        if !self.0.capacities_known.swap(true, Ordering::AcqRel) {
            tracing::info!("Configured regions known.");
        }
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
