//! Packed records against a real nats-server: records appended together share one message,
//! and every reader (ordered, durable, replay) gets each record, in order, exactly as if it
//! had been written alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::future::join_all;
use streams::config::{Replication, ensure_streams};
use streams::consume::{self, Decoded, DurableSpec, Health, OrderedSpec, OrderedStep, Outcome};
use streams::events::{DecodeError, Envelope, Event, NotificationSent};
use streams::model::{Region, RegistrationId};
use streams::pack::{PACK_HEADER, Packer, PackerOptions};
use streams::replay;
use streams::subjects;
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

fn region() -> Region {
    Region::parse("opolskie").unwrap()
}

fn sent(n: usize) -> Envelope {
    let id = RegistrationId::parse(&format!("opolskie.{n:032x}")).unwrap();
    Envelope::new(
        id.to_string(),
        Event::NotificationSent(NotificationSent {
            notification_id: format!("n{n}"),
            registration_id: id,
            channel: "email".into(),
            template: "reserved".into(),
            decision_seq: n as u64,
        }),
    )
}

fn notification_id(envelope: &Envelope) -> String {
    match &envelope.event {
        Event::NotificationSent(e) => e.notification_id.clone(),
        other => panic!("unexpected {}", other.event_type()),
    }
}

/// A nats-server with the streams, a packer and the region's notification subject.
async fn start() -> (NatsServer, jetstream::Context, Packer, String) {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let packer = Packer::start(client, PackerOptions::default());
    (
        nats,
        js,
        packer,
        subjects::notification_decisions(&region()),
    )
}

/// Reads every record of the decisions stream in order, through the ordered consumer loop.
struct Collect {
    records: Arc<Mutex<Vec<(u64, String)>>>,
    until: usize,
    stop: CancellationToken,
}

impl OrderedStep for Collect {
    async fn resume(&mut self) -> Result<consume::Start, consume::Halt> {
        Ok(consume::Start::At(1))
    }

    async fn handle(&mut self, group: Vec<Decoded>) -> Result<(), consume::Halt> {
        let mut records = self.records.lock().unwrap();
        records.extend(group.iter().map(|r| (r.seq, notification_id(&r.envelope))));
        if records.len() >= self.until {
            self.stop.cancel();
        }
        Ok(())
    }
}

#[tokio::test]
async fn records_queued_together_share_one_message_and_every_reader_gets_each_in_order() {
    let (_nats, js, packer, subject) = start().await;

    // Queued together on a current-thread runtime: the first write takes what has queued.
    let envelopes: Vec<Envelope> = (0..200).map(sent).collect();
    let seqs = join_all(envelopes.iter().map(|e| packer.append(subject.clone(), e)))
        .await
        .into_iter()
        .collect::<Result<Vec<u64>, _>>()
        .unwrap();
    // Then one alone, when nothing else waits: written as a plain envelope.
    let last = packer.append(subject.clone(), &sent(200)).await.unwrap();

    let stream = js.get_stream(subjects::DECISIONS_STREAM).await.unwrap();
    let messages = stream.get_info().await.unwrap().state.messages;
    assert!(
        messages <= 3,
        "201 records took {messages} messages: they were not packed"
    );
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert!(distinct.len() < seqs.len(), "records share messages");
    let alone = stream.get_raw_message(last).await.unwrap();
    assert!(!streams::pack::is_pack(&alone.payload));
    let packed = stream.get_raw_message(seqs[0]).await.unwrap();
    let count: usize = packed
        .headers
        .get(PACK_HEADER)
        .expect("a pack says how many records it holds")
        .as_str()
        .parse()
        .unwrap();
    assert_eq!(
        seqs.iter().filter(|s| **s == seqs[0]).count(),
        count,
        "the header counts the pack's records"
    );

    let expected: Vec<(u64, String)> = seqs
        .iter()
        .copied()
        .chain([last])
        .zip((0..=200).map(|n| format!("n{n}")))
        .collect();

    // Replay (analysts, rebuilds).
    let mut replayed = Vec::new();
    let count = replay::read_to_end(
        &js,
        subjects::DECISIONS_STREAM,
        subject.clone(),
        1,
        |record| replayed.push((record.seq, notification_id(&record.envelope.unwrap()))),
    )
    .await
    .unwrap();
    assert_eq!(count, 201);
    // A pack's records come in the order they queued, which the futures above do not fix.
    let sorted = |mut records: Vec<(u64, String)>| {
        records.sort();
        records
    };
    assert_eq!(
        sorted(replayed.clone()),
        sorted(expected),
        "replay: each record once, at its message's sequence"
    );

    // The ordered consumer loop (projections, processors).
    let records = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let health = Health::new(&prometheus::Registry::new());
    let spec = OrderedSpec {
        name: "pack-test".into(),
        stream: subjects::DECISIONS_STREAM,
        filter: subject.clone(),
        max_group: 10,
        linger: Duration::ZERO,
    };
    let mut step = Collect {
        records: records.clone(),
        until: 201,
        stop: stop.clone(),
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        consume::run_ordered(&js, &spec, &mut step, &health, &stop),
    )
    .await
    .expect("the ordered reader read every record");
    assert_eq!(
        *records.lock().unwrap(),
        replayed,
        "the ordered loop: the same records in the same order"
    );
}

