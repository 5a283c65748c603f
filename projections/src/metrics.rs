//! Every metric the projections and the read API export, in one place.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics of the projections process. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Messages applied, by stream.
    pub applied: IntCounterVec,
    /// Last sequence applied, by stream.
    pub checkpoint: IntGaugeVec,
    /// The workers' stalls, restarts and undecodable records (`/readyz` reads it).
    pub health: streams::consume::Health,
    /// SurrealDB reads made to fill the availability cache: at most one per key per TTL.
    pub availability_loads: IntCounter,
    /// Slot rows those reads returned: every slot on a replica's first load, then only the
    /// slots changed since the load before.
    pub availability_rows_read: IntCounter,
    /// Availability requests answered.
    pub availability_requests: IntCounter,
    /// 1 while this replica holds the writer lease and runs the workers; 0 while it stands by
    /// (it serves reads either way).
    pub writer: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let applied = IntCounterVec::new(
            Opts::new("projection_applied_total", "Messages applied to SurrealDB."),
            &["stream"],
        )
        .expect("valid metric");
        let checkpoint = IntGaugeVec::new(
            Opts::new("projection_checkpoint", "Last stream sequence applied."),
            &["stream"],
        )
        .expect("valid metric");
        let availability_loads = IntCounter::new(
            "read_availability_loads_total",
            "SurrealDB reads made to fill the availability cache.",
        )
        .expect("valid metric");
        let availability_rows_read = IntCounter::new(
            "read_availability_rows_read_total",
            "Slot rows the availability loads read: every slot at first, then only those changed.",
        )
        .expect("valid metric");
        let availability_requests = IntCounter::new(
            "read_availability_requests_total",
            "Availability requests answered.",
        )
        .expect("valid metric");
        let writer = IntGauge::new(
            "projection_writer",
            "1 while this replica holds the writer lease and applies the streams.",
        )
        .expect("valid metric");
        for m in [
            Box::new(applied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(writer.clone()),
            Box::new(checkpoint.clone()),
            Box::new(availability_loads.clone()),
            Box::new(availability_rows_read.clone()),
            Box::new(availability_requests.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        Metrics {
            health: streams::consume::Health::new(&registry),
            registry,
            applied,
            checkpoint,
            availability_loads,
            availability_rows_read,
            availability_requests,
            writer,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
