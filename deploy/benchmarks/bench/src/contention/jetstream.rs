//! This project's design under contention: every contender is a `RegistrationSubmitted`
//! appended through the edge's group-committing [`Appender`] (at most `concurrency` at once),
//! and the reservation processor, a child process, decides them. The latency of a contender
//! runs from the moment it is handed to the appender to the moment its decision, stored in
//! the decisions stream, reaches an ordered consumer of that stream.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use streams::appender::{Appender, AppenderOptions, Outgoing};
use streams::events::{CapacitySet, Envelope, Event, RegistrationSubmitted, Sealed};
use streams::model::RegistrationId;
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio::sync::Semaphore;

use super::report::Percentiles;
use super::workload::Workload;
use super::{DEADLINE, Grants, Measured, Options};
use e2e::chaos::services;

fn event_message(kind: IntakeKind, event: Event, region: &streams::model::Region) -> Outgoing {
    Outgoing::event(
        subjects::intake(region, kind),
        &Envelope::new("contention", event),
    )
}

/// Runs `workload` on a fresh nats-server and a fresh reservation processor.
pub async fn measure(
    workload: &Workload,
    options: &Options,
    log_dir: &Path,
) -> anyhow::Result<Measured> {
    let nats = testkit::NatsServer::start();
    let client = async_nats::connect(nats.url())
        .await
        .context("Failed to connect to nats-server")?;
    let appender = open_slots(&client, workload, options).await?;
    let http = ntex::client::Client::new().await;
    let mut processor = crate::started(
        &nats.url(),
        log_dir,
        &format!("reservation-{}", workload.name),
        "processors",
    )
    .await?;

    // Decisions, once stored: read from the stream with an ordered consumer. (A core
    // subscription would also see the staged messages of an atomic batch before its commit,
    // and those of a batch the fence refuses: not yet decisions.)
    let (decisions, _) = streams::replay::ordered(
        &async_nats::jetstream::new(client.clone()),
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(&RegionFilter::All),
        1,
    )
    .await
    .context("Failed to read the decisions stream")?;

    let contenders = Contenders::new(workload);
    let start = Instant::now();
    let submitter = ntex::rt::spawn(submit_all(
        appender,
        contenders.clone(),
        workload.clone(),
        options.concurrency,
    ));
    let observed = observe(decisions, &contenders, workload, start).await?;
    let seconds = (observed.last - start).as_secs_f64();
    submitter
        .await
        .map_err(|_| anyhow::anyhow!("the submitter panicked"))?;

    let grants = check_grants(workload, &observed.winners, &contenders.seqs.take());
    let metrics = services::scrape(&http, &processor.base).await;
    processor.kill();
    let count = contenders.ids.len();
    Ok(Measured {
        design: "jetstream",
        workload: workload.name,
        contenders: count as u32,
        capacity: workload.capacity(),
        seconds,
        decisions_per_second: count as f64 / seconds,
        latency_ms: Percentiles::of(observed.latencies),
        aborted: metrics
            .get("reservation_fenced_total")
            .copied()
            .unwrap_or(0),
        durable_writes: metrics
            .get("reservation_batches_total")
            .copied()
            .unwrap_or(0),
        reserved: grants.reserved,
        overbooked: grants.overbooked,
        out_of_order_winners: grants.out_of_order_winners,
    })
}

/// Creates the streams and sets every slot's capacity through a fresh appender, returned for
/// the submissions.
async fn open_slots(
    client: &async_nats::Client,
    workload: &Workload,
    options: &Options,
) -> anyhow::Result<Appender> {
    streams::config::ensure_streams(
        &async_nats::jetstream::new(client.clone()),
        streams::config::Replication(1),
    )
    .await?;
    let appender = Appender::start(
        client.clone(),
        streams::subjects::INTAKE_STREAM,
        AppenderOptions {
            max_in_flight: options.append_in_flight,
            ..AppenderOptions::default()
        },
    );
    for (slot, capacity) in &workload.slots {
        let set = Event::CapacitySet(CapacitySet {
            slot: slot.clone(),
            capacity: *capacity,
        });
        appender
            .append(event_message(IntakeKind::Capacity, set, &slot.region))
            .await
            .context("Failed to set a capacity")?;
    }
    Ok(appender)
}

/// The contenders' registration ids, in arrival order, and what the submitter notes of each:
/// when it was handed to the appender and the intake sequence it got.
#[derive(Clone)]
struct Contenders {
    ids: Rc<Vec<RegistrationId>>,
    handed: Rc<RefCell<Vec<Option<Instant>>>>,
    seqs: Rc<RefCell<Vec<u64>>>,
}

