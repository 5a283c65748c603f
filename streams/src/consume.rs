//! One consumer loop for every reader of the logs: the reservation processor, the claims
//! releaser, the projection workers and the edge's windows follower keep only their step.
//!
//! Two shapes, one set of rules:
//! - [`run_ordered`]: an ordered (ephemeral, gap-free) consumer read in groups. The step says
//!   where to start ([`OrderedStep::resume`], which rebuilds whatever state it keeps) and
//!   handles each group; it owns its checkpoint (a decision log, a database row).
//! - [`run_durable`]: a durable consumer with acknowledgements, for steps whose effects are
//!   idempotent on their own; the step's [`Outcome`] maps mechanically to ack or nak-with-delay.
//!
//! The rules both keep:
//! - **Never past what was not understood.** A record this code cannot decode (a newer event
//!   version during a rolling upgrade, corruption), or an event type its subject's writer
//!   does not own ([`crate::subjects::SubjectKind::event_types`]: another identity allowed to
//!   append there appended it), stops the reader at that record: the
//!   records before it are handled, nothing after it is, the reader is reported stalled in
//!   its log, in [`Health::checks`] (so `/readyz` answers 503) and in the
//!   `consumer_stalled{consumer}` gauge, and it tries again every [`STALL_RETRY`] (a reader
//!   upgraded in place, or restarted with newer code, goes on from there). A durable consumer
//!   leaves such a record unacknowledged (nak with [`STALL_RETRY`]), so it is never lost.
//!   Upgrade readers before writers, so a stall is the exception.
//! - **Supervised.** A transient failure (NATS, the store) restarts the loop after a backoff
//!   that doubles up to two seconds; a [`Halt::Rebuild`] restarts it at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::events::Envelope;
use crate::replay;
use crate::runtime::register;

/// How long a stalled reader waits before it tries the record it could not decode again.
pub const STALL_RETRY: Duration = Duration::from_secs(30);

/// The longest backoff after a transient failure.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One decoded record, in stream order.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// How many times it was delivered, this one included (1 for ordered readers): a
    /// durable step's attempt count.
    pub delivered: u64,
    /// Records left in the consumer after this one when it was delivered (its pending
    /// count): how far behind the reader is.
    pub pending: u64,
    /// The event.
    pub envelope: Envelope,
}

/// A record the reader could not decode, or whose event type does not belong on its
/// subject: where it is and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{stream} sequence {seq} ({subject}) cannot be read by this version: {reason}")]
pub struct Undecodable {
    /// The stream.
    pub stream: String,
    /// Its sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// The decoder's complaint.
    pub reason: String,
}

/// Why a step (or its start) could not go on.
#[derive(Debug)]
pub enum Halt {
    /// The step's state is stale (a fence refused its write): resume at once.
    Rebuild,
    /// Something outside failed (NATS, the store): resume after a backoff.
    Transient(anyhow::Error),
    /// A record this code does not understand: stop at it until upgraded.
    Undecodable(Undecodable),
}

impl From<anyhow::Error> for Halt {
    fn from(err: anyhow::Error) -> Self {
        Halt::Transient(err)
    }
}

impl From<Undecodable> for Halt {
    fn from(err: Undecodable) -> Self {
        Halt::Undecodable(err)
    }
}

/// Decodes a JetStream message of `stream` into its records (one, or the records of a pack:
/// [`crate::pack`], in their order, all at the message's sequence), or says why it cannot be:
/// it cannot be decoded, or an event type does not belong on its subject
/// ([`Envelope::decode_all_from`]).
pub fn decode(stream: &str, message: &jetstream::Message) -> Result<Vec<Decoded>, Halt> {
    let info = message
        .info()
        .map_err(|e| anyhow::anyhow!("a message has no JetStream metadata: {e}"))?;
    let seq = info.stream_sequence;
    match Envelope::decode_all_from(&message.subject, &message.payload) {
        Ok(envelopes) => Ok(envelopes
            .into_iter()
            .map(|envelope| Decoded {
                seq,
                subject: message.subject.to_string(),
                delivered: info.delivered.max(1) as u64,
                pending: info.pending,
                envelope,
            })
            .collect()),
        Err(err) => Err(Halt::Undecodable(Undecodable {
            stream: stream.to_owned(),
            seq,
            subject: message.subject.to_string(),
            reason: err.to_string(),
        })),
    }
}

