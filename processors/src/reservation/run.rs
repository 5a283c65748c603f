//! The consumer wiring of the reservation processor: one worker per region it serves, each
//! holding that region's lease, rebuilding the region's state from its own decisions, and
//! writing fenced batches.
//!
//! A replica started for one region serves that region; one started for `*` discovers the
//! regions present in the intake stream ([`streams::regions`]) and serves each as if started
//! for it alone. The lease and the resume point are the region's own, so replicas
//! started with any mix of `REG_REGION` values share the work region by region: a region is
//! decided by exactly one of the replicas that serve it, and a region-specific replica
//! stopping hands its region to a `*` one (and the other way round).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use streams::appender::{AppendError, Outgoing, publish_atomic};
use streams::consume::{self, Decoded, Halt, OrderedSpec, OrderedStep, Start, Undecodable};
use streams::events::{Envelope, Event};
use streams::model::Region;
use streams::replay::{self, Record};
use streams::subjects::{self, IntakeKind, RegionFilter};
use streams::{lease, regions};
use tokio_util::sync::CancellationToken;

use super::MAX_INPUTS_PER_BATCH;
use super::closing::{self, Closing};
use super::decide::{Input, Policy, State};
use crate::metrics::Metrics;
use streams::events::WindowSet;
use tokio::sync::watch;

/// What a reservation replica handles.
#[derive(Debug, Clone)]
pub struct ReservationConfig {
    /// The region(s) this replica decides for.
    pub regions: RegionFilter,
    /// The reservation rule's settings (the waiting list's bound).
    pub policy: Policy,
}

/// Runs the reservation processor until `shutdown` fires. Any number of replicas may run for
/// any mix of regions: for each region one holds its lease and decides, the others stand by
/// and take over when it stops or dies. Survives NATS restarts and stale writers by
/// rebuilding the region's state from the log.
pub async fn run(
    client: async_nats::Client,
    config: ReservationConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let Some(leases) = lease::open(&js, &shutdown).await else {
        return Ok(());
    };
    let worker = Worker {
        leases,
        js: js.clone(),
        client,
        holder: format!("reservation-{}", uuid::Uuid::now_v7()),
        metrics,
        policy: config.policy,
    };
    regions::serve_each(&js, config.regions, &shutdown, |region| {
        worker.clone().serve(region, shutdown.clone())
    })
    .await;
    Ok(())
}

/// What every region worker of one replica shares.
#[derive(Clone)]
struct Worker {
    js: jetstream::Context,
    client: async_nats::Client,
    leases: async_nats::jetstream::kv::Store,
    /// This replica's name in the lease bucket.
    holder: String,
    metrics: Metrics,
    policy: Policy,
}

impl Worker {
    /// Decides for `region` whenever this replica holds its lease, until `shutdown`.
    async fn serve(self, region: Region, shutdown: CancellationToken) {
        let key = subjects::reservation_lease(&region);
        let spec = OrderedSpec {
            name: format!("reservation.{region}"),
            stream: subjects::INTAKE_STREAM,
            filter: subjects::intake_filter(&RegionFilter::One(region.clone())),
            max_group: MAX_INPUTS_PER_BATCH,
            // Whatever is buffered, without waiting for more: a decision is on the latency
            // path of every citizen.
            linger: Duration::ZERO,
        };
        while let Some(lease) = lease::acquire(&self.leases, &key, &self.holder, &shutdown).await {
            self.metrics.active.inc();
            self.metrics.leases.inc();
            let (closing, watching) = watch::channel(Closing::default());
            let closer = tokio::spawn(close_waitlists(
                self.js.clone(),
                region.clone(),
                watching,
                lease.active().clone(),
            ));
            let mut step = RegionStep {
                worker: &self,
                region: &region,
                state: State::new(self.policy),
                fence: 0,
                closing: &closing,
                window: None,
            };
            consume::run_ordered(
                &self.js,
                &spec,
                &mut step,
                &self.metrics.health,
                lease.active(),
            )
            .await;
            self.metrics.active.dec();
            closer.abort();
            lease.release().await;
        }
    }
}

