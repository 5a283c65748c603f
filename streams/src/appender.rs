//! Durable appends, many per write.
//!
//! With `sync_interval: always` every JetStream write costs an fsync, so one message per
//! write is held to the disk's fsync rate (the ceilings: docs/write-path.md,
//! `deploy/benchmarks/reports/`). An *atomic batch* (ADR-50: `Nats-Batch-Id`,
//! `Nats-Batch-Sequence`, `Nats-Batch-Commit`) is staged by the server and stored with one
//! fsync, all or nothing, at contiguous sequences. Two layers use it:
//!
//! - [`publish_atomic`] sends one batch and returns the sequence of each message; the
//!   reservation processor calls it directly, with a fence on the first message.
//! - [`Appender`] is group commit for request handlers: each caller hands in one message, or a
//!   [`Unit`] of messages that must be stored together, and waits; a background task sends
//!   whatever has queued as one batch, so under load a batch fills itself while the previous
//!   one is being written, and when idle a message is sent at once. The wait a caller pays is
//!   bounded by one batch write.
//!
//! A unit may carry a fence: "append only if the last message on my first message's subject
//! is at this sequence" (`Nats-Expected-Last-Subject-Sequence`). The server checks every fence
//! of a batch and refuses the whole batch if one fails, so when that happens the appender
//! reads the fenced subjects back, fails only the units whose fence no longer holds (handing
//! each the message now last on its subject, [`AppendError::Moved`], so the caller need not
//! read it again), and writes the others again: one caller's conflict costs the others a
//! second write, never their acceptance.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
};
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, context::PublishErrorKind, message::StreamMessage};
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The server's limit on messages in one atomic batch.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// One message to append.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The subject (from [`crate::subjects`]).
    pub subject: String,
    /// Headers, e.g. the event type or a fence.
    pub headers: HeaderMap,
    /// The encoded event.
    pub payload: Bytes,
}

impl Outgoing {
    /// The message for `envelope` on `subject`, with its event type in
    /// [`crate::subjects::EVENT_TYPE_HEADER`] so consumers and tools can filter without
    /// decoding. Further headers (a fence) can be added before appending.
    pub fn event(subject: String, envelope: &crate::events::Envelope) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            crate::subjects::EVENT_TYPE_HEADER,
            envelope.event.event_type(),
        );
        Outgoing {
            subject,
            headers,
            payload: envelope.encode().into(),
        }
    }
}

/// Why an append did not happen. Nothing was stored in any of these cases, except
/// [`AppendError::Unavailable`], where the outcome is unknown: the caller must treat the
/// message as possibly stored (retries must be idempotent).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// JetStream did not answer in time or the connection is down: retry later.
    #[error("JetStream is unavailable: {0}")]
    Unavailable(String),
    /// A fence (`Nats-Expected-Last-*`) failed: someone else wrote first.
    #[error("a concurrent writer changed the log first: {0}")]
    Fenced(String),
    /// A [`Unit`]'s fence no longer holds: its subject moved on. `last` is the message now
    /// last on that subject (`None`: the subject is empty), read once by the appender, so the
    /// caller decides what to do without reading it again.
    #[error("the fenced subject moved on (last at {})", last.as_ref().map_or(0, |m| m.sequence))]
    Moved {
        /// The subject's last message.
        last: Option<Box<StreamMessage>>,
    },
    /// A subject the [`Unit`] appends to only if it is empty ([`Unit::once`]) already holds
    /// a message: what it stands for was used before.
    #[error("{subject} was written before")]
    Taken {
        /// The subject.
        subject: String,
    },
    /// JetStream refused the batch for another reason (configuration, limits).
    #[error("JetStream refused the append: {0}")]
    Refused(String),
}

impl AppendError {
    /// Whether retrying the same append later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AppendError::Unavailable(_))
    }
}

pub(crate) fn classify(err: jetstream::context::PublishError) -> AppendError {
    match err.kind() {
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
            AppendError::Fenced(err.to_string())
        }
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending => AppendError::Unavailable(err.to_string()),
        // "no responders" (JetStream down or stream missing while the server restarts)
        // surfaces as StreamNotFound: transient from the caller's point of view.
        PublishErrorKind::StreamNotFound => AppendError::Unavailable(err.to_string()),
        _ => {
            let text = err.to_string();
            if text.contains("last sequence") {
                AppendError::Fenced(text)
            } else {
                AppendError::Refused(text)
            }
        }
    }
}

