//! Reading the log back in groups, against a real nats-server.

use std::time::Duration;

use async_nats::jetstream;
use streams::config::{Replication, ensure_streams};
use streams::replay::{self, Record};
use streams::subjects;
use testkit::NatsServer;

#[tokio::test]
async fn groups_keep_log_order_never_exceed_their_size_and_wait_only_their_linger() {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let region = streams::model::Region::parse("opolskie").unwrap();
    let subject = subjects::intake(&region, subjects::IntakeKind::Submitted);
    for i in 0..7u32 {
        js.publish(subject.clone(), i.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (mut messages, pending) = replay::ordered(&js, subjects::INTAKE_STREAM, subject.clone(), 1)
        .await
        .unwrap();
    assert_eq!(pending, 7);
    let seqs = |group: Vec<jetstream::Message>| -> Vec<u64> {
        group
            .iter()
            .map(|m| Record::from_message(m).unwrap().seq)
            .collect()
    };

    // A long linger is cut short by a full group.
    let full = replay::next_group(&mut messages, 3, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(full), vec![1, 2, 3]);

    // A group that cannot fill ends with its linger, holding everything there was, in order.
    let rest = replay::next_group(&mut messages, 100, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(rest), vec![4, 5, 6, 7]);

    // The next group starts with the next message published, whenever it comes.
    js.publish(subject, "late".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let late = replay::next_group(&mut messages, 100, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(late), vec![8]);
}
