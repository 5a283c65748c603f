//! What nats-server stored and moved for a run, counted from its own statistics: messages
//! stored per kind of subject (an ephemeral consumer's `num_pending` from the run's first
//! sequence), bytes stored per stream (stream state), and its `/varz` counters of messages
//! and bytes in and out (publishes, acks and API requests in; deliveries and replies out).
//! Divided by the registrations the run accepted, these are the write path's costs that
//! `docs/write-path.md` explains message by message.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use serde::Serialize;
use streams::subjects::{self, IntakeKind, RegionFilter};

/// The kinds of stored message counted, as (stream, what, subject filter). A stream's
/// messages outside its kinds are counted as its "other".
fn kinds() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            subjects::INTAKE_STREAM,
            "submissions",
            subjects::intake_kind_filter(&RegionFilter::All, IntakeKind::Submitted),
        ),
        (
            subjects::INTAKE_STREAM,
            "claim records",
            subjects::claim("*"),
        ),
        (
            subjects::INTAKE_STREAM,
            "idempotency key records",
            subjects::idempotency_key("*"),
        ),
        (
            subjects::INTAKE_STREAM,
            "verification verdicts",
            subjects::intake_kind_filter(&RegionFilter::All, IntakeKind::Verification),
        ),
        (
            subjects::DECISIONS_STREAM,
            "reservation decisions",
            subjects::reservation_decisions_filter(&RegionFilter::All),
        ),
        (
            subjects::DECISIONS_STREAM,
            "notification records",
            subjects::notification_decisions_filter(&RegionFilter::All),
        ),
    ]
}

/// Where the streams and the server's counters stood when a run began.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Per stream: last sequence and bytes stored.
    streams: BTreeMap<&'static str, (u64, u64)>,
    varz: Option<Varz>,
}

/// nats-server's own message counters (`/varz`).
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Varz {
    /// Messages the server received (publishes, acks, requests).
    pub in_msgs: u64,
    /// Messages the server sent (deliveries, replies, acks of publishes).
    pub out_msgs: u64,
    /// Bytes received.
    pub in_bytes: u64,
    /// Bytes sent.
    pub out_bytes: u64,
}

/// Messages of one kind stored during a run.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    /// The stream.
    pub stream: String,
    /// What they are.
    pub kind: String,
    /// How many.
    pub messages: u64,
    /// Per accepted registration.
    pub per_registration: f64,
}

/// A run's traffic through nats-server.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Messages stored, by kind.
    pub stored: Vec<Stored>,
    /// Durable messages stored per accepted registration, every stream.
    pub messages_per_registration: f64,
    /// Bytes stored per accepted registration, every stream (message payloads, headers and
    /// subjects as the stream accounts them).
    pub bytes_per_registration: f64,
    /// Bytes stored per stream per accepted registration.
    pub bytes_per_registration_by_stream: BTreeMap<String, f64>,
    /// The server's counters over the run, per accepted registration, without the
    /// benchmark's own decision watcher (one delivery per decision); `None` when the server
    /// has no monitoring port.
    pub server_per_registration: Option<PerRegistration>,
}

/// [`Varz`] divided by the registrations accepted.
#[derive(Debug, Clone, Serialize)]
pub struct PerRegistration {
    /// Messages into the server.
    pub in_msgs: f64,
    /// Messages out of the server.
    pub out_msgs: f64,
    /// Bytes into the server.
    pub in_bytes: f64,
    /// Bytes out of the server.
    pub out_bytes: f64,
}

/// One `GET /varz` from the monitoring port on loopback (HTTP/1.0, read to the end).
pub fn varz(port: u16) -> Option<Varz> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

/// Where the streams and the server's counters stand now.
pub async fn mark(js: &jetstream::Context, monitor_port: Option<u16>) -> anyhow::Result<Mark> {
    let mut streams = BTreeMap::new();
    for stream in [subjects::INTAKE_STREAM, subjects::DECISIONS_STREAM] {
        let state = js.get_stream(stream).await?.info().await?.state.clone();
        streams.insert(stream, (state.last_sequence, state.bytes));
    }
    Ok(Mark {
        streams,
        varz: monitor_port.and_then(varz),
    })
}

/// Messages of `stream` matching `filter` stored after sequence `after`.
async fn count_after(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    after: u64,
) -> anyhow::Result<u64> {
    let mut consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(consumer::pull::Config {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await?;
    Ok(consumer.info().await?.num_pending)
}

/// What was stored and moved since `mark`, per registration of the `accepted` ones; `watcher`
/// is the messages and bytes the benchmark's own decision watcher received, taken off the
/// server's out counters.
pub async fn since(
    js: &jetstream::Context,
    monitor_port: Option<u16>,
    mark: &Mark,
    accepted: u64,
    watcher: (u64, u64),
) -> anyhow::Result<Traffic> {
    let per = |n: f64| n / accepted.max(1) as f64;
    let now = self::mark(js, monitor_port).await?;
    let mut stored = Vec::new();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut bytes_by_stream = BTreeMap::new();
    for (stream, &(last, stream_bytes)) in &mark.streams {
        let (end, end_bytes) = now.streams[stream];
        let total = end.saturating_sub(last);
        messages += total;
        bytes += end_bytes.saturating_sub(stream_bytes);
        bytes_by_stream.insert(
            stream.to_string(),
            per(end_bytes.saturating_sub(stream_bytes) as f64),
        );
        let mut counted = 0;
        for (_, kind, filter) in kinds().into_iter().filter(|k| k.0 == *stream) {
            let n = count_after(js, stream, &filter, last).await?;
            counted += n;
            stored.push(Stored {
                stream: stream.to_string(),
                kind: kind.into(),
                messages: n,
                per_registration: per(n as f64),
            });
        }
        stored.push(Stored {
            stream: stream.to_string(),
            kind: "other".into(),
            messages: total.saturating_sub(counted),
            per_registration: per(total.saturating_sub(counted) as f64),
        });
    }
    let server_per_registration = match (mark.varz, now.varz) {
        (Some(a), Some(b)) => Some(PerRegistration {
            in_msgs: per(b.in_msgs.saturating_sub(a.in_msgs) as f64),
            out_msgs: per(b.out_msgs.saturating_sub(a.out_msgs + watcher.0) as f64),
            in_bytes: per(b.in_bytes.saturating_sub(a.in_bytes) as f64),
            out_bytes: per(b.out_bytes.saturating_sub(a.out_bytes + watcher.1) as f64),
        }),
        _ => None,
    };
    Ok(Traffic {
        stored,
        messages_per_registration: per(messages as f64),
        bytes_per_registration: per(bytes as f64),
        bytes_per_registration_by_stream: bytes_by_stream,
        server_per_registration,
    })
}