#[tokio::test]
async fn a_durable_reader_acknowledges_a_pack_once_every_record_is_done() {
    let (_nats, js, packer, subject) = start().await;
    let envelopes: Vec<Envelope> = (0..20).map(sent).collect();
    join_all(envelopes.iter().map(|e| packer.append(subject.clone(), e)))
        .await
        .into_iter()
        .collect::<Result<Vec<u64>, _>>()
        .unwrap();

    // One record fails on its first try: its whole message comes again, and only once all
    // of its records are done is it acknowledged.
    let handled: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let stop = CancellationToken::new();
    let spec = DurableSpec {
        name: "pack_durable".into(),
        stream: subjects::DECISIONS_STREAM,
        consumer: pull::Config {
            filter_subject: subject.clone(),
            ..Default::default()
        },
        concurrency: 4,
    };
    let handle = |record: Decoded| {
        let (handled, stop) = (handled.clone(), stop.clone());
        async move {
            let id = notification_id(&record.envelope);
            let mut handled = handled.lock().unwrap();
            let times = handled.entry(id.clone()).or_default();
            *times += 1;
            let first = *times == 1;
            if handled.len() == 20 && handled.values().all(|t| *t >= 1) && handled["n7"] >= 2 {
                stop.cancel();
            }
            if id == "n7" && first {
                Outcome::Retry(Duration::from_millis(10))
            } else {
                Outcome::Done
            }
        }
    };
    let health = Health::new(&prometheus::Registry::new());
    tokio::time::timeout(
        Duration::from_secs(30),
        consume::run_durable(&js, &spec, handle, &health, &stop),
    )
    .await
    .expect("the durable reader handled every record");
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 20, "every record was handled");
    assert_eq!(handled["n7"], 2, "the failed record came again");

    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream(subjects::DECISIONS_STREAM)
        .await
        .unwrap()
        .get_consumer("pack_durable")
        .await
        .unwrap();
    let info = testkit::eventually("the pack acknowledged", Duration::from_secs(10), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info.clone())
        }
    })
    .await;
    let messages = js
        .get_stream(subjects::DECISIONS_STREAM)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages;
    assert!(
        info.delivered.consumer_sequence > messages,
        "the pack holding the failed record was delivered again, whole: {} deliveries of {messages} messages",
        info.delivered.consumer_sequence
    );
}

#[test]
fn a_pack_is_refused_whole_when_one_record_does_not_belong_or_it_is_empty() {
    let subject = subjects::notification_decisions(&region());
    let samples = streams::events::samples();
    let of = |t: &str| {
        samples
            .iter()
            .find(|e| e.event.event_type() == t)
            .unwrap()
            .encode()
    };
    let pack = |records: &[Vec<u8>]| {
        let mut out = b"[".to_vec();
        out.extend(records.join(&b','));
        out.push(b']');
        out
    };
    let good = pack(&[of("NotificationSent"), of("NotificationFailed")]);
    assert_eq!(Envelope::decode_all_from(&subject, &good).unwrap().len(), 2);
    // A reservation decision is not the notification processor's to write.
    let foreign = pack(&[of("NotificationSent"), of("SlotReserved")]);
    assert!(matches!(
        Envelope::decode_all_from(&subject, &foreign),
        Err(DecodeError::Foreign { .. })
    ));
    assert!(matches!(
        Envelope::decode_all_from(&subject, b"[]"),
        Err(DecodeError::EmptyPack)
    ));
    assert!(matches!(
        Envelope::decode_all_from(&subject, b"[{\"not\": \"an envelope\"}]"),
        Err(DecodeError::Malformed(_))
    ));
}