/// Which readers are stalled and why, shared by a service's loops and its `/readyz`; also
/// the loops' metrics. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    stalls: Arc<Mutex<BTreeMap<String, Undecodable>>>,
    stalled: IntGaugeVec,
    undecodable: IntCounterVec,
    restarts: IntCounterVec,
}

impl Health {
    /// Creates the loops' metrics in `registry`.
    pub fn new(registry: &Registry) -> Self {
        Health {
            stalls: Arc::default(),
            stalled: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "consumer_stalled",
                        "1 while a reader is stopped at a record it cannot decode.",
                    ),
                    &["consumer"],
                )
                .expect("valid metric"),
            ),
            undecodable: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "consumer_undecodable_total",
                        "Times a reader met a record it cannot decode.",
                    ),
                    &["consumer"],
                )
                .expect("valid metric"),
            ),
            restarts: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "consumer_restarts_total",
                        "Times a reader resumed, by why: rebuild (a fence), transient, undecodable.",
                    ),
                    &["consumer", "why"],
                )
                .expect("valid metric"),
            ),
        }
    }

    /// Readiness checks: one failing check per stalled reader, named after it.
    pub fn checks(&self) -> Vec<(String, bool)> {
        self.stalls
            .lock()
            .expect("lock")
            .keys()
            .map(|name| (format!("consumer {name}"), false))
            .collect()
    }

    /// The stall of `consumer`, if it is stalled.
    pub fn stall_of(&self, consumer: &str) -> Option<Undecodable> {
        self.stalls.lock().expect("lock").get(consumer).cloned()
    }

    fn stall(&self, consumer: &str, why: &Undecodable) {
        self.undecodable.with_label_values(&[consumer]).inc();
        self.stalled.with_label_values(&[consumer]).set(1);
        let first = self
            .stalls
            .lock()
            .expect("lock")
            .insert(consumer.to_owned(), why.clone())
            .is_none();
        if first {
            tracing::error!(consumer, stream = %why.stream, seq = why.seq, subject = %why.subject, reason = %why.reason,
                "A reader met a record it cannot accept and stopped there: a version newer than this code (upgrade it, readers before writers), or an event type its subject's writer does not own (remove the record). Nothing after the record is handled until then.");
        }
    }

    fn clear(&self, consumer: &str) {
        if self.stalls.lock().expect("lock").remove(consumer).is_some() {
            self.stalled.with_label_values(&[consumer]).set(0);
            tracing::info!(
                consumer,
                "The reader got past the record it had stopped at."
            );
        }
    }

    fn restarted(&self, consumer: &str, why: &str) {
        self.restarts.with_label_values(&[consumer, why]).inc();
    }
}

/// Where an ordered reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At this stream sequence (1 or 0: the beginning).
    At(u64),
    /// At the last message of every subject matching the filter, then everything new.
    LastPerSubject,
}

/// The step of an ordered reader: it keeps its own state and checkpoint.
pub trait OrderedStep: Send {
    /// Rebuilds the step's state and says where to start reading. Called before the first
    /// read and after every halt.
    fn resume(&mut self) -> impl Future<Output = Result<Start, Halt>> + Send;

    /// Handles one group of records, in stream order. Never called with an empty group.
    fn handle(&mut self, group: Vec<Decoded>) -> impl Future<Output = Result<(), Halt>> + Send;

