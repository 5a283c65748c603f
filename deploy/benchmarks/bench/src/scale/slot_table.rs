//! The read API's availability table at national slot counts (`deploy/bench-scale
//! --slot-table`): its cost depends on the slots, not on the registrations, so a store is
//! filled with slots only (through the projections' own batch writes, as the writer would
//! apply them) and the table is loaded as a read-API replica loads it
//! ([`projections::slots::load`]): whole at a replica's start, then by the slots changed in
//! each cache period, quiet or at the peak's rate of decisions.

use std::time::{Duration, Instant};

use projections::slots::{self, Loaded};
use projections::store::{Store, StoreOptions};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use streams::events::{CapacitySet, Envelope, Event, SlotReserved};
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::subjects::{DECISIONS_STREAM, INTAKE_STREAM};

use super::fill::{CAPACITY, DAYS, REGIONS};
use crate::contention::report::Percentiles;

/// Events per batch the writer applies (the projections' own batches reach about this).
const BATCH: usize = 1000;

/// The table's figures at one slot count.
#[derive(Debug, Clone, Serialize)]
pub struct SlotTableFigures {
    /// Slots in the store (and in the table).
    pub slots: u64,
    /// The whole table read, as a replica's first load does, ms.
    pub whole: Percentiles,
    /// A load in a period when nothing changed, ms.
    pub quiet: Percentiles,
    /// Loads after a period of decisions, for each number of decisions asked for.
    pub after: Vec<AfterDecisions>,
}

/// Loads of the table each after a period's decisions.
#[derive(Debug, Clone, Serialize)]
pub struct AfterDecisions {
    /// Decisions applied between two loads (spread at random over the slots).
    pub decisions_per_period: u64,
    /// A load after that many decisions, ms.
    pub load: Percentiles,
    /// Rows those loads read (the slots the decisions touched), mean.
    pub rows_read: f64,
    /// The writer's rate applying those decisions (events/s): how many decisions a period
    /// can hold on this machine at all.
    pub writer_events_per_second: f64,
}

/// The slot `n` of `slots`, spread over the regions by population, 30 days per location.
fn slot_of(n: u64, slots: u64) -> SlotKey {
    let region = (n % REGIONS.len() as u64) as usize;
    let per_region = slots.div_ceil(REGIONS.len() as u64);
    let within = n / REGIONS.len() as u64;
    let locations = per_region.div_ceil(u64::from(DAYS)).max(1);
    let day = (within / locations) as i64;
    SlotKey {
        region: Region::parse(REGIONS[region].0).expect("a region"),
        location: Location::parse(&format!("site-{:05}", within % locations)).expect("a location"),
        date: chrono::NaiveDate::from_ymd_opt(2027, 3, 1).expect("a date")
            + chrono::Duration::days(day),
    }
}

/// Applies `events` to `stream` in the writer's batches, from the checkpoint `seq` on;
/// returns the new checkpoint.
async fn apply(
    store: &Store,
    stream: &str,
    events: Vec<Event>,
    mut seq: u64,
) -> anyhow::Result<u64> {
    for chunk in events.chunks(BATCH) {
        let batch: Vec<(u64, Envelope)> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| (seq + 1 + i as u64, Envelope::new("bench-scale", e.clone())))
            .collect();
        let last = seq + batch.len() as u64;
        store
            .apply(stream, &batch, seq, last)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        seq = last;
    }
    Ok(seq)
}

/// A reservation in `slot`, as the reservation processor decides it.
fn reserved(slot: SlotKey, n: u64) -> Event {
    Event::SlotReserved(SlotReserved {
        registration_id: RegistrationId::generate(&slot.region),
        citizen_key: format!("{n:032x}"),
        slot,
        intake_seq: n,
        reserved: (n % u64::from(CAPACITY)) as u32 + 1,
        capacity: CAPACITY,
    })
}

