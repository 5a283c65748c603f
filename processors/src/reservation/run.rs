//! The consumer wiring of the reservation processor: recover, consume, decide, write fenced.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use streams::appender::{AppendError, Outgoing, publish_atomic};
use streams::events::{Envelope, Event};
use streams::lease;
use streams::model::Region;
use streams::replay::{self, Record};
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

use super::MAX_INPUTS_PER_BATCH;
use super::decide::{Input, State};
use crate::metrics::Metrics;

/// What a reservation replica handles.
#[derive(Debug, Clone)]
pub struct ReservationConfig {
    /// The region(s) this replica decides for.
    pub regions: RegionFilter,
}

/// Why one incarnation of the loop ended.
enum Restart {
    /// Another writer extended the log: rebuild and go on.
    Fenced,
    /// NATS trouble: wait a little, rebuild and go on.
    Transient(anyhow::Error),
}

impl From<anyhow::Error> for Restart {
    fn from(err: anyhow::Error) -> Self {
        Restart::Transient(err)
    }
}

/// Runs the reservation processor until `shutdown` fires. Any number of replicas may run for
/// the same region(s): one holds the lease and decides, the others stand by and take over
/// when it stops or dies. Survives NATS restarts and stale writers by rebuilding its state
/// from the log.
pub async fn run(
    client: async_nats::Client,
    config: ReservationConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let leases = lease::bucket(&js).await?;
    let key = subjects::reservation_lease(&config.regions);
    let holder = format!("reservation-{}", uuid::Uuid::now_v7());
    while let Some(lease) = lease::acquire(&leases, &key, &holder, &shutdown).await {
        metrics.active.set(1);
        metrics.leases.inc();
        decide_while_active(&js, &client, &config, &metrics, lease.active()).await;
        metrics.active.set(0);
        lease.release().await;
    }
    Ok(())
}

