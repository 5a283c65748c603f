//! Takeover time at a national scale (`deploy/bench-takeover`): a region's decision log of a
//! million decisions, rebuilt by a full fold and from a snapshot plus its tail; and how many
//! decisions per second one region's replica sustains.
//!
//! Setup is not what is measured: the log is written by the reservation rule itself
//! ([`State::handle`] over synthetic submissions, verdicts and cancellations) in atomic
//! batches of up to 1,000 decisions, to a nats-server started **without fsync** (reading
//! back does not depend on it). The snapshot is the one the decider would store
//! `snapshot_every` decisions before the end (the longest tail a takeover meets). Each
//! rebuild's state is checked equal to the live state that wrote the log.
//!
//! The decide rate is measured twice: the pure rule on one core (its ceiling), and a real
//! replica ([`processors::reservation::run`]) catching up on a backlog of submissions with a
//! nats-server **with** `sync_interval: always`, each batch of decisions one fsync'd write.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::NaiveDate;
use processors::reservation::decide::{Input, Policy, State};
use processors::reservation::rebuild::{self, Pending, Rebuilt};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use streams::appender::{Outgoing, publish_atomic};
use streams::events::{
    CancellationRequested, CapacitySet, Envelope, Event, RegistrationSubmitted, Sealed,
    VerificationPassed,
};
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::subjects::{self, IntakeKind, RegionFilter};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Decisions in the region's log.
    pub decisions: u64,
    /// Slots (locations × one date) in the region.
    pub slots: u32,
    /// Places per slot.
    pub capacity: u32,
    /// Decisions between snapshots (the tail a takeover folds at most).
    pub snapshot_every: u64,
    /// Rebuilds of each kind (the figures are the median).
    pub runs: usize,
    /// Submissions in the backlog a real replica decides (0: skip).
    pub backlog: u64,
}

/// One rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildFigure {
    /// `full fold` or `snapshot + tail`.
    pub what: String,
    /// Median wall time over the runs, seconds.
    pub seconds: f64,
    /// Every run's time.
    pub runs: Vec<f64>,
    /// Decisions read from the log.
    pub folded: u64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct TakeoverReport {
    /// The machine.
    pub machine: crate::contention::report::Machine,
    /// Decisions in the region's log.
    pub decisions: u64,
    /// Registrations the state knows.
    pub registrations: usize,
    /// Slots.
    pub slots: u32,
    /// Decisions between snapshots.
    pub snapshot_every: u64,
    /// The snapshot's size, bytes.
    pub snapshot_bytes: usize,
    /// Seconds the decider spends encoding it.
    pub snapshot_encode_seconds: f64,
    /// Seconds to store it (no fsync here).
    pub snapshot_store_seconds: f64,
    /// Seconds to write the log (setup, no fsync).
    pub setup_seconds: f64,
    /// The rebuilds.
    pub rebuilds: Vec<RebuildFigure>,
    /// The pure rule's rate on one core, inputs per second.
    pub rule_inputs_per_second: f64,
    /// The pure rule's rate on one core, decisions per second.
    pub rule_decisions_per_second: f64,
    /// A real replica catching up on a backlog with fsync'd writes, decisions per second.
    pub replica_decisions_per_second: Option<f64>,
    /// Submissions in that backlog.
    pub backlog: u64,
}

fn region() -> Region {
    Region::parse("mazowieckie").expect("a region")
}

fn slot(i: u32) -> SlotKey {
    SlotKey {
        region: region(),
        location: Location::parse(&format!("site-{i:05}")).expect("a location"),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).expect("a date"),
    }
}

fn submitted(n: u64, slot: SlotKey) -> Event {
    Event::RegistrationSubmitted(RegistrationSubmitted {
        registration_id: RegistrationId::parse(&format!("mazowieckie.{n:032x}")).expect("an id"),
        slot,
        citizen_key: format!("{n:032x}"),
        request_hash: String::new(),
        language: "pl".into(),
        personal: Sealed {
            key_id: "k1".into(),
            nonce: String::new(),
            ciphertext: String::new(),
        },
    })
}

/// The synthetic intake: mostly submissions (a hot tenth of the slots takes half of them),
/// a verdict for most of the reserved, a cancellation now and then.
struct Traffic {
    rng: rand::rngs::StdRng,
    slots: u32,
    next: u64,
    reserved: Vec<u64>,
}