/// Publishes `messages` as one atomic batch and returns the stream sequence of each, in order.
/// All are stored with one durable write, or none is.
pub async fn publish_atomic(
    js: &jetstream::Context,
    client: &async_nats::Client,
    messages: Vec<Outgoing>,
) -> Result<Vec<u64>, AppendError> {
    let count = messages.len();
    assert!(
        count > 0 && count <= MAX_ATOMIC_BATCH,
        "batch of {count} messages"
    );
    let batch_id = uuid::Uuid::now_v7().simple().to_string();
    let mut iter = messages.into_iter().enumerate().peekable();
    while let Some((i, mut msg)) = iter.next() {
        msg.headers.insert(NATS_BATCH_ID, batch_id.as_str());
        msg.headers
            .insert(NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
        if iter.peek().is_some() {
            // Staged by the server; only the commit is acknowledged.
            client
                .publish_with_headers(msg.subject, msg.headers, msg.payload)
                .await
                .map_err(|e| AppendError::Unavailable(e.to_string()))?;
        } else {
            msg.headers
                .insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            let ack = js
                .publish_with_headers(msg.subject, msg.headers, msg.payload)
                .await
                .map_err(classify)?
                .await
                .map_err(classify)?;
            let last = ack.sequence;
            let first = last + 1 - count as u64;
            return Ok((first..=last).collect());
        }
    }
    unreachable!("a non-empty batch always ends with its commit")
}

/// Messages stored together, in order, in one atomic batch, optionally fenced.
#[derive(Debug, Clone)]
pub struct Unit {
    messages: Vec<Outgoing>,
    /// The sequence the first message's subject must end at (0: no message yet).
    fence: Option<u64>,
    /// Subjects of further messages that must be empty ([`Unit::once`]).
    once: Vec<String>,
}

impl Unit {
    /// Messages appended together with no condition.
    pub fn new(messages: Vec<Outgoing>) -> Self {
        assert!(!messages.is_empty(), "a unit holds at least one message");
        Unit {
            messages,
            fence: None,
            once: Vec::new(),
        }
    }

    /// Messages appended together only if the last message on the first message's subject is
    /// at `last_sequence` (0: the subject holds nothing yet). Otherwise the append fails with
    /// [`AppendError::Moved`] and nothing of the unit is stored.
    pub fn fenced(mut messages: Vec<Outgoing>, last_sequence: u64) -> Self {
        assert!(!messages.is_empty(), "a unit holds at least one message");
        messages[0].headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last_sequence.to_string().as_str(),
        );
        Unit {
            messages,
            fence: Some(last_sequence),
            once: Vec::new(),
        }
    }

    /// Adds `message`, appended with the rest only if its subject holds nothing yet;
    /// otherwise the append fails with [`AppendError::Taken`] (after the first message's
    /// fence, which is checked first) and nothing of the unit is stored. For what may be used
    /// once, e.g. a waiting-room ticket.
    pub fn once(mut self, mut message: Outgoing) -> Self {
        message
            .headers
            .insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        self.once.push(message.subject.clone());
        self.messages.push(message);
        self
    }

    fn fence_subject(&self) -> Option<&str> {
        self.fence.map(|_| self.messages[0].subject.as_str())
    }

    /// Every subject this unit fences on.
    fn fenced_subjects(&self) -> impl Iterator<Item = &str> {
        self.fence_subject()
            .into_iter()
            .chain(self.once.iter().map(String::as_str))
    }
}

/// Tuning of an [`Appender`].
#[derive(Debug, Clone)]
pub struct AppenderOptions {
    /// Most messages per batch (≤ [`MAX_ATOMIC_BATCH`]).
    pub max_batch: usize,
    /// Batches written concurrently (the server allows 50 in flight per stream).
    pub max_in_flight: usize,
    /// Callers that may wait at once; beyond it [`Appender::append`] waits for room, which is
    /// the backpressure that keeps memory flat.
    pub queue: usize,
    /// How long a single batch write may take before callers are told JetStream is
    /// unavailable.
    pub timeout: Duration,
    /// The shortest time between the starts of two batches: what arrives meanwhile waits and
    /// joins the next one. On a single node each atomic batch pays for a staging store of its
    /// own (a directory, created and removed), so at a few hundred units a second many tiny
    /// batches cost the server far more than a few full ones. A unit arriving after a quiet
    /// spell goes at once; under load one waits at most this long more.
    pub min_interval: Duration,
}