/// Decides until `active` fires (lease lost or shutdown), rebuilding after fences and errors.
async fn decide_while_active(
    js: &jetstream::Context,
    client: &async_nats::Client,
    config: &ReservationConfig,
    metrics: &Metrics,
    active: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    while !active.is_cancelled() {
        match run_once(js, client, config, metrics, active).await {
            Ok(()) => break,
            Err(Restart::Fenced) => {
                metrics.fenced.inc();
                tracing::info!(
                    "Another replica wrote decisions first; rebuilding state from the log."
                );
            }
            Err(Restart::Transient(err)) => {
                metrics.restarts.inc();
                tracing::warn!(error = %format!("{err:#}"), "The reservation loop failed; rebuilding state from the log.");
                tokio::select! {
                    _ = active.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        backoff = Duration::from_millis(50);
    }
}

/// The state rebuilt from the logs plus, per region, the sequence of its last decision: the
/// value the next write's fence expects.
struct Recovered {
    state: State,
    fences: HashMap<Region, u64>,
}

async fn recover(js: &jetstream::Context, regions: &RegionFilter) -> anyhow::Result<Recovered> {
    let mut state = State::default();
    let mut fences = HashMap::new();
    let mut bad = 0u64;
    replay::read_to_end(
        js,
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(regions),
        1,
        |record: Record| match record.envelope {
            Ok(envelope) => {
                if let Some(region) = region_of(&envelope.event) {
                    fences.insert(region.clone(), record.seq);
                }
                state.apply(&envelope.event);
            }
            Err(_) => bad += 1,
        },
    )
    .await
    .context("Failed to read back the decisions log")?;
    if bad > 0 {
        tracing::error!(
            count = bad,
            "Undecodable messages in the decisions log were skipped."
        );
    }
    let checkpoint = state.checkpoint;
    replay::read_to_end(
        js,
        subjects::INTAKE_STREAM,
        subjects::intake_kind_filter(regions, IntakeKind::Capacity),
        1,
        |record: Record| {
            if record.seq <= checkpoint
                && let Ok(Envelope {
                    event: Event::CapacitySet(set),
                    ..
                }) = &record.envelope
            {
                state.set_capacity(&set.slot, set.capacity);
            }
        },
    )
    .await
    .context("Failed to read back capacities")?;
    tracing::info!(
        registrations = state.registrations.len(),
        slots = state.slots.len(),
        checkpoint,
        "Reservation state rebuilt from the log."
    );
    Ok(Recovered { state, fences })
}

fn region_of(event: &Event) -> Option<&Region> {
    match event {
        Event::SlotReserved(e) => Some(&e.slot.region),
        Event::SlotRejected(e) => Some(&e.slot.region),
        Event::SlotReleased(e) => Some(&e.slot.region),
        Event::RegistrationConfirmed(e) => Some(&e.slot.region),
        Event::RegistrationCancelled(e) => Some(&e.slot.region),
        _ => None,
    }
}

async fn run_once(
    js: &jetstream::Context,
    client: &async_nats::Client,
    config: &ReservationConfig,
    metrics: &Metrics,
    active: &CancellationToken,
) -> Result<(), Restart> {
    let Recovered {
        mut state,
        mut fences,
    } = recover(js, &config.regions).await?;
    let (mut messages, _) = replay::ordered(
        js,
        subjects::INTAKE_STREAM,
        subjects::intake_filter(&config.regions),
        state.checkpoint + 1,
    )
    .await?;
    loop {
        // Group commit: whatever is already buffered, without waiting for more (a decision is
        // on the latency path of every citizen).
        let batch = tokio::select! {
            _ = active.cancelled() => return Ok(()),
            group = replay::next_group(&mut messages, MAX_INPUTS_PER_BATCH, Duration::ZERO) => {
                group.context("Failed to read intake")?
            }
        };
        let Some(batch) = batch else {
            return Err(Restart::Transient(anyhow::anyhow!(
                "the intake consumer ended"
            )));
        };

        let mut decisions = Vec::new();
        for message in &batch {
            let record = Record::from_message(message)?;
            match record.envelope {
                Ok(envelope) => {
                    let input = Input {
                        seq: record.seq,
                        event: envelope.event,
                    };
                    decisions.extend(
                        state
                            .handle(&input)
                            .into_iter()
                            .map(|d| (envelope.correlation_id.clone(), d)),
                    );
                }
                Err(err) => {
                    metrics.undecodable.inc();
                    tracing::error!(seq = record.seq, error = %err, "An undecodable intake message was skipped.");
                }
            }
        }
        metrics.inputs.inc_by(batch.len() as u64);
        if decisions.is_empty() {
            continue;
        }
        write_decisions(js, client, &mut fences, decisions, metrics).await?;
    }
}

async fn write_decisions(
    js: &jetstream::Context,
    client: &async_nats::Client,
    fences: &mut HashMap<Region, u64>,
    decisions: Vec<(String, Event)>,
    metrics: &Metrics,
) -> Result<(), Restart> {
    let mut fenced: HashMap<Region, ()> = HashMap::new();
    let mut regions = Vec::with_capacity(decisions.len());
    let mut outgoing = Vec::with_capacity(decisions.len());
    for (correlation_id, event) in decisions {
        let region = region_of(&event)
            .expect("reservation decisions name a slot")
            .clone();
        metrics
            .decisions
            .with_label_values(&[event.event_type()])
            .inc();
        let mut message = Outgoing::event(
            subjects::reservation_decisions(&region),
            &Envelope::new(correlation_id, event),
        );
        if fenced.insert(region.clone(), ()).is_none() {
            let expected = fences.get(&region).copied().unwrap_or(0);
            message.headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        outgoing.push(message);
        regions.push(region);
    }
    let timer = metrics.batch_seconds.start_timer();
    let result = publish_atomic(js, client, outgoing).await;
    timer.observe_duration();
    match result {
        Ok(seqs) => {
            metrics.batches.inc();
            for (region, seq) in regions.into_iter().zip(seqs) {
                fences.insert(region, seq);
            }
            Ok(())
        }
        Err(AppendError::Fenced(_)) => Err(Restart::Fenced),
        // The outcome is unknown (or refused): the log is the truth, so rebuild from it.
        Err(err) => Err(Restart::Transient(anyhow::Error::new(err))),
    }
}