impl Contenders {
    fn new(workload: &Workload) -> Self {
        let ids: Vec<RegistrationId> = workload
            .contenders
            .iter()
            .map(|&slot| RegistrationId::generate(&workload.slots[slot].0.region))
            .collect();
        let n = ids.len();
        Contenders {
            ids: Rc::new(ids),
            handed: Rc::new(RefCell::new(vec![None; n])),
            seqs: Rc::new(RefCell::new(vec![0; n])),
        }
    }
}

/// Appends every contender's submission in arrival order, at most `concurrency` at once.
async fn submit_all(
    appender: Appender,
    contenders: Contenders,
    workload: Workload,
    concurrency: usize,
) {
    let room = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(contenders.ids.len());
    for (i, id) in contenders.ids.iter().cloned().enumerate() {
        let permit = room.clone().acquire_owned().await.expect("open");
        let slot = workload.slots[workload.contenders[i]].0.clone();
        let (appender, contenders) = (appender.clone(), contenders.clone());
        tasks.push(ntex::rt::spawn(async move {
            let submitted = Event::RegistrationSubmitted(RegistrationSubmitted {
                citizen_key: id.to_string(),
                registration_id: id,
                slot: slot.clone(),
                request_hash: String::new(),
                language: "en".into(),
                personal: Sealed {
                    key_id: "bench".into(),
                    nonce: String::new(),
                    ciphertext: String::new(),
                },
            });
            contenders.handed.borrow_mut()[i] = Some(Instant::now());
            let seq = appender
                .append(event_message(
                    IntakeKind::Submitted,
                    submitted,
                    &slot.region,
                ))
                .await;
            drop(permit);
            contenders.seqs.borrow_mut()[i] = seq.unwrap_or(0);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// What the decisions stream showed of the contenders.
struct Observed {
    /// Handed to the appender → decision stored, per decided contender.
    latencies: Vec<std::time::Duration>,
    /// Per slot (by index), the contenders (by index) it was reserved for.
    winners: Vec<Vec<usize>>,
    /// When the last decision arrived.
    last: Instant,
}

/// Reads `decisions` until every contender has its first decision (reserved or rejected).
async fn observe(
    mut decisions: async_nats::jetstream::consumer::pull::Ordered,
    contenders: &Contenders,
    workload: &Workload,
    start: Instant,
) -> anyhow::Result<Observed> {
    let index: HashMap<&RegistrationId, usize> = contenders
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let mut latencies = Vec::with_capacity(contenders.ids.len());
    let mut winners: Vec<Vec<usize>> = vec![Vec::new(); workload.slots.len()];
    let mut decided = 0usize;
    let mut last = start;
    while decided < contenders.ids.len() {
        let message = tokio::time::timeout(DEADLINE, decisions.next())
            .await
            .context("No decision for too long: the processor is stuck")?
            .context("The decisions stream ended")?
            .context("Failed to read a decision")?;
        let Ok(envelope) = Envelope::decode(&message.payload) else {
            continue;
        };
        let (id, reserved) = match &envelope.event {
            Event::SlotReserved(e) => (&e.registration_id, true),
            Event::SlotRejected(e) => (&e.registration_id, false),
            _ => continue,
        };
        let Some(&i) = index.get(id) else { continue };
        last = Instant::now();
        if let Some(t0) = contenders.handed.borrow()[i] {
            latencies.push(last - t0);
        }
        if reserved {
            winners[workload.contenders[i]].push(i);
        }
        decided += 1;
    }
    Ok(Observed {
        latencies,
        winners,
        last,
    })
}

/// Correctness: no slot above capacity; the winners are the earliest accepted (by their
/// intake sequence, `seqs`).
fn check_grants(workload: &Workload, winners: &[Vec<usize>], seqs: &[u64]) -> Grants {
    let (mut overbooked, mut out_of_order, mut reserved) = (0u64, 0u64, 0u64);
    for (slot, (_, capacity)) in workload.slots.iter().enumerate() {
        let won = &winners[slot];
        reserved += won.len() as u64;
        overbooked += (won.len() as u64).saturating_sub(u64::from(*capacity));
        let mut entrants: Vec<u64> = workload
            .contenders
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == slot)
            .map(|(i, _)| seqs[i])
            .collect();
        entrants.sort_unstable();
        let cutoff = entrants
            .get(won.len().saturating_sub(1))
            .copied()
            .unwrap_or(0);
        out_of_order += won.iter().filter(|&&i| seqs[i] > cutoff).count() as u64;
    }
    Grants {
        reserved,
        overbooked,
        out_of_order_winners: out_of_order,
    }
}