impl Traffic {
    fn new(seed: u64, slots: u32) -> Self {
        Traffic {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            slots,
            next: 0,
            reserved: Vec::new(),
        }
    }

    /// The next intake event: a verdict or a cancellation for a quarter of the inputs while
    /// someone holds a place, else a submission.
    fn next_event(&mut self) -> Event {
        let roll: f64 = self.rng.random();
        if roll < 0.25 && !self.reserved.is_empty() {
            let k = self.rng.random_range(0..self.reserved.len());
            let n = self.reserved.swap_remove(k);
            let id = RegistrationId::parse(&format!("mazowieckie.{n:032x}")).expect("an id");
            return if roll < 0.02 {
                Event::CancellationRequested(CancellationRequested {
                    registration_id: id,
                })
            } else {
                Event::VerificationPassed(VerificationPassed {
                    registration_id: id,
                    reviewer: None,
                })
            };
        }
        self.submission()
    }

    /// The next citizen's submission: half of them for the hot tenth of the slots.
    fn submission(&mut self) -> Event {
        self.next += 1;
        let hot = self.rng.random_bool(0.5);
        let s = if hot {
            self.rng.random_range(0..self.slots.div_ceil(10))
        } else {
            self.rng.random_range(0..self.slots)
        };
        self.reserved.push(self.next);
        submitted(self.next, slot(s))
    }
}

/// Writes `events` to intake in atomic batches of up to 1,000; returns the last sequence.
async fn append_intake(
    js: &jetstream::Context,
    client: &async_nats::Client,
    events: Vec<(IntakeKind, Event)>,
) -> anyhow::Result<u64> {
    let mut last = 0;
    let mut batch = Vec::new();
    let count = events.len();
    for (i, (kind, event)) in events.into_iter().enumerate() {
        batch.push(Outgoing::event(
            subjects::intake(&region(), kind),
            &Envelope::new("bench", event),
        ));
        if batch.len() == 1000 || i + 1 == count {
            last = *publish_atomic(js, client, std::mem::take(&mut batch))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .last()
                .expect("a batch");
        }
    }
    Ok(last)
}

/// Measures everything; prints as it goes.
pub async fn measure(options: &Options) -> anyhow::Result<TakeoverReport> {
    let machine = crate::contention::report::Machine::describe();
    let nats = testkit::NatsServer::start_without_fsync();
    let (client, js) = crate::connect_with_streams(&nats.url()).await?;
    let store = js
        .get_object_store(subjects::SNAPSHOTS_BUCKET)
        .await
        .context("Failed to open the snapshots bucket")?;
    let policy = Policy::default();

    let mut log = write_log(&js, &client, options, policy).await?;
    let (pending, snapshot_encode_seconds) = log
        .snapshot
        .take()
        .context("no batch ended on a decided input")?;
    let started = Instant::now();
    let snapshot_bytes = rebuild::write(&js, &store, pending).await?;
    let snapshot_store_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "takeover: snapshot of {snapshot_bytes} bytes, encoded in {snapshot_encode_seconds:.2} s, stored in {snapshot_store_seconds:.2} s"
    );

    let mut rebuilds = Vec::new();
    for (what, with_snapshot) in [("full fold", false), ("snapshot + tail", true)] {
        let store = with_snapshot.then_some(&store);
        rebuilds.push(time_rebuilds(&js, store, what, &log, options.runs).await?);
    }
    let registrations = log.state.registrations.len();
    drop(log.state);
    drop(nats);

    let replica_decisions_per_second = if options.backlog > 0 {
        Some(replica_rate(options).await?)
    } else {
        None
    };
    Ok(TakeoverReport {
        machine,
        decisions: log.decisions,
        registrations,
        slots: options.slots,
        snapshot_every: options.snapshot_every,
        snapshot_bytes,
        snapshot_encode_seconds,
        snapshot_store_seconds,
        setup_seconds: log.setup_seconds,
        rebuilds,
        rule_inputs_per_second: log.rule_inputs_per_second,
        rule_decisions_per_second: log.rule_decisions_per_second,
        replica_decisions_per_second,
        backlog: options.backlog,
    })
}

