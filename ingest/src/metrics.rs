//! Every metric the edge exports, in one place.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use streams::runtime::register;

/// The edge's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Responses by route and status code.
    pub responses: IntCounterVec,
    /// Seconds from handing an event (with its claim) to the appender to JetStream's durable
    /// acknowledgement, including reading a conflicting claim back.
    pub append_seconds: Histogram,
    /// Submissions answered from an existing claim (the same request again).
    pub replays: IntCounter,
    /// Recovery requests dropped because the recovery queue was full (answered `202` like
    /// every other: the count is the same whether or not the citizen is registered).
    pub recoveries_dropped: IntCounter,
    /// Submissions being worked on (admitted, not yet answered), set when scraped.
    pub open_submissions: IntGauge,
    /// The windows follower's stalls and restarts (`/readyz` reads it).
    pub health: streams::consume::Health,
    /// Waiting-room tickets this replica issued, by region.
    pub tickets: IntCounterVec,
    /// Each waiting room as the bucket says, set when scraped: `waiting` (tickets beyond the
    /// serving place, every edge's), `rate` (admissions/s), `expected_wait_seconds` (for a
    /// ticket taken now), `admitted` (since the room was turned on), `on` (1 or 0).
    pub rooms: GaugeVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let responses = register(
            &registry,
            IntCounterVec::new(
                Opts::new("ingest_responses_total", "Responses by route and status."),
                &["route", "status"],
            )
            .expect("valid metric"),
        );
        let append_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_append_seconds",
                    "Time until JetStream durably acknowledged an appended event (group commit).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
            )
            .expect("valid metric"),
        );
        let replays = register(
            &registry,
            IntCounter::new(
                "ingest_replays_total",
                "Submissions answered with the registration an earlier, identical request created.",
            )
            .expect("valid metric"),
        );
        let recoveries_dropped = register(
            &registry,
            IntCounter::new(
                "ingest_recoveries_dropped_total",
                "Lost-link recovery requests dropped because the recovery queue was full.",
            )
            .expect("valid metric"),
        );
        let open_submissions = register(
            &registry,
            IntGauge::new(
                "ingest_open_submissions",
                "Submissions admitted and not yet answered (bounded by REG_MAX_OPEN_SUBMISSIONS).",
            )
            .expect("valid metric"),
        );
        let tickets = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "ingest_waiting_room_tickets_total",
                    "Waiting-room tickets this replica issued.",
                ),
                &["region"],
            )
            .expect("valid metric"),
        );
        let rooms = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "ingest_waiting_room",
                    "Each waiting room: waiting, rate (the operator's), admitting (now, at most the rate), expected_wait_seconds, admitted, on.",
                ),
                &["region", "figure"],
            )
            .expect("valid metric"),
        );
        let health = streams::consume::Health::new(&registry);
        Metrics {
            health,
            registry,
            responses,
            append_seconds,
            replays,
            recoveries_dropped,
            open_submissions,
            tickets,
            rooms,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