/// One slot count: a fresh embedded store (SurrealKV on disk) filled with `slots` slots,
/// each with a capacity and one reservation, then the loads timed.
pub async fn measure(
    slots: u64,
    decisions_per_period: &[u64],
    periods: usize,
) -> anyhow::Result<SlotTableFigures> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&StoreOptions::new(format!(
        "surrealkv://{}",
        dir.path().join("projections").display()
    )))
    .await?;
    let calendar = streams::calendar::Calendar::default();
    let started = Instant::now();
    let capacities = (0..slots)
        .map(|n| {
            Event::CapacitySet(CapacitySet {
                slot: slot_of(n, slots),
                capacity: CAPACITY,
            })
        })
        .collect();
    apply(&store, INTAKE_STREAM, capacities, 0).await?;
    let first = (0..slots).map(|n| reserved(slot_of(n, slots), n)).collect();
    let mut decisions = apply(&store, DECISIONS_STREAM, first, 0).await?;
    eprintln!(
        "scale: {slots} slots written in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let mut whole = Vec::new();
    let mut loaded: Option<Loaded> = None;
    for _ in 0..5 {
        let started = Instant::now();
        let (table, _) = slots::load(&store, None, &calendar, chrono::Utc::now()).await?;
        whole.push(started.elapsed());
        anyhow::ensure!(
            table.table.rows().len() as u64 == slots,
            "the table lists {} of {slots} slots",
            table.table.rows().len()
        );
        loaded = Some(table);
    }
    let mut loaded = loaded.expect("loaded");

    let mut quiet = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let (next, read) =
            slots::load(&store, Some(&loaded), &calendar, chrono::Utc::now()).await?;
        quiet.push(started.elapsed());
        anyhow::ensure!(read == 0, "a quiet load read {read} rows");
        loaded = next;
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut after = Vec::new();
    for &per_period in decisions_per_period {
        let (mut times, mut rows_read, mut writing) = (Vec::new(), 0usize, Duration::ZERO);
        for period in 0..periods {
            let events = (0..per_period)
                .map(|i| reserved(slot_of(rng.random_range(0..slots), slots), slots + i))
                .collect();
            let started = Instant::now();
            decisions = apply(&store, DECISIONS_STREAM, events, decisions).await?;
            writing += started.elapsed();
            let started = Instant::now();
            let (next, read) =
                slots::load(&store, Some(&loaded), &calendar, chrono::Utc::now()).await?;
            times.push(started.elapsed());
            rows_read += read;
            // The table kept by changes is the table read whole (checked once: a whole read
            // at national size takes seconds).
            if period == 0 {
                let (fresh, _) = slots::load(&store, None, &calendar, chrono::Utc::now()).await?;
                anyhow::ensure!(
                    fresh.table.rows() == next.table.rows(),
                    "the table loaded by changes differs from a whole read"
                );
            }
            loaded = next;
        }
        after.push(AfterDecisions {
            decisions_per_period: per_period,
            load: Percentiles::of(times),
            rows_read: rows_read as f64 / periods.max(1) as f64,
            writer_events_per_second: (per_period * periods as u64) as f64
                / writing.as_secs_f64().max(1e-9),
        });
    }
    let figures = SlotTableFigures {
        slots,
        whole: Percentiles::of(whole),
        quiet: Percentiles::of(quiet),
        after,
    };
    eprintln!("scale: {figures:?}");
    Ok(figures)
}

/// The slot-table report: each slot count's figures and the machine.
#[derive(Debug, Clone, Serialize)]
pub struct SlotTableReport {
    /// Where it ran.
    pub machine: crate::contention::report::Machine,
    /// One entry per slot count, smallest first.
    pub counts: Vec<SlotTableFigures>,
}

impl SlotTableReport {
    /// The report in Markdown, `command` being what reproduces it.
    pub fn markdown(&self, command: &str) -> String {
        let ms = |p: &Percentiles| format!("{:.1} · {:.1}", p.p50, p.p99);
        let mut md = crate::heading(
            "The read API's availability table at national slot counts",
            &self.machine,
            command,
        );
        md += "\n\nThe table's cost depends on the slots, not on the registrations: each count \
               starts from a fresh embedded SurrealDB (SurrealKV on disk) holding only slots (a \
               capacity and one reservation each, written by the projections' own batches), \
               spread over the sixteen regions, 30 days per location. 190,000 slots is 19 \
               million registrations at 100 places per slot. Loads are the read API's own \
               (`projections::slots::load`), in process, no HTTP: a replica's first load reads \
               the whole table; each later one reads the slots changed since the one before \
               and merges them in (the bound: 250 ms, a quarter of the one-second period). \
               Figures in ms, p50 · p99.\n\n";
        md += "| slots | whole table (a replica's first load) | a quiet period | decisions in the period | then a load | rows it read | the writer's rate, events/s |\n";
        md += "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for f in &self.counts {
            for (i, a) in f.after.iter().enumerate() {
                let (slots, whole, quiet) = if i == 0 {
                    (f.slots.to_string(), ms(&f.whole), ms(&f.quiet))
                } else {
                    Default::default()
                };
                md += &format!(
                    "| {slots} | {whole} | {quiet} | {} | {} | {:.0} | {:.0} |\n",
                    a.decisions_per_period,
                    ms(&a.load),
                    a.rows_read,
                    a.writer_events_per_second,
                );
            }
        }
        md
    }
}