impl Default for AppenderOptions {
    /// One batch in flight, as large as the queue fills: nats-server stores one stream's
    /// atomic batches one after another, so a second batch in flight only splits the queue
    /// into smaller, costlier batches, and a batch's fixed cost favours the largest batch the
    /// queue can fill. The measurements behind it (`deploy/bench edge`, batches in flight
    /// against accepted/s) are in docs/write-path.md, "Group commit".
    fn default() -> Self {
        AppenderOptions {
            max_batch: MAX_ATOMIC_BATCH,
            max_in_flight: 1,
            queue: 16_384,
            timeout: Duration::from_secs(5),
            min_interval: Duration::ZERO,
        }
    }
}

struct Pending {
    unit: Unit,
    done: oneshot::Sender<Result<Vec<u64>, AppendError>>,
}

/// Group commit in front of one stream. Clone freely; all clones feed one background task,
/// which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Pending>,
}

impl Appender {
    /// Starts the background task for appends to `stream` (whose subjects every message must
    /// belong to; fences are read back from it).
    pub fn start(client: async_nats::Client, stream: &str, options: AppenderOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.queue);
        tokio::spawn(run(client, stream.to_owned(), options, rx));
        Appender { tx }
    }

    /// Appends one message and waits until JetStream durably stored it; returns its sequence.
    pub async fn append(&self, msg: Outgoing) -> Result<u64, AppendError> {
        Ok(self.append_unit(Unit::new(vec![msg])).await?[0])
    }

    /// Appends `unit`'s messages in one durable write, all or none, and returns their
    /// sequences in order.
    pub async fn append_unit(&self, unit: Unit) -> Result<Vec<u64>, AppendError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { unit, done })
            .await
            .map_err(|_| AppendError::Unavailable("the appender stopped".into()))?;
        wait.await
            .map_err(|_| AppendError::Unavailable("the appender stopped".into()))?
    }
}

async fn run(
    client: async_nats::Client,
    stream: String,
    options: AppenderOptions,
    mut rx: mpsc::Receiver<Pending>,
) {
    let js = jetstream::ContextBuilder::new()
        .timeout(options.timeout)
        .build(client.clone());
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let max_batch = options.max_batch.clamp(1, MAX_ATOMIC_BATCH);
    // Units waiting for a batch, oldest first.
    let mut queued: VecDeque<Pending> = VecDeque::new();
    // When the next batch may start (`min_interval` after the last one started).
    let mut next_start: Option<tokio::time::Instant> = None;
    loop {
        if queued.is_empty() {
            let mut arrived = Vec::with_capacity(max_batch);
            if rx.recv_many(&mut arrived, max_batch).await == 0 {
                return;
            }
            queued.extend(arrived);
        }
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        if let Some(at) = next_start {
            tokio::time::sleep_until(at).await;
        }
        next_start = (!options.min_interval.is_zero())
            .then(|| tokio::time::Instant::now() + options.min_interval);
        // Whatever queued while we waited for a free slot may join this batch.
        while queued.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => queued.push_back(p),
                Err(_) => break,
            }
        }
        let batch = next_batch(&mut queued, max_batch);
        if batch.is_empty() {
            continue;
        }
        let (js, client, stream) = (js.clone(), client.clone(), stream.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (units, started) = (batch.len(), std::time::Instant::now());
            write(&js, &client, &stream, batch).await;
            tracing::debug!(
                units,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "A batch was written."
            );
        });
    }
}

/// Takes the oldest units that fit in one batch: at most `max_batch` messages, and at most one
/// fence per subject (the server refuses two). A unit that must wait keeps its place.
fn next_batch(queued: &mut VecDeque<Pending>, max_batch: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut size = 0;
    let mut fenced = HashSet::new();
    let mut waiting = VecDeque::new();
    while let Some(p) = queued.pop_front() {
        let len = p.unit.messages.len();
        if len > max_batch {
            let _ = p.done.send(Err(AppendError::Refused(format!(
                "a unit of {len} messages does not fit in a batch of {max_batch}"
            ))));
            continue;
        }
        if size + len > max_batch {
            queued.push_front(p);
            break;
        }
        if p.unit.fenced_subjects().any(|s| fenced.contains(s)) {
            waiting.push_back(p);
            continue;
        }
        fenced.extend(p.unit.fenced_subjects().map(str::to_owned));
        size += len;
        batch.push(p);
    }
    while let Some(p) = waiting.pop_back() {
        queued.push_front(p);
    }
    batch
}