    /// Called once per start when every record that was in the filter at the start has been
    /// handled (at once when there was none): the reader has caught up with the log.
    fn caught_up(&mut self) {}
}

/// What an ordered reader reads.
#[derive(Debug, Clone)]
pub struct OrderedSpec {
    /// Its name in logs, metrics and readiness (e.g. `reservation.mazowieckie`).
    pub name: String,
    /// The stream.
    pub stream: &'static str,
    /// The subject filter.
    pub filter: String,
    /// Most records per group.
    pub max_group: usize,
    /// How long a group waits for more after its first record ([`replay::next_group`]).
    pub linger: Duration,
}

/// Runs `step` over `spec`'s records until `stop` fires, resuming after every halt.
pub async fn run_ordered<S: OrderedStep>(
    js: &jetstream::Context,
    spec: &OrderedSpec,
    step: &mut S,
    health: &Health,
    stop: &CancellationToken,
) {
    let mut backoff = Backoff::default();
    while !stop.is_cancelled() {
        let halt = match read_ordered(js, spec, step, health, stop).await {
            Ok(()) => return,
            Err(halt) => halt,
        };
        let wait = match halt {
            Halt::Rebuild => {
                health.restarted(&spec.name, "rebuild");
                backoff.reset();
                tracing::info!(consumer = %spec.name, "The state was stale; rebuilding it from the log.");
                continue;
            }
            Halt::Transient(err) => {
                health.restarted(&spec.name, "transient");
                tracing::warn!(consumer = %spec.name, error = %format!("{err:#}"), "A reader failed; resuming after a pause.");
                backoff.next()
            }
            Halt::Undecodable(why) => {
                health.restarted(&spec.name, "undecodable");
                health.stall(&spec.name, &why);
                STALL_RETRY
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn read_ordered<S: OrderedStep>(
    js: &jetstream::Context,
    spec: &OrderedSpec,
    step: &mut S,
    health: &Health,
    stop: &CancellationToken,
) -> Result<(), Halt> {
    let start = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        start = step.resume() => start?,
    };
    let deliver_policy = match start {
        Start::At(seq) => replay::starting_at(seq),
        Start::LastPerSubject => DeliverPolicy::LastPerSubject,
    };
    let (mut messages, pending) = replay::ordered_reader(
        js,
        spec.stream,
        spec.filter.clone(),
        deliver_policy,
        Some(&spec.name),
    )
    .await?;
    let mut caught_up = pending == 0;
    if caught_up {
        step.caught_up();
    }
    // A stall is only ever set between two starts, so one look per start tells whether a
    // handled group must clear one.
    let mut was_stalled = health.stall_of(&spec.name).is_some();
    loop {
        let group = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            group = replay::next_group(&mut messages, spec.max_group, spec.linger) => group?,
        };
        let Some(group) = group else {
            return Err(Halt::Transient(anyhow::anyhow!(
                "the consumer of {} ended",
                spec.stream
            )));
        };
        let last_pending = group
            .last()
            .and_then(|m| m.info().ok())
            .map_or(1, |info| info.pending);
        let mut decoded = Vec::with_capacity(group.len());
        let mut stalled = None;
        for message in &group {
            match decode(spec.stream, message) {
                Ok(records) => decoded.extend(records),
                Err(halt) => {
                    stalled = Some(halt);
                    break;
                }
            }
        }
        // The records before one that cannot be decoded are handled; nothing after it is.
        if !decoded.is_empty() {
            step.handle(decoded).await?;
            if was_stalled && stalled.is_none() {
                health.clear(&spec.name);
                was_stalled = false;
            }
        }
        if let Some(halt) = stalled {
            return Err(halt);
        }
        if !caught_up && last_pending == 0 {
            caught_up = true;
            step.caught_up();
        }
    }
}

/// What became of one record of a durable consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect is stored: acknowledge it.
    Done,
    /// Not yet (a neighbour failed): deliver it again after this delay, holding no worker.
    Retry(Duration),
}

/// What a durable reader reads.
#[derive(Debug, Clone)]
pub struct DurableSpec {
    /// Its name in logs, metrics and readiness, and the durable consumer's name.
    pub name: String,
    /// The stream.
    pub stream: &'static str,
    /// The durable consumer's configuration (its `durable_name` is set from `name`).
    pub consumer: pull::Config,
    /// Records handled at once.
    pub concurrency: usize,
}

/// Runs `handle` over a durable consumer until `stop` fires, resuming after failures. Each
/// record is acknowledged only once `handle` says its effect is stored; a record that cannot
/// be decoded is never acknowledged (see the module's rules).
pub async fn run_durable<F, Fut>(
    js: &jetstream::Context,
    spec: &DurableSpec,
    handle: F,
    health: &Health,
    stop: &CancellationToken,
) where
    F: Fn(Decoded) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let mut backoff = Backoff::default();
    // Sequences this reader could not decode, so the stall clears when they all pass.
    let stuck = Mutex::new(HashSet::new());
    while !stop.is_cancelled() {
        match read_durable(js, spec, &handle, health, &stuck, stop).await {
            Ok(()) => return,
            Err(err) => {
                health.restarted(&spec.name, "transient");
                tracing::warn!(consumer = %spec.name, error = %format!("{err:#}"), "A reader failed; resuming after a pause.");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next()) => {}
        }
    }
}

