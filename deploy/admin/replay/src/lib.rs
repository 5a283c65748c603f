//! # replay: the analysts' copy of the event log
//!
//! Any stream, from a sequence or a time, optionally up to another, filtered by region and
//! event type, in order, to NDJSON or CSV. The `replay` binary is its command line
//! (`deploy/replay`). It reads NATS and writes files: it depends on [`streams`] only and links
//! no database: building it compiles no SurrealDB.
//!
//! It reads through an ordered, ephemeral consumer (no durable state on the server, no
//! acknowledgements), so it never disturbs the processors or the projections. Personal data
//! is left out unless asked for: the sealed personal fields and the keyed hashes that could
//! link a citizen's registrations are dropped from every record; with [`Personal::Decrypt`]
//! the sealed fields are opened with the data key and written in clear.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use streams::crypto::Keys;
use streams::events::{Envelope, Event};
use streams::model::Region;
use streams::subjects::{self, RegionFilter};

/// A stream analysts can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stream {
    /// What was asked: submissions, cancellations, capacities, windows, verdicts, reviews
    /// (`REG_INTAKE`).
    Intake,
    /// What was decided: reservations, rejections, waiting list, confirmations,
    /// cancellations, messages sent (`REG_DECISIONS`).
    Decisions,
}

impl Stream {
    /// The JetStream stream's name.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Intake => subjects::INTAKE_STREAM,
            Stream::Decisions => subjects::DECISIONS_STREAM,
        }
    }

    fn filter(self, region: &RegionFilter) -> String {
        match self {
            Stream::Intake => subjects::intake_filter(region),
            Stream::Decisions => subjects::decisions_filter(region),
        }
    }
}

/// Where a replay starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A stream sequence (inclusive).
    Seq(u64),
    /// A time: the first message stored at or after it (start), or the last stored at or
    /// before it (end).
    Time(DateTime<Utc>),
}

impl std::str::FromStr for Point {
    type Err = String;

    /// A sequence number (`12345`) or an RFC 3339 time (`2027-03-01T08:00:00Z`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(seq) = s.parse::<u64>() {
            return Ok(Point::Seq(seq));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Point::Time(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "{s:?} is neither a sequence number nor an RFC 3339 time (2027-03-01T08:00:00Z)"
                )
            })
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line: the event's envelope with its stream sequence, subject and
    /// storage time.
    Ndjson,
    /// One row per event with the common columns (registration, slot, reason, position) and
    /// the event's data as JSON in the last column.
    Csv,
}

/// What happens to personal data.
#[derive(Clone)]
pub enum Personal {
    /// Left out (the default).
    Omit,
    /// Opened with these keys and written in clear.
    Decrypt(Keys),
}

/// One replay's parameters.
#[derive(Clone)]
pub struct Replay {
    /// The stream.
    pub stream: Stream,
    /// Where to start (the beginning when `None`).
    pub from: Option<Point>,
    /// Where to stop (the end of the stream as it was when the replay started when `None`).
    pub to: Option<Point>,
    /// Only this region.
    pub region: Option<Region>,
    /// Only these event types (all when empty).
    pub types: Vec<String>,
    /// The output format.
    pub format: Format,
    /// Personal data.
    pub personal: Personal,
}

/// What a replay read and wrote.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Messages read from the stream (in the region's filter, within the bounds).
    pub read: u64,
    /// Records written (read and of a type asked for).
    pub written: u64,
    /// Records written by event type.
    pub by_type: BTreeMap<String, u64>,
    /// Records that could not be decoded (written as such, with the reason).
    pub undecodable: u64,
    /// The first and last sequence read.
    pub first_seq: Option<u64>,
    /// The last sequence read.
    pub last_seq: Option<u64>,
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 13] = [
    "seq",
    "stored_at",
    "subject",
    "type",
    "version",
    "occurred_at",
    "registration_id",
    "region",
    "location",
    "date",
    "reason",
    "position",
    "data",
];

/// The fields that are personal data (a submission's sealed block) or link one citizen's
/// registrations (the keyed citizen key decisions carry too, the request hash), left out of
/// every event unless personal data is asked for.
const PERSONAL_FIELDS: [&str; 3] = ["personal", "citizen_key", "request_hash"];