/// One region's decider: its state folded from the region's decisions, and the sequence of
/// the region's last decision, which the next write's fence expects.
struct RegionStep<'a> {
    worker: &'a Worker,
    region: &'a Region,
    state: State,
    fence: u64,
    /// The region's window and open waiting lists, for the closer.
    closing: &'a watch::Sender<Closing>,
    window: Option<WindowSet>,
}

/// Whether `decision` changes a waiting list: only then does the closer need a new list (it
/// costs a pass over the region's slots, so not on every batch).
fn touches_a_line(decision: &Event) -> bool {
    match decision {
        Event::RegistrationWaitlisted(_) | Event::WaitlistPromoted(_) => true,
        Event::SlotRejected(d) => d.waiting.is_some(),
        Event::RegistrationCancelled(d) => d.waiting.is_some(),
        _ => false,
    }
}

impl RegionStep<'_> {
    /// Tells the closer what is open now.
    fn show_closing(&self) {
        self.closing.send_replace(Closing {
            open: self.state.open_waitlists().cloned().collect(),
            window: self.window.clone(),
        });
    }
}

impl OrderedStep for RegionStep<'_> {
    async fn resume(&mut self) -> Result<Start, Halt> {
        let (state, fence) = recover(&self.worker.js, self.region, self.worker.policy).await?;
        tracing::info!(
            region = %self.region,
            registrations = state.registrations.len(),
            slots = state.slots.len(),
            checkpoint = state.checkpoint,
            "Reservation state rebuilt from the log."
        );
        self.state = state;
        self.fence = fence;
        self.window = last_window(&self.worker.js, self.region).await?;
        self.show_closing();
        Ok(Start::At(self.state.checkpoint + 1))
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), Halt> {
        let metrics = &self.worker.metrics;
        metrics.inputs.inc_by(group.len() as u64);
        let mut outgoing = Vec::new();
        let subject = subjects::reservation_decisions(self.region);
        let mut lines_changed = false;
        for record in group {
            if let Event::WindowSet(window) = &record.envelope.event {
                self.window = Some(window.clone());
                lines_changed = true;
            }
            let input = Input {
                seq: record.seq,
                event: record.envelope.event,
            };
            for decision in self.state.handle(&input) {
                lines_changed |= touches_a_line(&decision);
                metrics
                    .decisions
                    .with_label_values(&[decision.event_type()])
                    .inc();
                outgoing.push(Outgoing::event(
                    subject.clone(),
                    &Envelope::new(record.envelope.correlation_id.clone(), decision),
                ));
            }
        }
        let Some(first) = outgoing.first_mut() else {
            if lines_changed {
                self.show_closing(); // a window changed
            }
            return Ok(());
        };
        // One subject per region: "nobody wrote since my last decision" is one check.
        first.headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.fence.to_string().as_str(),
        );
        let timer = metrics.batch_seconds.start_timer();
        let result = publish_atomic(&self.worker.js, &self.worker.client, outgoing).await;
        timer.observe_duration();
        match result {
            Ok(seqs) => {
                metrics.batches.inc();
                self.fence = *seqs.last().expect("a batch is never empty");
                if lines_changed {
                    self.show_closing();
                }
                Ok(())
            }
            Err(AppendError::Fenced(_)) => {
                metrics.fenced.inc();
                Err(Halt::Rebuild)
            }
            // The outcome is unknown (or refused): the log is the truth, so rebuild from it.
            Err(err) => Err(Halt::Transient(anyhow::Error::new(err))),
        }
    }
}