async fn read_durable<F, Fut>(
    js: &jetstream::Context,
    spec: &DurableSpec,
    handle: &F,
    health: &Health,
    stuck: &Mutex<HashSet<u64>>,
    stop: &CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn(Decoded) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let stream = js
        .get_stream(spec.stream)
        .await
        .with_context(|| format!("Failed to open stream {}", spec.stream))?;
    let name = &spec.name;
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.clone()),
                ..spec.consumer.clone()
            },
        )
        .await
        .with_context(|| format!("Failed to create the consumer {name}"))?;
    let messages = consumer
        .messages()
        .await
        .context("Failed to start reading messages")?;
    let handled = messages
        .map(|message| async move {
            let message = message.map_err(|e| anyhow::anyhow!(e))?;
            let (ack, seq) = match decode(spec.stream, &message) {
                Ok(records) => {
                    let seq = records.first().map(|r| r.seq);
                    // A pack's records one after the other; it is acknowledged once all are
                    // done, and delivered again (all of it: effects are idempotent) if one
                    // is not.
                    let mut retry = None::<Duration>;
                    for record in records {
                        if let Outcome::Retry(delay) = handle(record).await {
                            retry = Some(retry.map_or(delay, |d| d.max(delay)));
                        }
                    }
                    let ack = match retry {
                        None => AckKind::Ack,
                        Some(delay) => AckKind::Nak(Some(delay)),
                    };
                    (ack, seq)
                }
                Err(Halt::Undecodable(why)) => {
                    stuck.lock().expect("lock").insert(why.seq);
                    health.stall(&spec.name, &why);
                    (AckKind::Nak(Some(STALL_RETRY)), None)
                }
                Err(Halt::Transient(err)) => return Err(err),
                Err(Halt::Rebuild) => unreachable!("decoding never asks for a rebuild"),
            };
            if let Some(seq) = seq {
                let mut stuck = stuck.lock().expect("lock");
                if stuck.remove(&seq) && stuck.is_empty() {
                    health.clear(&spec.name);
                }
            }
            message
                .ack_with(ack)
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .context("Failed to acknowledge a message")
        })
        .buffer_unordered(spec.concurrency.max(1));
    tokio::pin!(handled);
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = handled.next() => next,
        };
        match next {
            Some(result) => result?,
            None => anyhow::bail!("the consumer {name} ended"),
        }
    }
}

/// Doubling pauses after transient failures, from 50 ms up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(50))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        now
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}
