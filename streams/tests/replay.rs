//! Reading the log back in groups, against a real nats-server.

use std::time::Duration;

use async_nats::jetstream;
use streams::config::{Replication, ensure_streams};
use streams::replay::{self, Record};
use streams::subjects;
use testkit::NatsServer;

#[tokio::test]
async fn groups_keep_log_order_never_exceed_their_size_and_gather_what_arrives_while_they_linger() {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let region = streams::model::Region::parse("opolskie").unwrap();
    let subject = subjects::intake(&region, subjects::IntakeKind::Submitted);
    let publish = |js: jetstream::Context, body: &'static str| {
        let subject = subject.clone();
        async move {
            js.publish(subject, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    for _ in 0..7 {
        publish(js.clone(), "early").await;
    }
    let (mut messages, pending) = replay::ordered(&js, subjects::INTAKE_STREAM, subject.clone(), 1)
        .await
        .unwrap();
    assert_eq!(pending, 7);
    let seqs = |group: Vec<jetstream::Message>| -> Vec<u64> {
        group
            .iter()
            .map(|m| Record::from_message(m).unwrap()[0].seq)
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

    // A message published while a group lingers joins it.
    publish(js.clone(), "now").await;
    let later = {
        let later = publish(js.clone(), "later");
        tokio::spawn(async move {
            // The arrival the linger exists for: some time after the group's first message.
            tokio::time::sleep(Duration::from_millis(50)).await;
            later.await;
        })
    };
    let lingered = replay::next_group(&mut messages, 2, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    later.await.unwrap();
    assert_eq!(seqs(lingered), vec![8, 9]);

    // Without a linger a group is what has arrived: the next message published, alone.
    publish(js.clone(), "late").await;
    let late = replay::next_group(&mut messages, 100, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(late), vec![10]);
}