/// Validates event type names against the contract, so a typo is an error rather than an
/// empty file.
pub fn check_types(types: &[String]) -> Result<(), String> {
    let known: Vec<&str> = streams::events::EVENT_TYPES.to_vec();
    match types.iter().find(|t| !known.contains(&t.as_str())) {
        Some(unknown) => Err(format!(
            "unknown event type {unknown:?}; the types are: {}",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

/// Runs a replay into `out`, calling `progress(read, total)` as it goes (`total` is how many
/// messages the filter held from the start point when the replay began, an upper bound when
/// an end is given). Returns what it read and wrote.
pub async fn replay(
    js: &jetstream::Context,
    replay: &Replay,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Summary> {
    let region = match &replay.region {
        Some(region) => RegionFilter::One(region.clone()),
        None => RegionFilter::All,
    };
    let deliver_policy = match replay.from {
        None | Some(Point::Seq(0 | 1)) => DeliverPolicy::All,
        Some(Point::Seq(start_sequence)) => DeliverPolicy::ByStartSequence { start_sequence },
        Some(Point::Time(start)) => DeliverPolicy::ByStartTime {
            start_time: to_time(start)?,
        },
    };
    let (mut messages, total) = streams::replay::ordered_with(
        js,
        replay.stream.name(),
        replay.stream.filter(&region),
        deliver_policy,
    )
    .await?;
    let mut summary = Summary::default();
    let mut sink = match replay.format {
        Format::Ndjson => Sink::Ndjson(out),
        Format::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            csv.write_record(CSV_COLUMNS)
                .context("Failed to write the CSV header")?;
            Sink::Csv(Box::new(csv))
        }
    };
    progress(0, total);
    while summary.read < total {
        let message = messages
            .next()
            .await
            .context("The stream ended during the replay")?
            .context("Failed to read from the stream")?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("A message has no JetStream metadata: {e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        let stored_at = from_time(info.published);
        let past_end = match replay.to {
            Some(Point::Seq(to)) => seq > to,
            Some(Point::Time(to)) => stored_at > to,
            None => false,
        };
        if past_end {
            break;
        }
        summary.read += 1;
        summary.first_seq.get_or_insert(seq);
        summary.last_seq = Some(seq);
        // One message is one record, or several when it is a pack (`streams::pack`): each is
        // written on its own, at the message's sequence.
        let records = match Envelope::decode_all_from(&message.subject, &message.payload) {
            Ok(envelopes) => {
                let mut records = Vec::with_capacity(envelopes.len());
                for envelope in envelopes {
                    let event_type = envelope.event.event_type();
                    if !replay.types.is_empty() && !replay.types.iter().any(|t| t == event_type) {
                        continue;
                    }
                    *summary.by_type.entry(event_type.to_owned()).or_default() += 1;
                    let opened = match (&replay.personal, &envelope.event) {
                        (Personal::Decrypt(keys), Event::RegistrationSubmitted(submitted)) => {
                            Some(open(js, keys, submitted).await)
                        }
                        _ => None,
                    };
                    records.push(record(
                        seq,
                        &message.subject,
                        stored_at,
                        &envelope,
                        &replay.personal,
                        opened,
                    )?);
                }
                records
            }
            Err(err) => {
                summary.undecodable += 1;
                vec![json!({
                    "seq": seq, "subject": message.subject.as_str(), "stored_at": stored_at,
                    "undecodable": err.to_string(),
                })]
            }
        };
        for record in records {
            summary.written += 1;
            match &mut sink {
                Sink::Csv(csv) => csv
                    .write_record(csv_row(&record))
                    .context("Failed to write a CSV row")?,
                Sink::Ndjson(out) => {
                    serde_json::to_writer(&mut **out, &record)
                        .context("Failed to write a record")?;
                    out.write_all(b"\n").context("Failed to write a record")?;
                }
            }
        }
        progress(summary.read, total);
        if pending == 0 {
            break;
        }
    }
    match &mut sink {
        Sink::Csv(csv) => csv.flush(),
        Sink::Ndjson(out) => out.flush(),
    }
    .context("Failed to flush the output")?;
    Ok(summary)
}

/// Where records go, in the format asked for.
enum Sink<'a> {
    Ndjson(&'a mut dyn Write),
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
}

/// A submission's personal data, opened (with its own key, when it was sealed under one), or
/// why not: `{"erased": true}` once the citizen's data was erased.
async fn open(
    js: &jetstream::Context,
    keys: &Keys,
    submitted: &streams::events::RegistrationSubmitted,
) -> Value {
    use streams::seals::Unopenable;
    match streams::seals::open(js, keys, &submitted.registration_id, &submitted.personal).await {
        Ok(personal) => serde_json::to_value(personal).unwrap_or(Value::Null),
        Err(Unopenable::Erased) => json!({"erased": true}),
        Err(Unopenable::Key(_)) => json!({"error": "the data key does not open this record"}),
        Err(err @ Unopenable::Read(_)) => json!({"error": err.to_string()}),
    }
}

/// One event as written: the envelope with its stream position, personal data left out or
/// `opened` ([`open`]).
fn record(
    seq: u64,
    subject: &str,
    stored_at: DateTime<Utc>,
    envelope: &Envelope,
    personal: &Personal,
    opened: Option<Value>,
) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(envelope).context("Failed to encode an event")?;
    if let Some(data) = value.get_mut("data").and_then(Value::as_object_mut) {
        match personal {
            Personal::Omit => {
                for field in PERSONAL_FIELDS {
                    data.remove(field);
                }
            }
            Personal::Decrypt(_) => {
                if let Some(opened) = opened {
                    data.insert("personal".into(), opened);
                }
            }
        }
    }
    let mut out = Map::new();
    out.insert("seq".into(), json!(seq));
    out.insert("subject".into(), json!(subject));
    out.insert("stored_at".into(), json!(stored_at));
    if let Value::Object(fields) = value {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

/// A record's CSV row, in [`CSV_COLUMNS`] order.
fn csv_row(record: &Value) -> Vec<String> {
    let data = record.get("data").cloned().unwrap_or(Value::Null);
    let slot = data.get("slot");
    let field = |v: Option<&Value>| match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let region = slot
        .and_then(|s| s.get("region"))
        .or_else(|| data.get("region"));
    let data_column = match record.get("undecodable") {
        Some(reason) => json!({"undecodable": reason}).to_string(),
        None => data.to_string(),
    };
    vec![
        field(record.get("seq")),
        field(record.get("stored_at")),
        field(record.get("subject")),
        field(record.get("type")),
        field(record.get("version")),
        field(record.get("occurred_at")),
        field(data.get("registration_id")),
        field(region),
        field(slot.and_then(|s| s.get("location"))),
        field(slot.and_then(|s| s.get("date"))),
        field(data.get("reason")),
        field(data.get("position")),
        data_column,
    ]
}

fn to_time(t: DateTime<Utc>) -> anyhow::Result<time::OffsetDateTime> {
    let nanos = t
        .timestamp_nanos_opt()
        .context("The time is out of range")?;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .context("The time is out of range")
}

fn from_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    let nanos = t.unix_timestamp_nanos();
    DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_a_sequence_or_a_time() {
        assert_eq!("42".parse::<Point>(), Ok(Point::Seq(42)));
        assert_eq!(
            "2027-03-01T08:00:00+01:00".parse::<Point>(),
            Ok(Point::Time("2027-03-01T07:00:00Z".parse().unwrap()))
        );
        assert!("yesterday".parse::<Point>().is_err());
    }

    #[test]
    fn unknown_event_types_are_refused_with_the_list() {
        assert!(check_types(&["SlotReserved".into()]).is_ok());
        let err = check_types(&["SlotReserverd".into()]).unwrap_err();
        assert!(
            err.contains("SlotReserverd") && err.contains("SlotRejected"),
            "{err}"
        );
    }

    #[test]
    fn a_submission_loses_its_personal_fields_unless_they_are_opened() {
        let keys = Keys::from_secret(streams::crypto::DEVELOPMENT_SECRET);
        let sample = streams::events::samples()
            .into_iter()
            .find(|e| e.event.event_type() == "RegistrationSubmitted")
            .unwrap();
        let now = Utc::now();
        let omitted = record(7, "reg.intake.x", now, &sample, &Personal::Omit, None).unwrap();
        for field in PERSONAL_FIELDS {
            assert!(omitted["data"].get(field).is_none(), "{field}: {omitted}");
        }
        assert_eq!(omitted["seq"], 7);
        assert!(omitted["data"]["registration_id"].is_string());
        let row = csv_row(&omitted);
        assert_eq!(row.len(), CSV_COLUMNS.len());
        assert_eq!(row[7], "mazowieckie");

        // Asked for, the opened data (or why not, e.g. erased) takes the sealed block's place.
        let erased = json!({"erased": true});
        let opened = record(
            7,
            "reg.intake.x",
            now,
            &sample,
            &Personal::Decrypt(keys),
            Some(erased.clone()),
        )
        .unwrap();
        assert_eq!(opened["data"]["personal"], erased, "{opened}");
    }
}
