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
    /// Times the loop restarted after a NATS error.
    pub restarts: IntCounter,
    /// Intake messages that could not be decoded.
    pub undecodable: IntCounter,
    /// 1 while this replica holds the lease and decides, 0 while it stands by.
    pub active: IntGauge,
    /// Times this replica acquired the lease (a takeover after the first).
    pub leases: IntCounter,
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
        let restarts = counter(
            "reservation_restarts_total",
            "Loop restarts after NATS errors.",
        );
        let undecodable = counter(
            "reservation_undecodable_total",
            "Undecodable intake messages.",
        );
        let leases = counter(
            "reservation_leases_acquired_total",
            "Times this replica became the active one.",
        );
        let active = register(
            &registry,
            IntGauge::new(
                "reservation_active",
                "1 while this replica holds the lease and decides, 0 on standby.",
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
        Metrics {
            registry,
            inputs,
            decisions,
            batches,
            batch_seconds,
            fenced,
            restarts,
            undecodable,
            active,
            leases,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
