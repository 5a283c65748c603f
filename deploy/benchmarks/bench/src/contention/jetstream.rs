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
use super::{DEADLINE, Measured, Options};
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
    let (mut decisions, _) = streams::replay::ordered(
        &async_nats::jetstream::new(client.clone()),
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(&RegionFilter::All),
        1,
    )
    .await
    .context("Failed to read the decisions stream")?;

    let ids: Vec<RegistrationId> = workload
        .contenders
        .iter()
        .map(|&slot| RegistrationId::generate(&workload.slots[slot].0.region))
        .collect();
    let index: HashMap<RegistrationId, usize> = ids
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    let handed: Rc<RefCell<Vec<Option<Instant>>>> = Rc::new(RefCell::new(vec![None; ids.len()]));
    let seqs: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(vec![0; ids.len()]));

    let start = Instant::now();
    let submitter = {
        let (handed, seqs, ids) = (handed.clone(), seqs.clone(), ids.clone());
        let contenders = workload.contenders.clone();
        let slots = workload.slots.clone();
        let room = Arc::new(Semaphore::new(options.concurrency.max(1)));
        ntex::rt::spawn(async move {
            let mut tasks = Vec::with_capacity(ids.len());
            for (i, id) in ids.into_iter().enumerate() {
                let permit = room.clone().acquire_owned().await.expect("open");
                let slot = slots[contenders[i]].0.clone();
                let (appender, handed, seqs) = (appender.clone(), handed.clone(), seqs.clone());
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
                    handed.borrow_mut()[i] = Some(Instant::now());
                    let seq = appender
                        .append(event_message(
                            IntakeKind::Submitted,
                            submitted,
                            &slot.region,
                        ))
                        .await;
                    drop(permit);
                    seqs.borrow_mut()[i] = seq.unwrap_or(0);
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    };

    let mut latencies = Vec::with_capacity(ids.len());
    let mut winners: Vec<Vec<usize>> = vec![Vec::new(); workload.slots.len()];
    let mut decided = 0usize;
    let mut last = start;
    while decided < ids.len() {
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
        if let Some(t0) = handed.borrow()[i] {
            latencies.push(last - t0);
        }
        if reserved {
            winners[workload.contenders[i]].push(i);
        }
        decided += 1;
    }
    let seconds = (last - start).as_secs_f64();
    submitter
        .await
        .map_err(|_| anyhow::anyhow!("the submitter panicked"))?;

    // Correctness: no slot above capacity; the winners are the earliest accepted.
    let seqs = seqs.take();
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
    let metrics = services::scrape(&http, &processor.base).await;
    processor.kill();
    Ok(Measured {
        design: "jetstream",
        workload: workload.name,
        contenders: ids.len() as u32,
        capacity: workload.capacity(),
        seconds,
        decisions_per_second: ids.len() as f64 / seconds,
        latency_ms: Percentiles::of(latencies),
        aborted: metrics
            .get("reservation_fenced_total")
            .copied()
            .unwrap_or(0),
        durable_writes: metrics
            .get("reservation_batches_total")
            .copied()
            .unwrap_or(0),
        reserved,
        overbooked,
        out_of_order_winners: out_of_order,
    })
}
