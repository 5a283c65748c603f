//! Every metric the processors export, in one place.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
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
    /// Snapshots of a region's state stored.
    pub snapshots: IntCounter,
    /// Seconds the decider spent encoding a snapshot (it decides nothing meanwhile).
    pub snapshot_encode_seconds: Histogram,
    /// Snapshots looked for when rebuilding, by outcome: `used`, `absent`, `ignored`.
    pub snapshot_loads: IntCounterVec,
    /// Seconds per rebuild of a region's state (snapshot load and verification, tail fold).
    pub rebuild_seconds: Histogram,
    /// Decisions read from the log by the region's last rebuild (after its snapshot).
    pub rebuild_folded: IntGaugeVec,
    /// Every processor's input flow per region: lag, rate, redeliveries.
    pub flow: Flow,
    /// The consumer loops' stalls, restarts and undecodable records (`/readyz` reads it).
    pub health: streams::consume::Health,
    /// The verification processor's metrics.
    pub verification: VerificationMetrics,
    /// The notification processor's metrics.
    pub notification: NotificationMetrics,
}

/// The notification processor's metrics.
#[derive(Clone)]
pub struct NotificationMetrics {
    /// Messages delivered to a provider, by channel.
    pub sent: IntCounterVec,
    /// Decisions put back for another delivery attempt.
    pub retries: IntCounter,
    /// Messages given up on (dead letters), by channel.
    pub dead_letters: IntCounterVec,
    /// Seconds from a decision to its message's delivery.
    pub decision_to_delivery_seconds: Histogram,
    /// Contacts looked up for a decision, by where they came from: `submission` (read from
    /// intake and opened) or `cache` (a decision about the same registration a moment ago).
    pub contacts: IntCounterVec,
}

impl NotificationMetrics {
    fn new(registry: &Registry) -> Self {
        NotificationMetrics {
            sent: counter_vec(
                registry,
                "notification_sent_total",
                "Messages delivered, by channel.",
                "channel",
            ),
            retries: counter(
                registry,
                "notification_retries_total",
                "Decisions put back for another delivery attempt.",
            ),
            dead_letters: counter_vec(
                registry,
                "notification_dead_letters_total",
                "Messages given up on after the attempts were spent, by channel.",
                "channel",
            ),
            decision_to_delivery_seconds: histogram(
                registry,
                "notification_decision_to_delivery_seconds",
                "Time from a decision to its message's delivery.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0],
            ),
            contacts: counter_vec(
                registry,
                "notification_contacts_total",
                "Contacts looked up for a decision, by source: submission (read and opened) or cache.",
                "source",
            ),
        }
    }
}

/// The verification processor's metrics.
#[derive(Clone)]
pub struct VerificationMetrics {
    /// Seconds per registry call, answered or not.
    pub registry_seconds: Histogram,
    /// Registry calls by outcome: a verdict (`match`, `data_mismatch`, `deceased`,
    /// `not_found`) or a failure (`rate_limited`, `http_error`, `server_fault`,
    /// `client_fault`, `bad_answer`, `unreachable`).
    pub calls: IntCounterVec,
    /// The circuit breaker: 0 closed, 1 half-open (probing), 2 open.
    pub breaker: IntGauge,
    /// Verifications put back for a later attempt after a failed call.
    pub retries: IntCounter,
    /// Verifications put back without calling, by why (`breaker`, `rate_limit`).
    pub deferred: IntCounterVec,
    /// Verifications handed to an operator (manual review).
    pub manual_reviews: IntCounter,
    /// Seconds from the citizen's submission to the registry's verdict being recorded (a
    /// pass is the confirmation: the reservation processor confirms on the next read).
    pub submission_to_verdict_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
            // What the decider reads and writes.
            inputs: counter(r, "reservation_inputs_total", "Intake events read."),
            decisions: counter_vec(
                r,
                "reservation_decisions_total",
                "Decisions written, by type.",
                "type",
            ),
            batches: counter(
                r,
                "reservation_batches_total",
                "Atomic decision batches written.",
            ),
            batch_seconds: histogram(
                r,
                "reservation_batch_write_seconds",
                "Time to durably write one batch of decisions.",
                vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0],
            ),
            // Who decides: the fence and the region's lease.
            fenced: counter(
                r,
                "reservation_fenced_total",
                "Rebuilds because another writer extended the decisions log first.",
            ),
            active: gauge(
                r,
                "reservation_active",
                "Regions this replica holds the lease of and decides for (0: standing by).",
            ),
            leases: counter(
                r,
                "reservation_leases_acquired_total",
                "Times this replica became the active one.",
            ),
            // Snapshots and the rebuilds that start from them.
            snapshots: counter(
                r,
                "reservation_snapshots_total",
                "Snapshots of a region's state stored.",
            ),
            snapshot_encode_seconds: histogram(
                r,
                "reservation_snapshot_encode_seconds",
                "Time spent encoding a snapshot of a region's state, on the snapshot thread (the decider does not wait for it).",
                vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            ),
            snapshot_loads: counter_vec(
                r,
                "reservation_snapshot_loads_total",
                "Snapshots looked for when rebuilding a region's state, by outcome: used, absent, ignored (then the whole log is folded).",
                "outcome",
            ),
            rebuild_seconds: histogram(
                r,
                "reservation_rebuild_seconds",
                "Time to rebuild a region's state from its snapshot and the log.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
            ),
            rebuild_folded: gauge_vec(
                r,
                "reservation_rebuild_folded",
                "Decisions read from the log by the region's last rebuild (after its snapshot).",
                &["region"],
            ),
            // Every processor's.
            flow: Flow::new(r),
            health: streams::consume::Health::new(r),
            verification: VerificationMetrics::new(r),
            notification: NotificationMetrics::new(r),
            registry,
        }
    }
}

