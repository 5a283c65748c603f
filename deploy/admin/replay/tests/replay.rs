//! The analysts' replay against a real nats-server: bounds, filters, formats, personal data,
//! and the `replay` command line.

use std::process::Command;

use async_nats::jetstream;
use chrono::NaiveDate;
use replay::{self as export, Format, Personal, Point, Replay, Stream};
use serde_json::Value;
use streams::crypto::{DEVELOPMENT_SECRET, Keys};
use streams::events::{Envelope, Event, PersonalData};
use streams::model::Region;
use streams::subjects::{self, IntakeKind};
use testkit::NatsServer;

const NAME: &str = "Anna Replay-Testowa";
const NATIONAL_ID: &str = "44051401359";

fn sample(event_type: &str) -> Envelope {
    streams::events::samples()
        .into_iter()
        .find(|e| e.event.event_type() == event_type)
        .unwrap()
}

/// Twelve decisions alternating between two regions (every third a rejection) and one
/// submission sealed under the development secret. Returns the decision sequences.
async fn seed(js: &jetstream::Context) -> Vec<(u64, String, &'static str)> {
    streams::config::ensure_streams(js, streams::config::Replication(1))
        .await
        .unwrap();
    let mut submitted = sample("RegistrationSubmitted");
    if let Event::RegistrationSubmitted(s) = &mut submitted.event {
        s.personal = Keys::from_secret(DEVELOPMENT_SECRET).seal(
            &s.registration_id,
            &PersonalData {
                national_id: NATIONAL_ID.into(),
                full_name: NAME.into(),
                birth_date: NaiveDate::from_ymd_opt(1944, 5, 14).unwrap(),
                email: Some("anna@example.pl".into()),
                phone: None,
                attributes: Default::default(),
            },
        );
    }
    let region = Region::parse("mazowieckie").unwrap();
    js.publish(
        subjects::intake(&region, IntakeKind::Submitted),
        submitted.encode().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut published = Vec::new();
    for i in 0..12 {
        let region = Region::parse(["mazowieckie", "malopolskie"][i % 2]).unwrap();
        let mut event = sample(if i % 3 == 2 {
            "SlotRejected"
        } else {
            "SlotReserved"
        });
        match &mut event.event {
            Event::SlotReserved(e) => e.slot.region = region.clone(),
            Event::SlotRejected(e) => e.slot.region = region.clone(),
            _ => unreachable!(),
        }
        let ack = js
            .publish(
                subjects::reservation_decisions(&region),
                event.encode().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        published.push((
            ack.sequence,
            region.as_str().to_owned(),
            event.event.event_type(),
        ));
    }
    published
}

async fn run(js: &jetstream::Context, replay: &Replay) -> (String, export::Summary) {
    let mut out = Vec::new();
    let mut last = (0, 0);
    let summary = export::replay(js, replay, &mut out, &mut |read, total| {
        last = (read, total)
    })
    .await
    .unwrap();
    assert_eq!(last.0, summary.read, "progress reached the end");
    (String::from_utf8(out).unwrap(), summary)
}

fn all(stream: Stream) -> Replay {
    Replay {
        stream,
        from: None,
        to: None,
        region: None,
        types: Vec::new(),
        format: Format::Ndjson,
        personal: Personal::Omit,
    }
}

fn lines(ndjson: &str) -> Vec<Value> {
    ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_replay_reads_in_order_within_its_bounds_and_filters() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    let published = seed(&js).await;

    // Everything, in stream order.
    let (out, summary) = run(&js, &all(Stream::Decisions)).await;
    let seqs: Vec<u64> = lines(&out)
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, published.iter().map(|p| p.0).collect::<Vec<_>>());
    assert_eq!((summary.read, summary.written), (12, 12));
    assert_eq!(summary.by_type["SlotRejected"], 4);

    // One region, one type, between two sequences.
    let (from, to) = (published[2].0, published[9].0);
    let (out, _) = run(
        &js,
        &Replay {
            from: Some(Point::Seq(from)),
            to: Some(Point::Seq(to)),
            region: Some(Region::parse("mazowieckie").unwrap()),
            types: vec!["SlotReserved".into()],
            ..all(Stream::Decisions)
        },
    )
    .await;
    let want: Vec<u64> = published
        .iter()
        .filter(|(seq, region, kind)| {
            (from..=to).contains(seq) && region == "mazowieckie" && *kind == "SlotReserved"
        })
        .map(|p| p.0)
        .collect();
    let got: Vec<u64> = lines(&out)
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);

    // By time: from a moment after everything was stored, nothing.
    let later = chrono::Utc::now() + chrono::Duration::seconds(5);
    let (out, summary) = run(
        &js,
        &Replay {
            from: Some(Point::Time(later)),
            ..all(Stream::Decisions)
        },
    )
    .await;
    assert!(out.is_empty() && summary.read == 0);
    // Up to a moment before anything was stored, nothing either; up to now, everything.
    let (_, summary) = run(
        &js,
        &Replay {
            to: Some(Point::Time(chrono::Utc::now())),
            ..all(Stream::Decisions)
        },
    )
    .await;
    assert_eq!(summary.read, 12);

    // CSV: a header and one row per event, the region in its column.
    let (out, _) = run(
        &js,
        &Replay {
            format: Format::Csv,
            region: Some(Region::parse("malopolskie").unwrap()),
            ..all(Stream::Decisions)
        },
    )
    .await;
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(headers.iter().collect::<Vec<_>>(), export::CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| &r[7] == "malopolskie"));
}

