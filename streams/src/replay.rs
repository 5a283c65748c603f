//! Reading the logs in order: recovery of processor state, projections and analysts' replays
//! all go through these helpers.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;

use crate::events::{DecodeError, Envelope};

/// One message read back from a stream.
#[derive(Debug)]
pub struct Record {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its decoded event (or why it could not be decoded).
    pub envelope: Result<Envelope, DecodeError>,
    /// Messages left in the filter after this one when it was delivered.
    pub pending: u64,
}

impl Record {
    /// Reads a JetStream message into a record.
    pub fn from_message(message: &jetstream::Message) -> anyhow::Result<Self> {
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message has no JetStream metadata: {e}"))?;
        Ok(Record {
            seq: info.stream_sequence,
            subject: message.subject.to_string(),
            envelope: Envelope::decode(&message.payload),
            pending: info.pending,
        })
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
    let stream_handle = js
        .get_stream(stream)
        .await
        .with_context(|| format!("Failed to open stream {stream}"))?;
    let deliver_policy = if start_seq <= 1 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: start_seq,
        }
    };
    let mut consumer = stream_handle
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy,
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

/// Calls `each` for every message of `stream` matching `filter` from `start_seq` up to the
/// end as it was when called, in order. Returns how many messages were read.
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
        let record = Record::from_message(&message)?;
        let done = record.pending == 0;
        each(record);
        count += 1;
        if done {
            break;
        }
    }
    Ok(count)
}
