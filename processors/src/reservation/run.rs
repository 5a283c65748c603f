//! The consumer wiring of the reservation processor: one worker per region it serves, each
//! holding that region's lease, rebuilding the region's state from its own decisions, and
//! writing fenced batches.
//!
//! A replica started for one region serves that region; one started for `*` discovers the
//! regions operators configured ([`streams::regions`]) and serves each as if started
//! for it alone. The lease and the resume point are the region's own, so replicas
//! started with any mix of `REG_REGION` values share the work region by region: a region is
//! decided by exactly one of the replicas that serve it, and a region-specific replica
//! stopping hands its region to a `*` one (and the other way round).

use std::ops::Range;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use streams::appender::{AppendError, MAX_ATOMIC_BATCH, Outgoing, publish_atomic};
use streams::calendar::Calendar;
use streams::consume::{self, Decoded, Halt, OrderedSpec, OrderedStep, Start, Undecodable};
use streams::events::{Envelope, Event};

use streams::model::Region;
use streams::subjects::{self, IntakeKind, RegionFilter};
use streams::{lease, regions};
use tokio_util::sync::CancellationToken;

use super::MAX_INPUTS_PER_BATCH;
use super::closing::{self, Closing};
use super::decide::{Input, Policy, State};
use super::rebuild;
use super::reviews::Reviews;
use super::shadow::{self, Shadow};
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
    /// Each region's time zone: a waiting list closes when its slot's day is over there.
    pub calendar: Calendar,
    /// Write a snapshot of a region's state after this many decisions since the last one
    /// (0: never). A takeover then folds at most about this many decisions after loading it.
    pub snapshot_every: u64,
}

/// How long a region's group of inputs waits after its first one for more (see
/// [`Worker::serve`]): at most 50 decision batches a second per region.
pub const GROUP_LINGER: Duration = Duration::from_millis(20);

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
    let Some(reviews) = Reviews::open(&js, &shutdown).await else {
        return Ok(());
    };
    let worker = Worker {
        leases,
        reviews,
        snapshots,
        snapshot_every: config.snapshot_every,
        js: js.clone(),
        client,
        holder: format!("reservation-{}", uuid::Uuid::now_v7()),
        metrics,
        policy: config.policy,
        calendar: config.calendar,
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
    /// The registrations in manual review, kept for the edge.
    reviews: Reviews,
    /// Where snapshots of the regions' states are (`None`: not used).
    snapshots: Option<async_nats::jetstream::object_store::ObjectStore>,
    /// Decisions between two snapshots of a region.
    snapshot_every: u64,
    /// This replica's name in the lease bucket.
    holder: String,
    metrics: Metrics,
    policy: Policy,
    calendar: Calendar,
}