/// The region's log as the setup wrote it, and the live state that wrote it.
struct Log {
    /// The rule's state after the last decision.
    state: State,
    /// Decisions written.
    decisions: u64,
    /// The last decision's stream sequence: the fence a rebuild must find.
    last_decision: u64,
    /// The snapshot the decider would have taken `snapshot_every` decisions before the end,
    /// not yet stored, and the seconds it took to encode.
    snapshot: Option<(Pending, f64)>,
    /// Seconds the whole setup took.
    setup_seconds: f64,
    /// The pure rule's rate: inputs per second of its own time.
    rule_inputs_per_second: f64,
    /// The same in decisions.
    rule_decisions_per_second: f64,
}

/// Setup: capacities on intake, then the rule's decisions written as the decider would, in
/// atomic batches of up to 1,000, each ending on a decided input.
async fn write_log(
    js: &jetstream::Context,
    client: &async_nats::Client,
    options: &Options,
    policy: Policy,
) -> anyhow::Result<Log> {
    let setup = Instant::now();
    let capacities = capacities(options);
    let mut seq = append_intake(js, client, capacities).await?;
    let mut state = State::new(policy);
    for i in 0..options.slots {
        state.set_capacity(&slot(i), options.capacity);
    }
    let mut traffic = Traffic::new(19, options.slots);
    let decisions_subject = subjects::reservation_decisions(&region());
    let snapshot_at = options.decisions.saturating_sub(options.snapshot_every);
    let (mut written, mut inputs, mut rule_time) = (0u64, 0u64, Duration::ZERO);
    let mut snapshot: Option<(Pending, f64)> = None;
    let mut last_decision = 0;
    while written < options.decisions {
        let mut batch = Vec::with_capacity(1000);
        // Inputs until the batch is nearly full; it ends on a decided input, as the
        // decider's batches that may be snapshotted do.
        while batch.len() < 990 && written + (batch.len() as u64) < options.decisions {
            seq += 1;
            inputs += 1;
            let input = Input {
                seq,
                event: traffic.next_event(),
            };
            let started = Instant::now();
            let decisions = state.handle(&input);
            rule_time += started.elapsed();
            for decision in decisions {
                batch.push(Outgoing::event(
                    decisions_subject.clone(),
                    &Envelope::new("bench", decision),
                ));
            }
        }
        if batch.is_empty() {
            continue;
        }
        written += batch.len() as u64;
        last_decision = *publish_atomic(js, client, batch)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .last()
            .expect("a batch");
        if snapshot.is_none() && written >= snapshot_at && state.checkpoint == seq {
            let started = Instant::now();
            let pending = Pending::of(&region(), last_decision, &state);
            snapshot = Some((pending, started.elapsed().as_secs_f64()));
        }
        if written % 100_000 < 990 {
            eprintln!("takeover: {written} decisions written");
        }
    }
    let log = Log {
        decisions: written,
        last_decision,
        snapshot,
        setup_seconds: setup.elapsed().as_secs_f64(),
        rule_inputs_per_second: inputs as f64 / rule_time.as_secs_f64(),
        rule_decisions_per_second: written as f64 / rule_time.as_secs_f64(),
        state,
    };
    eprintln!(
        "takeover: {} decisions ({} registrations) written in {:.1} s; the rule alone: {:.0} inputs/s, {:.0} decisions/s",
        log.decisions,
        log.state.registrations.len(),
        log.setup_seconds,
        log.rule_inputs_per_second,
        log.rule_decisions_per_second
    );
    Ok(log)
}

/// `runs` rebuilds of the region, from the snapshot in `store` when one is given, each
/// checked against the live state of `log`.
async fn time_rebuilds(
    js: &jetstream::Context,
    store: Option<&jetstream::object_store::ObjectStore>,
    what: &str,
    log: &Log,
    runs: usize,
) -> anyhow::Result<RebuildFigure> {
    let mut times = Vec::new();
    let mut folded = 0;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let rebuilt: Rebuilt = rebuild::rebuild(js, &region(), log.state.policy, store)
            .await
            .map_err(|halt| anyhow::anyhow!("the rebuild halted: {halt:?}"))?;
        times.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            rebuilt.state == log.state,
            "{what}: the rebuilt state differs from the live one"
        );
        anyhow::ensure!(rebuilt.fence == log.last_decision, "{what}: wrong fence");
        anyhow::ensure!(
            rebuilt.from_snapshot.is_some() == store.is_some(),
            "{what}: the snapshot was {:?}",
            rebuilt.snapshot
        );
        folded = rebuilt.folded;
        eprintln!(
            "takeover: {what}: {:.2} s ({folded} decisions folded)",
            times.last().expect("a run")
        );
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(RebuildFigure {
        what: what.into(),
        seconds: sorted[sorted.len() / 2],
        runs: times,
        folded,
    })
}

