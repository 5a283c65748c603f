//! Reading the logs in order: recovery of processor state, projections and analysts' replays
//! all go through these helpers.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::{FutureExt, StreamExt};

use crate::events::{DecodeError, Envelope};

/// One message read back from a stream.
#[derive(Debug)]
pub struct Record {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its decoded event, or why it could not be decoded (or does not belong on its subject).
    pub envelope: Result<Envelope, DecodeError>,
    /// Messages left in the filter after this one when it was delivered.
    pub pending: u64,
}

impl Record {
    /// Reads a JetStream message into its records: one, or each record of a pack
    /// ([`crate::pack`]) in order, all at the message's sequence. A message that cannot be
    /// decoded is one record holding why.
    pub fn from_message(message: &jetstream::Message) -> anyhow::Result<Vec<Self>> {
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message has no JetStream metadata: {e}"))?;
        let record = |envelope| Record {
            seq: info.stream_sequence,
            subject: message.subject.to_string(),
            envelope,
            pending: info.pending,
        };
        Ok(
            match Envelope::decode_all_from(&message.subject, &message.payload) {
                Ok(envelopes) => envelopes.into_iter().map(|e| record(Ok(e))).collect(),
                Err(err) => vec![record(Err(err))],
            },
        )
    }
}

/// An ordered (ephemeral, flow-controlled, gap-free) consumer of `stream` filtered on
/// `filter`, starting at `start_seq` (1 or 0 for the beginning). Returns the message stream
/// and how many messages were pending when it was created.
pub async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    start_seq: u64,
) -> anyhow::Result<(pull::Ordered, u64)> {
    ordered_with(js, stream, filter, starting_at(start_seq)).await
}

/// The deliver policy of a reader starting at `start_seq` (1 or 0: the beginning).
pub fn starting_at(start_seq: u64) -> DeliverPolicy {
    if start_seq <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start_seq,
        }
    }
}

/// [`ordered`] with any deliver policy (e.g. the last message per subject).
pub async fn ordered_with(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    deliver_policy: DeliverPolicy,
) -> anyhow::Result<(pull::Ordered, u64)> {
    ordered_reader(js, stream, filter, deliver_policy, None).await
}

/// [`ordered_with`], the consumer carrying `reader`'s name in its metadata
/// ([`crate::subjects::READER_METADATA`]) so that JetStream's list of consumers tells which
/// reader it is.
pub async fn ordered_reader(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    deliver_policy: DeliverPolicy,
    reader: Option<&str>,
) -> anyhow::Result<(pull::Ordered, u64)> {
    let metadata = reader
        .map(|name| [(crate::subjects::READER_METADATA.to_owned(), name.to_owned())].into())
        .unwrap_or_default();
    let stream_handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("Failed to open stream {stream}"))?;
    let mut consumer = stream_handle
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
            metadata,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!("Failed to create an ordered consumer on {stream} for {filter}")
        })?;
    let pending = consumer
        .info()
        .await
        .context("Failed to read consumer info")?
        .num_pending;
    let messages = consumer
        .messages()
        .await
        .context("Failed to start reading messages")?;
    Ok((messages, pending))
}

/// The longest [`next_group`] lingers, whatever it is asked (a group is a batch, not a wait).
pub const MAX_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// The next group of messages for one batched write (group commit on the reading side):
/// waits for the first message, then takes what follows until `max` messages or until
/// `linger` after the first has passed; what is already buffered is taken either way, so
/// a zero `linger` means "whatever has arrived". `Ok(None)` when the consumer ended.
///
/// A longer `linger` makes fewer, larger writes under light load (each write has a fixed
/// cost) at the price of that much delay; under heavy load groups fill up before it ends.
pub async fn next_group(
    messages: &mut pull::Ordered,
    max: usize,
    linger: std::time::Duration,
) -> anyhow::Result<Option<Vec<jetstream::Message>>> {
    let Some(first) = messages.next().await else {
        return Ok(None);
    };
    let mut group = Vec::with_capacity(max.min(64));
    group.push(first.context("Failed to read from an ordered consumer")?);
    // No timer for a zero linger: a deadline of "now" would still wait for the timer's tick.
    let deadline =
        (!linger.is_zero()).then(|| tokio::time::Instant::now() + linger.min(MAX_LINGER));
    while group.len() < max {
        // What is buffered is taken even after the deadline; the timer counts only when the
        // consumer would have to wait.
        let next = match (messages.next().now_or_never(), deadline) {
            (Some(next), _) => next,
            (None, Some(deadline)) => tokio::time::timeout_at(deadline, messages.next())
                .await
                .unwrap_or(None),
            (None, None) => None,
        };
        let Some(message) = next else { break };
        group.push(message.context("Failed to read from an ordered consumer")?);
    }
    Ok(Some(group))
}

/// Calls `each` for every message of `stream` matching `filter` from `start_seq` up to the
/// end as it was when called, in order. Returns how many records were read (a pack's
/// records each count).
pub async fn read_to_end(
    js: &jetstream::Context,
    stream: &str,
    filter: String,
    start_seq: u64,
    mut each: impl FnMut(Record),
) -> anyhow::Result<u64> {
    let (mut messages, pending) = ordered(js, stream, filter, start_seq).await?;
    if pending == 0 {
        return Ok(0);
    }
    let mut count = 0;
    while let Some(message) = messages.next().await {
        let message = message.context("Failed to read from an ordered consumer")?;
        let records = Record::from_message(&message)?;
        let done = records.first().is_none_or(|r| r.pending == 0);
        for record in records {
            each(record);
            count += 1;
        }
        if done {
            break;
        }
    }
    Ok(count)
}