/// Folds `region`'s decisions into a state, then the operators' capacities and the closed
/// waiting lists up to the state's checkpoint. Returns the state and the sequence of the
/// region's last decision. Stops at a record it cannot decode: a state that skipped a
/// decision could overbook.
async fn recover(
    js: &jetstream::Context,
    region: &Region,
    policy: Policy,
) -> Result<(State, u64), Halt> {
    let filter = RegionFilter::One(region.clone());
    let mut state = State::new(policy);
    let mut fence = 0;
    let mut bad: Option<Undecodable> = None;
    let mut note_bad = |stream: &str, record: &Record, reason: String| {
        bad.get_or_insert_with(|| Undecodable {
            stream: stream.to_owned(),
            seq: record.seq,
            subject: record.subject.clone(),
            reason,
        });
    };
    replay::read_to_end(
        js,
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(&filter),
        1,
        |record: Record| {
            fence = record.seq;
            match &record.envelope {
                Ok(envelope) => state.apply(&envelope.event),
                Err(err) => note_bad(subjects::DECISIONS_STREAM, &record, err.to_string()),
            }
        },
    )
    .await
    .context("Failed to read back the decisions log")?;
    let checkpoint = state.checkpoint;
    for kind in [IntakeKind::Capacity, IntakeKind::Waitlist] {
        replay::read_to_end(
            js,
            subjects::INTAKE_STREAM,
            subjects::intake_kind_filter(&filter, kind),
            1,
            |record: Record| {
                if record.seq > checkpoint {
                    return;
                }
                match &record.envelope {
                    Ok(Envelope {
                        event: Event::CapacitySet(set),
                        ..
                    }) => state.set_capacity(&set.slot, set.capacity),
                    Ok(Envelope {
                        event: Event::WaitlistClosed(closed),
                        ..
                    }) => state.close_waitlist(&closed.slot),
                    Ok(_) => {}
                    Err(err) => note_bad(subjects::INTAKE_STREAM, &record, err.to_string()),
                }
            },
        )
        .await
        .context("Failed to read back the slots' settings")?;
    }
    match bad {
        Some(why) => Err(Halt::Undecodable(why)),
        None => Ok((state, fence)),
    }
}

/// The region's current registration window: the last one an operator set.
async fn last_window(js: &jetstream::Context, region: &Region) -> Result<Option<WindowSet>, Halt> {
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let subject = subjects::intake(region, IntakeKind::Window);
    let Some(message) = streams::appender::last_message(&stream, &subject)
        .await
        .context("Failed to read the region's window")?
    else {
        return Ok(None);
    };
    match Envelope::decode(&message.payload) {
        Ok(Envelope {
            event: Event::WindowSet(window),
            ..
        }) => Ok(Some(window)),
        Ok(_) => Ok(None),
        Err(err) => Err(Halt::Undecodable(Undecodable {
            stream: subjects::INTAKE_STREAM.to_owned(),
            seq: message.sequence,
            subject,
            reason: err.to_string(),
        })),
    }
}

/// While this replica decides `region`: appends a `WaitlistClosed` for every waiting list
/// that is due to close (see [`super::closing`]). Each is appended once per slot (a message
/// id names the slot), and the rule ignores a second one anyway.
async fn close_waitlists(
    js: jetstream::Context,
    region: Region,
    mut closing: watch::Receiver<Closing>,
    stop: CancellationToken,
) {
    let mut sent = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(closing::CHECK_INTERVAL) => {}
        }
        let due = closing::due(&closing.borrow_and_update(), chrono::Utc::now());
        for closed in due {
            if sent.contains(&closed.slot) {
                continue;
            }
            let slot = closed.slot.clone();
            let id = format!(
                "waitlist-closed.{}.{}.{}",
                slot.region, slot.location, slot.date
            );
            let outgoing = Outgoing::event(
                subjects::intake(&region, IntakeKind::Waitlist),
                &Envelope::new(id.clone(), Event::WaitlistClosed(closed)),
            );
            let mut headers = outgoing.headers;
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let stored = async {
                js.publish_with_headers(outgoing.subject, headers, outgoing.payload)
                    .await?
                    .await
                    .map_err(anyhow::Error::from)
            };
            match stored.await {
                Ok(_) => {
                    tracing::info!(%slot, "A waiting list closed.");
                    sent.insert(slot);
                }
                Err(err) => {
                    tracing::warn!(%slot, error = %format!("{err:#}"), "A waiting list could not be closed yet; trying again.")
                }
            }
        }
    }
}