/// Every slot's capacity, as the intake events that set it.
fn capacities(options: &Options) -> Vec<(IntakeKind, Event)> {
    (0..options.slots)
        .map(|i| {
            (
                IntakeKind::Capacity,
                Event::CapacitySet(CapacitySet {
                    slot: slot(i),
                    capacity: options.capacity,
                }),
            )
        })
        .collect()
}

/// A real replica, with fsync'd writes, catching up on `options.backlog` submissions already
/// in intake: decisions per second from its start to the last decision.
async fn replica_rate(options: &Options) -> anyhow::Result<f64> {
    let nats = testkit::NatsServer::start();
    let (client, js) = crate::connect_with_streams(&nats.url()).await?;
    let mut events = capacities(options);
    let mut traffic = Traffic::new(25, options.slots);
    for _ in 0..options.backlog {
        events.push((IntakeKind::Submitted, traffic.submission()));
    }
    append_intake(&js, &client, events).await?;
    eprintln!(
        "takeover: {} submissions in intake (fsync'd); starting a replica",
        options.backlog
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let metrics = processors::metrics::Metrics::new();
    let started = Instant::now();
    let task = tokio::spawn(processors::reservation::run(
        client.clone(),
        processors::reservation::ReservationConfig {
            regions: RegionFilter::One(region()),
            policy: Policy::default(),
            snapshot_every: processors::reservation::SNAPSHOT_EVERY,
            calendar: Default::default(),
        },
        metrics.clone(),
        shutdown.clone(),
    ));
    let decided = |m: &processors::metrics::Metrics| {
        ["SlotReserved", "RegistrationWaitlisted", "SlotRejected"]
            .iter()
            .map(|t| m.decisions.with_label_values(&[t]).get())
            .sum::<u64>()
    };
    while decided(&metrics) < options.backlog {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the replica did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let total: u64 = metrics.batches.get();
    shutdown.cancel();
    task.await??;
    let rate = options.backlog as f64 / seconds;
    eprintln!(
        "takeover: a replica decided {} submissions in {seconds:.2} s ({rate:.0}/s, {total} fsync'd batches)",
        options.backlog
    );
    Ok(rate)
}

impl TakeoverReport {
    /// The report as Markdown.
    pub fn markdown(&self, command: &str) -> String {
        let mut md = format!(
            "# Takeover at {} decisions in one region\n\n`{command}` · {}\n\n",
            self.decisions,
            self.machine.summary()
        );
        md += &format!(
            "One region, {} decisions ({} registrations, {} slots), written by the rule in atomic \
             batches to a nats-server without fsync (setup: {:.0} s). Snapshot every {} \
             decisions: {:.1} MB, encoded in {:.2} s by the decider, stored in {:.2} s.\n\n",
            self.decisions,
            self.registrations,
            self.slots,
            self.setup_seconds,
            self.snapshot_every,
            self.snapshot_bytes as f64 / 1e6,
            self.snapshot_encode_seconds,
            self.snapshot_store_seconds
        );
        md += "| rebuild | decisions read | median s | runs s |\n| --- | ---: | ---: | --- |\n";
        for r in &self.rebuilds {
            md += &format!(
                "| {} | {} | {:.2} | {} |\n",
                r.what,
                r.folded,
                r.seconds,
                r.runs
                    .iter()
                    .map(|s| format!("{s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        md += &format!(
            "\nThe rule alone (one core): {:.0} inputs/s, {:.0} decisions/s.\n",
            self.rule_inputs_per_second, self.rule_decisions_per_second
        );
        if let Some(rate) = self.replica_decisions_per_second {
            md += &format!(
                "A replica catching up on {} submissions, fsync'd batches: {rate:.0} decisions/s.\n",
                self.backlog
            );
        }
        md
    }
}