impl Worker {
    /// Decides for `region` whenever this replica holds its lease, until `shutdown`.
    async fn serve(self, region: Region, shutdown: CancellationToken) {
        let key = subjects::reservation_lease(&region);
        let spec = OrderedSpec {
            name: subjects::reservation_reader(&region),
            stream: subjects::INTAKE_STREAM,
            filter: subjects::intake_filter(&RegionFilter::One(region.clone())),
            max_group: MAX_INPUTS_PER_BATCH,
            // A group waits up to this long after its first input for more: each group's
            // decisions are an atomic batch, whose staging store (a directory on a single
            // node) costs the server about as much as hundreds of decisions, so at a few
            // hundred registrations a second fuller groups save most of the server's work.
            // A decision is on every citizen's path, so the wait stays small beside the
            // verification that follows it.
            linger: GROUP_LINGER,
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
                self.calendar.clone(),
                lease.active().clone(),
            ));
            let shadow = self.snapshots.as_ref().map(|store| {
                Shadow::start(
                    region.clone(),
                    shadow::Target {
                        js: self.js.clone(),
                        store: store.clone(),
                        every: self.snapshot_every,
                        metrics: self.metrics.clone(),
                    },
                )
            });
            let mut step = RegionStep {
                worker: &self,
                region: &region,
                state: State::new(self.policy),
                fence: 0,
                closing: &closing,
                window: None,
                shadow,
                reviews_stale: false,
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
    /// The copy of the state that takes the snapshots (`None`: snapshots are off).
    shadow: Option<Shadow>,
    /// The reviews bucket missed a change: rewrite the region's keys from the state.
    reviews_stale: bool,
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
    /// Rewrites the region's keys in the reviews bucket from the state; on failure, tries
    /// again after the next batch (the bucket is a view for the edge, never a reason to stop
    /// deciding).
    async fn reconcile_reviews(&mut self) {
        let result = self
            .worker
            .reviews
            .reconcile(self.region, self.state.in_review_ids())
            .await;
        self.reviews_stale = result.is_err();
        if let Err(err) = result {
            tracing::warn!(region = %self.region, error = %format!("{err:#}"), "The reviews bucket could not be rewritten; trying again after the next batch.");
        }
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
        if let Some(shadow) = &self.shadow {
            // A long fold is worth a snapshot at once, so the next takeover is short.
            shadow.reset(&self.state, self.fence, rebuilt.folded);
        }
        self.window = last_window(&self.worker.js, self.region).await?;
        self.show_closing();
        self.reconcile_reviews().await;
        // A step cut short between two of its batches is finished by deciding its intake
        // message, the checkpoint, again; every other step was written whole.
        let checkpoint = self.state.checkpoint;
        if checkpoint > 0
            && decide_again(&self.worker.js, checkpoint, self.state.unfinished_step()).await?
        {
            tracing::info!(region = %self.region, checkpoint, "The last step may have been cut short between two of its batches; deciding its intake message again.");
            Ok(Start::At(checkpoint))
        } else {
            Ok(Start::At(checkpoint + 1))
        }
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
        // Where each input's decisions end in `outgoing`: a batch is cut between two steps.
        let mut step_ends = Vec::new();
        let subject = subjects::reservation_decisions(self.region);
        let mut lines_changed = false;
        // Registrations entering (true) or leaving (false) manual review in this group.
        let mut reviews = Vec::new();
        // What the shadow takes over once the group is written.
        let mut inputs = Vec::with_capacity(if self.shadow.is_some() {
            group.len()
        } else {
            0
        });
        let mut records = group.into_iter().peekable();
        while let Some(record) = records.next() {
            let record_seq = record.seq;
            if let Event::WindowSet(window) = &record.envelope.event {
                self.window = Some(window.clone());
                lines_changed = true;
            }
            let input = Input {
                seq: record.seq,
                event: record.envelope.event,
            };
            let leaving = input
                .event
                .registration_id()
                .filter(|id| self.state.in_review(id))
                .cloned();
            for decision in self.state.handle(&input) {
                lines_changed |= touches_a_line(&decision);
                if let Event::ReviewRequired(r) = &decision {
                    reviews.push((r.registration_id.clone(), true));
                }
                metrics
                    .decisions
                    .with_label_values(&[decision.event_type()])
                    .inc();
                outgoing.push(Outgoing::event(
                    subject.clone(),
                    &Envelope::new(record.envelope.correlation_id.clone(), decision),
                ));
            }
            // The records of one message (a pack) are one step: a batch is cut between two
            // messages' decisions whenever it can be.
            let message_ends = records.peek().is_none_or(|next| next.seq != record_seq);
            if message_ends && step_ends.last() != Some(&outgoing.len()) && !outgoing.is_empty() {
                step_ends.push(outgoing.len());
            }
            if let Some(id) = leaving.filter(|id| !self.state.in_review(id)) {
                reviews.push((id, false));
            }
            if self.shadow.is_some() {
                inputs.push(input);
            }
        }
        if outgoing.is_empty() {
            if lines_changed {
                self.show_closing(); // a window changed
            }
            if let Some(shadow) = &self.shadow {
                shadow.handled(inputs, self.fence, 0);
            }
            metrics
                .flow
                .handled(processor::RESERVATION, self.region.as_str(), read);
            return Ok(());
        }
        let written = outgoing.len() as u64;
        let mut outgoing = outgoing.into_iter();
        for batch in batches(&step_ends, MAX_ATOMIC_BATCH) {
            let mut batch: Vec<Outgoing> = outgoing.by_ref().take(batch.len()).collect();
            // One subject per region: "nobody wrote since my last decision" is one check,
            // and each batch of a group expects the one before it.
            batch[0].headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                self.fence.to_string().as_str(),
            );
            let timer = metrics.batch_seconds.start_timer();
            let result = publish_atomic(&self.worker.js, &self.worker.client, batch).await;
            timer.observe_duration();
            match result {
                Ok(seqs) => {
                    metrics.batches.inc();
                    self.fence = *seqs.last().expect("a batch is never empty");
                }
                Err(AppendError::Fenced(_)) => {
                    metrics.fenced.inc();
                    return Err(Halt::Rebuild);
                }
                // The outcome is unknown (or refused): the log is the truth, so rebuild from
                // it (a step cut short is finished then: see `resume`).
                Err(err) => return Err(Halt::Transient(anyhow::Error::new(err))),
            }
        }
        if self.reviews_stale {
            self.reconcile_reviews().await;
        } else if let Err(err) = self.worker.reviews.record(&reviews).await {
            tracing::warn!(region = %self.region, error = %format!("{err:#}"), "The reviews bucket could not be updated; it is rewritten after the next batch.");
            self.reviews_stale = true;
        }
        if lines_changed {
            self.show_closing();
        }
        metrics
            .flow
            .handled(processor::RESERVATION, self.region.as_str(), read);
        if let Some(shadow) = &self.shadow {
            shadow.handled(inputs, self.fence, written);
        }
        Ok(())
    }
}

