//! Every metric the processors export, in one place.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use streams::runtime::register;

/// The reservation processor's metrics. Cheap to clone (handles to shared counters).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Intake events read.
    pub inputs: IntCounter,
    /// Decisions written, by event type.
    pub decisions: IntCounterVec,
    /// Atomic batches of decisions written.
    pub batches: IntCounter,
    /// Seconds per decision batch write (one fsync).
    pub batch_seconds: Histogram,
    /// Times another writer won the fence and this replica rebuilt.
    pub fenced: IntCounter,
    /// Regions this replica holds the lease of and decides for (0 while it stands by).
    pub active: IntGauge,
    /// Times this replica acquired a region's lease (a takeover after the first).
    pub leases: IntCounter,
    /// The consumer loops' stalls, restarts and undecodable records (`/readyz` reads it).
    pub health: streams::consume::Health,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let inputs = counter("reservation_inputs_total", "Intake events read.");
        let batches = counter(
            "reservation_batches_total",
            "Atomic decision batches written.",
        );
        let fenced = counter(
            "reservation_fenced_total",
            "Rebuilds because another writer extended the decisions log first.",
        );
        let leases = counter(
            "reservation_leases_acquired_total",
            "Times this replica became the active one.",
        );
        let active = register(
            &registry,
            IntGauge::new(
                "reservation_active",
                "Regions this replica holds the lease of and decides for (0: standing by).",
            )
            .expect("valid metric"),
        );
        let decisions = register(
            &registry,
            IntCounterVec::new(
                Opts::new("reservation_decisions_total", "Decisions written, by type."),
                &["type"],
            )
            .expect("valid metric"),
        );
        let batch_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "reservation_batch_write_seconds",
                    "Time to durably write one batch of decisions.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0,
                ]),
            )
            .expect("valid metric"),
        );
        let health = streams::consume::Health::new(&registry);
        Metrics {
            registry,
            inputs,
            decisions,
            batches,
            batch_seconds,
            fenced,
            active,
            leases,
            health,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
