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
use streams::subjects::{self, IntakeKind, RegionFilter};
use streams::{lease, regions};
use tokio_util::sync::CancellationToken;

use super::MAX_INPUTS_PER_BATCH;
use super::closing::{self, Closing};
use super::decide::{Input, Policy, State};
use super::rebuild::{self, Pending};
use crate::metrics::{Metrics, processor};
use streams::events::WindowSet;
use tokio::sync::watch;

/// What a reservation replica handles.
#[derive(Debug, Clone)]
pub struct ReservationConfig {
    /// The region(s) this replica decides for.
    pub regions: RegionFilter,
    /// The reservation rule's settings (the waiting list's bound).
    pub policy: Policy,
    /// Write a snapshot of a region's state after this many decisions since the last one
    /// (0: never). A takeover then folds at most about this many decisions after loading it.
    pub snapshot_every: u64,
}

/// The default of [`ReservationConfig::snapshot_every`].
pub const SNAPSHOT_EVERY: u64 = 200_000;

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
    let snapshots = if config.snapshot_every == 0 {
        None
    } else {
        match js.get_object_store(subjects::SNAPSHOTS_BUCKET).await {
            Ok(store) => Some(store),
            Err(err) => {
                tracing::warn!(error = %err, "The snapshots bucket cannot be opened; every takeover folds the whole decision log.");
                None
            }
        }
    };
    let worker = Worker {
        leases,
        snapshots,
        snapshot_every: config.snapshot_every,
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
    /// Where snapshots of the regions' states are (`None`: not used).
    snapshots: Option<async_nats::jetstream::object_store::ObjectStore>,
    /// Decisions between two snapshots of a region.
    snapshot_every: u64,
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
            self.metrics
                .flow
                .start(processor::RESERVATION, region.as_str());
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
                since_snapshot: 0,
                snapshotting: None,
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
            // A standby is behind on nothing: the active replica reports the region's lag.
            self.metrics
                .flow
                .pending
                .with_label_values(&[processor::RESERVATION, region.as_str()])
                .set(0);
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
    /// Decisions written (or folded while rebuilding) since the state last had a snapshot.
    since_snapshot: u64,
    /// The snapshot being stored, if one is.
    snapshotting: Option<tokio::task::JoinHandle<()>>,
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
    /// Stores a snapshot of the state if enough decisions were taken since the last one and
    /// none is being stored. Call only when the state is exactly the fold of the log up to
    /// `self.fence` (see [`super::snapshot`]).
    fn maybe_snapshot(&mut self) {
        let worker = self.worker;
        let Some(store) = &worker.snapshots else {
            return;
        };
        if self.since_snapshot < worker.snapshot_every
            || self.fence == 0
            || self.snapshotting.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.since_snapshot = 0;
        let timer = worker.metrics.snapshot_encode_seconds.start_timer();
        let pending = Pending::of(self.region, self.fence, &self.state);
        timer.observe_duration();
        let (js, store, metrics, region) = (
            worker.js.clone(),
            store.clone(),
            worker.metrics.clone(),
            self.region.clone(),
        );
        let decision_seq = self.fence;
        self.snapshotting = Some(tokio::spawn(async move {
            match rebuild::write(&js, &store, pending).await {
                Ok(bytes) => {
                    metrics.snapshots.inc();
                    tracing::info!(%region, decision_seq, bytes, "Snapshot of the region's state stored.");
                }
                Err(err) => {
                    tracing::warn!(%region, decision_seq, error = %format!("{err:#}"), "A snapshot could not be stored; the next one will be tried later.");
                }
            }
        }));
    }

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
        let metrics = &self.worker.metrics;
        let timer = metrics.rebuild_seconds.start_timer();
        let rebuilt = rebuild::rebuild(
            &self.worker.js,
            self.region,
            self.worker.policy,
            self.worker.snapshots.as_ref(),
        )
        .await?;
        timer.observe_duration();
        if let Some(outcome) = rebuilt.snapshot {
            metrics.snapshot_loads.with_label_values(&[outcome]).inc();
        }
        metrics
            .rebuild_folded
            .with_label_values(&[self.region.as_str()])
            .set(rebuilt.folded as i64);
        self.state = rebuilt.state;
        self.fence = rebuilt.fence;
        // A long fold is worth a snapshot at once, so the next takeover is short.
        self.since_snapshot = rebuilt.folded;
        self.maybe_snapshot();
        self.window = last_window(&self.worker.js, self.region).await?;
        self.show_closing();
        Ok(Start::At(self.state.checkpoint + 1))
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), Halt> {
        let metrics = &self.worker.metrics;
        let read = group.len() as u64;
        metrics.inputs.inc_by(read);
        if let Some(last) = group.last() {
            metrics
                .flow
                .read(processor::RESERVATION, self.region.as_str(), last);
        }
        let mut outgoing = Vec::new();
        let subject = subjects::reservation_decisions(self.region);
        let mut lines_changed = false;
        let last_seq = group.last().map_or(0, |r| r.seq);
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
            metrics
                .flow
                .handled(processor::RESERVATION, self.region.as_str(), read);
            return Ok(());
        };
        // One subject per region: "nobody wrote since my last decision" is one check.
        first.headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.fence.to_string().as_str(),
        );
        let timer = metrics.batch_seconds.start_timer();
        let written = outgoing.len() as u64;
        let result = publish_atomic(&self.worker.js, &self.worker.client, outgoing).await;
        timer.observe_duration();
        match result {
            Ok(seqs) => {
                metrics.batches.inc();
                self.fence = *seqs.last().expect("a batch is never empty");
                if lines_changed {
                    self.show_closing();
                }
                metrics
                    .flow
                    .handled(processor::RESERVATION, self.region.as_str(), read);
                self.since_snapshot += written;
                // The state is the fold of the log up to the fence only when the last event
                // read was decided: otherwise it may hold a capacity set after the state's
                // checkpoint, which a fold would not (the next snapshot will do).
                if self.state.checkpoint == last_seq {
                    self.maybe_snapshot();
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
    match Envelope::decode_from(&message.subject, &message.payload) {
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