/// How often a batch is written again after other units' fences failed, before its callers
/// are told to retry.
const FENCE_ROUNDS: usize = 3;

async fn write(
    js: &jetstream::Context,
    client: &async_nats::Client,
    stream: &str,
    mut batch: Vec<Pending>,
) {
    for _ in 0..FENCE_ROUNDS {
        // Cloned, not moved: a batch refused for another unit's fence is written again.
        let messages = batch
            .iter()
            .flat_map(|p| p.unit.messages.iter().cloned())
            .collect();
        match publish_atomic(js, client, messages).await {
            Ok(seqs) => {
                let mut seqs = seqs.into_iter();
                for p in batch {
                    let mine = seqs.by_ref().take(p.unit.messages.len()).collect();
                    let _ = p.done.send(Ok(mine));
                }
                return;
            }
            Err(AppendError::Fenced(reason))
                if batch
                    .iter()
                    .any(|p| p.unit.fenced_subjects().next().is_some()) =>
            {
                batch = drop_broken_fences(js, stream, batch, &reason).await;
                if batch.is_empty() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "A batch append failed.");
                for p in batch {
                    let _ = p.done.send(Err(err.clone()));
                }
                return;
            }
        }
    }
    for p in batch {
        let _ = p.done.send(Err(AppendError::Unavailable(
            "concurrent writers kept changing the log; retry".into(),
        )));
    }
}

/// After a batch failed on a fence: reads each fenced subject's last message, answers the
/// units whose fence no longer holds with it ([`AppendError::Moved`]), and returns the rest
/// to be written again.
async fn drop_broken_fences(
    js: &jetstream::Context,
    stream: &str,
    batch: Vec<Pending>,
    reason: &str,
) -> Vec<Pending> {
    let stream = match js.get_stream_no_info(stream).await {
        Ok(stream) => stream,
        Err(err) => {
            for p in batch {
                let _ = p.done.send(Err(AppendError::Unavailable(err.to_string())));
            }
            return Vec::new();
        }
    };
    let lasts = futures::future::join_all(batch.iter().map(|p| {
        let stream = &stream;
        async move {
            match p.unit.fence_subject() {
                None => Ok(None),
                Some(subject) => last_message_from_leader(stream, subject).await.map(Some),
            }
        }
    }))
    .await;
    let mut unmoved = Vec::new();
    for (p, last) in batch.into_iter().zip(lasts) {
        match (p.unit.fence, last) {
            (Some(want), Ok(Some(last))) if want != last.as_ref().map_or(0, |m| m.sequence) => {
                let _ = p.done.send(Err(AppendError::Moved {
                    last: last.map(Box::new),
                }));
            }
            (_, Err(err)) => {
                let _ = p.done.send(Err(err));
            }
            _ => unmoved.push(p),
        }
    }
    // Then the subjects that must still be empty (rare: only units that have one are read).
    let taken = futures::future::join_all(unmoved.iter().map(|p| {
        let stream = &stream;
        async move {
            for subject in &p.unit.once {
                match last_message_from_leader(stream, subject).await {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        return Err(AppendError::Taken {
                            subject: subject.clone(),
                        });
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        }
    }))
    .await;
    let mut again = Vec::new();
    for (p, taken) in unmoved.into_iter().zip(taken) {
        match taken {
            Ok(()) => again.push(p),
            Err(err) => {
                let _ = p.done.send(Err(err));
            }
        }
    }
    tracing::debug!(
        reason,
        retried = again.len(),
        "A fenced batch was refused; writing the rest again."
    );
    again
}

/// The last message on `subject` in `stream`, `None` if it holds none: what a fence on
/// `subject` compares against. A direct get, which any replica may answer: cheap on the
/// request path, and a stale answer costs only a refused fence (see [`last_message_from_leader`]).
pub async fn last_message(
    stream: &Stream<()>,
    subject: &str,
) -> Result<Option<StreamMessage>, AppendError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(err) => Err(AppendError::Unavailable(err.to_string())),
    }
}

/// [`last_message`], read from the stream's leader (`STREAM.MSG.GET`): what a fence is
/// re-read with after the leader refused it. A direct get there may be answered by a
/// follower still catching up, whose older sequence would make every retry carry a fence
/// the leader refuses again (the failover run saw the edge answer `503` with a quorum right
/// after a killed node rejoined).
pub async fn last_message_from_leader(
    stream: &Stream<()>,
    subject: &str,
) -> Result<Option<StreamMessage>, AppendError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(AppendError::Unavailable(err.to_string())),
    }
}