#[tokio::test]
async fn personal_data_is_left_out_unless_decrypted_with_the_key() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    seed(&js).await;

    let (out, _) = run(&js, &all(Stream::Intake)).await;
    assert!(!out.contains(NAME) && !out.contains(NATIONAL_ID), "{out}");
    for field in ["personal", "citizen_key", "request_hash"] {
        assert!(!out.contains(field), "{field} in {out}");
    }
    let (out, _) = run(&js, &all(Stream::Decisions)).await;
    assert!(!out.contains("citizen_key"), "{out}");

    let (out, _) = run(
        &js,
        &Replay {
            personal: Personal::Decrypt(Keys::from_secret(DEVELOPMENT_SECRET)),
            ..all(Stream::Intake)
        },
    )
    .await;
    let record = &lines(&out)[0];
    assert_eq!(record["data"]["personal"]["full_name"], NAME);
    assert_eq!(record["data"]["personal"]["national_id"], NATIONAL_ID);
}

#[tokio::test]
async fn the_command_line_writes_a_csv_of_one_regions_decisions() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    seed(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mazowieckie.csv");

    let output = Command::new(env!("CARGO_BIN_EXE_replay"))
        .args([
            "decisions",
            "--region",
            "mazowieckie",
            "--format",
            "csv",
            "-o",
        ])
        .arg(&file)
        .env("REG_NATS_URL", nats.url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("Read 6 events"), "{stderr}");
    let csv = std::fs::read_to_string(&file).unwrap();
    assert_eq!(csv.lines().count(), 7, "{csv}");

    // A typo in an event type is an error naming the known ones, not an empty file.
    let output = Command::new(env!("CARGO_BIN_EXE_replay"))
        .args(["decisions", "--type", "SlotReserverd"])
        .env("REG_NATS_URL", nats.url())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("SlotRejected"));

    // Decrypting without the key is refused before anything is read.
    let output = Command::new(env!("CARGO_BIN_EXE_replay"))
        .args(["intake", "--decrypt-personal"])
        .env("REG_NATS_URL", nats.url())
        .env_remove("REG_SECRET")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("REG_SECRET"));
}

/// A subject carries only the event types its writer owns: a confirmation on the notification
/// subject (which the notification processor's identity may append to) is written by an
/// analyst's replay as undecodable, never as a confirmation. The projections' worker and
/// rebuild refuse it too (`projections/tests/ownership.rs`).
#[tokio::test]
async fn a_decision_on_the_notification_subject_is_written_as_undecodable() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    streams::config::ensure_streams(&js, streams::config::Replication(1))
        .await
        .unwrap();
    let region = Region::parse("mazowieckie").unwrap();
    let append = async |subject: String, envelope: &Envelope| {
        js.publish(subject, envelope.encode().into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    append(
        subjects::reservation_decisions(&region),
        &sample("SlotReserved"),
    )
    .await;
    let foreign = append(
        subjects::notification_decisions(&region),
        &sample("RegistrationConfirmed"),
    )
    .await;

    let (out, summary) = run(&js, &all(Stream::Decisions)).await;
    assert_eq!((summary.read, summary.undecodable), (2, 1), "{out}");
    let refused = &lines(&out)[1];
    assert_eq!(refused["seq"], foreign);
    assert!(
        refused["undecodable"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{refused}"
    );
}

/// A pack (the notification processor's records of messages sent, many in one message) is
/// written as one line per record, each at the message's sequence; a `--type` filter picks
/// records, not messages.
#[tokio::test]
async fn each_record_of_a_pack_is_a_line_at_its_messages_sequence() {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    streams::config::ensure_streams(&js, streams::config::Replication(1))
        .await
        .unwrap();
    let region = Region::parse("mazowieckie").unwrap();
    let packer = streams::pack::Packer::start(client, Default::default());
    let subject = subjects::notification_decisions(&region);
    let (sent, failed) = (sample("NotificationSent"), sample("NotificationFailed"));
    let (a, b) = tokio::join!(
        packer.append(subject.clone(), &sent),
        packer.append(subject.clone(), &failed)
    );
    let seq = a.unwrap();
    assert_eq!(b.unwrap(), seq, "one pack");

    let (out, summary) = run(&js, &all(Stream::Decisions)).await;
    assert_eq!((summary.read, summary.written), (1, 2), "{out}");
    let written = lines(&out);
    assert_eq!(
        written
            .iter()
            .map(|l| (l["seq"].as_u64().unwrap(), l["type"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [(seq, "NotificationSent"), (seq, "NotificationFailed")]
    );

    let only_failed = Replay {
        types: vec!["NotificationFailed".into()],
        ..all(Stream::Decisions)
    };
    let (out, summary) = run(&js, &only_failed).await;
    assert_eq!((summary.read, summary.written), (1, 1), "{out}");
    assert_eq!(lines(&out)[0]["type"], "NotificationFailed");
}
