//! A subject carries only the event types its writer owns. The server lets an identity append
//! to the subjects it writes, whatever the payload; the readers refuse, on each subject, every
//! event type its writer does not own, exactly as they refuse a record they cannot decode.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use nats_accounts::{Accounts, Service};
use streams::consume::{self, Halt};
use streams::model::Region;
use streams::replay::{self, Record};
use streams::subjects::{self, IntakeKind, RegionFilter, SubjectKind};

use crate::helpers::{connect, create_streams, server};

/// One appended record: where, what, by whom, and whether its subject's writer owns its type.
#[derive(Debug)]
struct Appended {
    subject: String,
    event_type: &'static str,
    writer: &'static str,
    owned: bool,
}

/// Every event type appended on every event subject by every identity allowed to append
/// there: the server stores them all, and every reader (the services' consumer loops, the
/// replays, rebuilds and recoveries) decodes the owned ones and refuses each foreign one as
/// undecodable. Before the fix, the foreign ones decoded (a `CancellationRequested` appended
/// with the verification identity cancelled a confirmed citizen).
#[tokio::test]
async fn every_foreign_event_type_on_every_subject_is_refused_by_the_readers() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let region = Region::parse("mazowieckie").unwrap();
    let samples = streams::events::samples();
    let mut appended: BTreeMap<(&'static str, u64), Appended> = BTreeMap::new();
    for kind in SubjectKind::ALL {
        let subject = kind.subject(&region);
        let stream = match kind {
            SubjectKind::Intake(_) => subjects::INTAKE_STREAM,
            _ => subjects::DECISIONS_STREAM,
        };
        let writers: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|service| service.may_publish(&subject))
            .collect();
        assert!(!writers.is_empty(), "nobody writes {subject}");
        for writer in writers {
            let js = async_nats::jetstream::new(connect(&nats, &accounts, writer).await);
            for sample in &samples {
                let ack = js
                    .publish(subject.clone(), sample.encode().into())
                    .await
                    .unwrap_or_else(|e| panic!("{subject} is sent: {e}"))
                    .await
                    .unwrap_or_else(|e| panic!("{subject} is stored: {e}"));
                let event_type = sample.event.event_type();
                appended.insert(
                    (stream, ack.sequence),
                    Appended {
                        subject: subject.clone(),
                        event_type,
                        writer: writer.user(),
                        owned: kind.event_types().contains(&event_type),
                    },
                );
            }
        }
    }
    let foreign = appended.values().filter(|a| !a.owned).count();
    assert!(foreign > 200, "{foreign} foreign records appended");

    let js = async_nats::jetstream::new(connect(&nats, &accounts, Service::Admin).await);
    let streams = [
        (
            subjects::INTAKE_STREAM,
            subjects::intake_filter(&RegionFilter::All),
        ),
        (
            subjects::DECISIONS_STREAM,
            subjects::decisions_filter(&RegionFilter::All),
        ),
    ];
    let mut wrong = Vec::new();
    for (stream, filter) in streams {
        // The replays, rebuilds and recoveries.
        replay::read_to_end(&js, stream, filter.clone(), 1, |record: Record| {
            let a = &appended[&(stream, record.seq)];
            if record.envelope.is_ok() != a.owned {
                wrong.push(format!(
                    "replay: {} on {} by {}: {:?}",
                    a.event_type,
                    a.subject,
                    a.writer,
                    record.envelope.map(|_| "decoded")
                ));
            }
        })
        .await
        .unwrap();
        // The services' consumer loops.
        let (mut messages, pending) = replay::ordered(&js, stream, filter, 1).await.unwrap();
        for _ in 0..pending {
            let message = messages.next().await.unwrap().unwrap();
            let seq = message.info().unwrap().stream_sequence;
            let a = &appended[&(stream, seq)];
            match (consume::decode(stream, &message), a.owned) {
                (Ok(_), true) => {}
                (Err(Halt::Undecodable(why)), false) => {
                    assert_eq!((why.seq, why.subject.as_str()), (seq, a.subject.as_str()));
                }
                (outcome, _) => wrong.push(format!(
                    "consumer: {} on {} by {}: {}",
                    a.event_type,
                    a.subject,
                    a.writer,
                    match outcome {
                        Ok(_) => "decoded".to_owned(),
                        Err(Halt::Undecodable(why)) => why.to_string(),
                        Err(_) => "failed".to_owned(),
                    }
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} records read wrongly:\n{}",
        wrong.len(),
        2 * appended.len(),
        wrong.join("\n")
    );
    // The reported case is among them.
    assert!(
        appended
            .values()
            .any(|a| a.event_type == "CancellationRequested"
                && a.subject == subjects::intake(&region, IntakeKind::Verification)
                && a.writer == Service::Verification.user())
    );
}