/// Cuts a group's decisions into atomic batches of at most `max` messages. `step_ends` holds
/// where each input's decisions end (increasing). A batch ends between two inputs' decisions
/// whenever it can, so a crash between two batches leaves whole steps behind; only a step
/// larger than a batch on its own (a capacity raised over a long line, a long line closed)
/// is cut inside, which [`State::unfinished_step`] recognises after a crash.
fn batches(step_ends: &[usize], max: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut cut) = (0, 0);
    for &end in step_ends {
        if end - start > max {
            if cut > start {
                out.push(start..cut);
                start = cut;
            }
            while end - start > max {
                out.push(start..start + max);
                start += max;
            }
        }
        cut = end;
    }
    if cut > start {
        out.push(start..cut);
    }
    out
}

/// Whether the step of the intake message at `seq`, the checkpoint, must be decided again on
/// resuming: it may have been cut between two batches, and deciding it again decides nothing
/// twice. Two kinds qualify:
/// - a capacity or a closed waiting list whose step can be larger than a batch, when the state
///   looks cut short (`looks_cut`: [`super::decide::State::unfinished_step`]);
/// - a pack of verdicts ([`streams::pack`]): its records share one sequence, so a crash
///   between the batches of one group can leave some of them decided and others not, and
///   the state cannot tell. A verdict decides only a registration awaiting one, so the
///   decided ones decide nothing the second time.
///
/// Any other event is never read twice (a recovery request, say, would send a second link).
async fn decide_again(js: &jetstream::Context, seq: u64, looks_cut: bool) -> Result<bool, Halt> {
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let message = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("Failed to read intake record {seq}"))?;
    let events: Vec<Event> = Envelope::decode_all_from(&message.subject, &message.payload)
        .map(|all| all.into_iter().map(|e| e.event).collect())
        .unwrap_or_default();
    if streams::pack::is_pack(&message.payload) {
        return Ok(events.iter().all(|e| {
            matches!(
                e,
                Event::VerificationPassed(_)
                    | Event::VerificationFailed(_)
                    | Event::VerificationInconclusive(_)
            )
        }));
    }
    if !looks_cut {
        return Ok(false);
    }
    let splits = matches!(
        events.as_slice(),
        [Event::CapacitySet(_) | Event::WaitlistClosed(_)]
    );
    if !splits {
        tracing::warn!(
            seq,
            "The state looks cut short, but its checkpoint's event cannot be: resuming after it."
        );
    }
    Ok(splits)
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
    calendar: Calendar,
    stop: CancellationToken,
) {
    // Each closing once: a closing the rule ignored (judged on a window an operator had
    // extended) differs from the next one for the same slot by its reason or window.
    let mut sent = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(closing::CHECK_INTERVAL) => {}
        }
        let due = closing::due(&closing.borrow_and_update(), chrono::Utc::now(), &calendar);
        for closed in due {
            let id = closing::closing_id(&closed);
            if sent.contains(&id) {
                continue;
            }
            let slot = closed.slot.clone();
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
                    sent.insert(id);
                }
                Err(err) => {
                    tracing::warn!(%slot, error = %format!("{err:#}"), "A waiting list could not be closed yet; trying again.")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::batches;

    #[test]
    fn batches_end_between_steps_and_cut_only_a_step_larger_than_one() {
        assert!(batches(&[], 1000).is_empty());
        assert_eq!(batches(&[2, 5, 800], 1000), vec![0..800]);
        // A step that does not fit starts the next batch.
        assert_eq!(batches(&[3, 6, 1006], 1000), vec![0..6, 6..1006]);
        assert_eq!(
            batches(&[600, 1200, 1800], 1000),
            vec![0..600, 600..1200, 1200..1800]
        );
        // One step of 2,500 decisions: three batches, the steps around it whole.
        assert_eq!(
            batches(&[3, 2503, 2506], 1000),
            vec![0..3, 3..1003, 1003..2003, 2003..2506]
        );
        assert_eq!(batches(&[10_000], 1000).len(), 10);
    }
}
