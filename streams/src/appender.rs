//! Durable appends, many per write.
//!
//! With `sync_interval: always` every JetStream write costs an fsync, so one message per
//! write stops near 4,000/s (DESIGN.md). An *atomic batch* (ADR-50: `Nats-Batch-Id`,
//! `Nats-Batch-Sequence`, `Nats-Batch-Commit`) is staged by the server and stored with one
//! fsync, all or nothing, at contiguous sequences. Two layers use it:
//!
//! - [`publish_atomic`] sends one batch and returns the sequence of each message; the
//!   reservation processor calls it directly, with a fence on the first message.
//! - [`Appender`] is group commit for request handlers: each caller hands in one message and
//!   waits; a background task sends whatever has queued as one batch, so under load a batch
//!   fills itself while the previous one is being written, and when idle a message is sent
//!   at once. The wait a caller pays is bounded by one batch write.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
};
use async_nats::jetstream::{self, context::PublishErrorKind};
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

fn classify(err: jetstream::context::PublishError) -> AppendError {
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
}

impl Default for AppenderOptions {
    fn default() -> Self {
        AppenderOptions {
            max_batch: 256,
            max_in_flight: 4,
            queue: 16_384,
            timeout: Duration::from_secs(5),
        }
    }
}

struct Pending {
    msg: Outgoing,
    done: oneshot::Sender<Result<u64, AppendError>>,
}

/// Group commit in front of one JetStream connection. Clone freely; all clones feed one
/// background task, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Pending>,
}

impl Appender {
    /// Starts the background task.
    pub fn start(client: async_nats::Client, options: AppenderOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.queue);
        tokio::spawn(run(client, options, rx));
        Appender { tx }
    }

    /// Appends one message and waits until JetStream durably stored it; returns its sequence.
    pub async fn append(&self, msg: Outgoing) -> Result<u64, AppendError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { msg, done })
            .await
            .map_err(|_| AppendError::Unavailable("the appender stopped".into()))?;
        wait.await
            .map_err(|_| AppendError::Unavailable("the appender stopped".into()))?
    }
}

async fn run(
    client: async_nats::Client,
    options: AppenderOptions,
    mut rx: mpsc::Receiver<Pending>,
) {
    let js = jetstream::ContextBuilder::new()
        .timeout(options.timeout)
        .build(client.clone());
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let max_batch = options.max_batch.clamp(1, MAX_ATOMIC_BATCH);
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        // Whatever queued while we waited for a free slot joins this batch.
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let pending = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
        let (js, client) = (js.clone(), client.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (messages, waiters): (Vec<_>, Vec<_>) =
                pending.into_iter().map(|p| (p.msg, p.done)).unzip();
            match publish_atomic(&js, &client, messages).await {
                Ok(seqs) => {
                    for (done, seq) in waiters.into_iter().zip(seqs) {
                        let _ = done.send(Ok(seq));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, size = waiters.len(), "A batch append failed.");
                    for done in waiters {
                        let _ = done.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}