/// Every processor's input flow, labelled by `processor` (`reservation`, `verification`,
/// `notification`) and `region`: how far behind it is, how fast it goes, how often it sees a
/// record again.
#[derive(Clone)]
pub struct Flow {
    /// Records of the processor's input not yet handled, as of the last record read (the
    /// consumer's `num_pending`).
    pub pending: IntGaugeVec,
    /// Records handled (decided, or put back for later): its rate is the processing rate.
    pub handled: IntCounterVec,
    /// Records delivered again (JetStream's `delivered` above 1): a failed or timed-out
    /// attempt before. Always 0 for reservation, whose ordered reader never redelivers.
    pub redeliveries: IntCounterVec,
}

/// The processors' names in [`Flow`]'s `processor` label.
pub mod processor {
    /// The reservation processor.
    pub const RESERVATION: &str = "reservation";
    /// The verification processor.
    pub const VERIFICATION: &str = "verification";
    /// The notification processor.
    pub const NOTIFICATION: &str = "notification";
}

impl Flow {
    fn new(registry: &Registry) -> Self {
        let labels = &["processor", "region"];
        Flow {
            pending: gauge_vec(
                registry,
                "processor_pending",
                "Input records not yet handled (the consumer's pending count at the last record read), by processor and region.",
                labels,
            ),
            handled: counter_vec_of(
                registry,
                "processor_handled_total",
                "Input records handled (decided, or put back for later), by processor and region.",
                labels,
            ),
            redeliveries: counter_vec_of(
                registry,
                "processor_redeliveries_total",
                "Input records delivered more than once, by processor and region.",
                labels,
            ),
        }
    }

    /// Records that `processor` read `record` for `region` (before handling it).
    pub fn read(&self, processor: &str, region: &str, record: &streams::consume::Decoded) {
        let labels = &[processor, region];
        self.pending
            .with_label_values(labels)
            .set(i64::try_from(record.pending).unwrap_or(i64::MAX));
        if record.delivered > 1 {
            self.redeliveries.with_label_values(labels).inc();
        }
    }

    /// Records that `processor` handled `count` records for `region`.
    pub fn handled(&self, processor: &str, region: &str, count: u64) {
        self.handled
            .with_label_values(&[processor, region])
            .inc_by(count);
    }

    /// Creates `processor`'s series for `region` at 0, so they exist before any traffic.
    pub fn start(&self, processor: &str, region: &str) {
        let labels = &[processor, region];
        self.pending.with_label_values(labels).set(0);
        self.handled.with_label_values(labels);
        self.redeliveries.with_label_values(labels);
    }
}

impl VerificationMetrics {
    fn new(registry: &Registry) -> Self {
        VerificationMetrics {
            registry_seconds: histogram(
                registry,
                "verification_registry_seconds",
                "Time per call to the government registry.",
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            calls: counter_vec(
                registry,
                "verification_registry_calls_total",
                "Calls to the government registry, by outcome.",
                "outcome",
            ),
            breaker: gauge(
                registry,
                "verification_breaker_state",
                "The registry circuit breaker: 0 closed, 1 half-open, 2 open.",
            ),
            retries: counter(
                registry,
                "verification_retries_total",
                "Verifications put back for another attempt after a failed call.",
            ),
            deferred: counter_vec(
                registry,
                "verification_deferred_total",
                "Verifications put back without calling the registry, by why.",
                "why",
            ),
            manual_reviews: counter(
                registry,
                "verification_manual_reviews_total",
                "Verifications handed to an operator because the registry gave no answer.",
            ),
            submission_to_verdict_seconds: histogram(
                registry,
                "verification_submission_to_verdict_seconds",
                "Time from a citizen's submission to the registry's verdict being recorded.",
                vec![
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                ],
            ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// One registered metric of each kind. Names and help texts are literals: a malformed one is a
// bug the first start reports.

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    counter_vec_of(registry, name, help, &[label])
}

fn counter_vec_of(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}
