//! The group committer against a real nats-server: fenced units share one atomic batch, and
//! a fence that no longer holds fails only its own unit.

use async_nats::jetstream;
use futures::future::join_all;
use streams::appender::{AppendError, Appender, AppenderOptions, Outgoing, Unit};
use streams::config::{Replication, ensure_streams};
use streams::subjects;
use testkit::NatsServer;

fn message(subject: String, body: &str) -> Outgoing {
    Outgoing {
        subject,
        headers: Default::default(),
        payload: body.to_owned().into(),
    }
}

/// A claim-like unit: a record on `key`'s claim subject, fenced, and an event beside it.
fn unit(key: &str, fence: u64) -> Unit {
    let region = streams::model::Region::parse("opolskie").unwrap();
    Unit::fenced(
        vec![
            message(subjects::claim(key), key),
            message(
                subjects::intake(&region, subjects::IntakeKind::Submitted),
                key,
            ),
        ],
        fence,
    )
}

/// A nats-server of its own with the streams, and an appender of the intake stream on it.
async fn started() -> (NatsServer, jetstream::Context, Appender) {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let appender = Appender::start(client, subjects::INTAKE_STREAM, AppenderOptions::default());
    (nats, js, appender)
}

#[tokio::test]
async fn a_broken_fence_fails_only_its_unit_and_the_rest_of_the_batch_is_stored() {
    let (_nats, js, appender) = started().await;
    let taken = appender.append_unit(unit("taken", 0)).await.unwrap();
    assert_eq!(taken, vec![1, 2]);

    // Queued together on a current-thread runtime, so they meet in one batch: twenty new
    // citizens, one whose subject is no longer empty, and two racing for one new subject.
    let mut units: Vec<Unit> = (0..20).map(|i| unit(&format!("new{i}"), 0)).collect();
    units.push(unit("taken", 0));
    units.push(unit("raced", 0));
    units.push(unit("raced", 0));
    let results = join_all(units.into_iter().map(|u| appender.append_unit(u))).await;

    for (i, result) in results[..20].iter().enumerate() {
        let seqs = result.as_ref().unwrap_or_else(|e| panic!("unit {i}: {e}"));
        assert_eq!(seqs.len(), 2);
        assert_eq!(seqs[1], seqs[0] + 1, "a unit's messages are contiguous");
    }
    assert!(
        matches!(&results[20], Err(AppendError::Moved { last: Some(m) }) if m.sequence == 1),
        "{:?}",
        results[20]
    );
    let raced: Vec<_> = results[21..].iter().map(Result::is_ok).collect();
    assert_eq!(
        raced.iter().filter(|ok| **ok).count(),
        1,
        "exactly one of two writers fenced on the same empty subject wins: {:?}",
        &results[21..]
    );

    // What the stream holds is exactly the winners: nothing of a refused unit.
    let mut stream = js.get_stream(subjects::INTAKE_STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 2 + 20 * 2 + 2);
    let last = stream
        .direct_get_last_for_subject(subjects::claim("taken"))
        .await
        .unwrap();
    assert_eq!(last.sequence, 1, "the refused unit left no claim behind");

    // A fence at the subject's current sequence holds: writing behind the last record.
    let behind = appender.append_unit(unit("taken", 1)).await.unwrap();
    assert_eq!(behind.len(), 2);
}

/// Batches start at least `min_interval` apart, so what arrives meanwhile waits and joins
/// the next one; a unit arriving after a quiet spell longer than that goes at once.
#[tokio::test]
async fn batches_start_at_least_the_minimum_interval_apart() {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    ensure_streams(&jetstream::new(client.clone()), Replication(1))
        .await
        .unwrap();
    let interval = std::time::Duration::from_secs(1);
    let appender = Appender::start(
        client.clone(),
        subjects::INTAKE_STREAM,
        AppenderOptions {
            min_interval: interval,
            ..Default::default()
        },
    );
    let region = streams::model::Region::parse("opolskie").unwrap();
    let subject = || subjects::intake(&region, subjects::IntakeKind::Submitted);
    let started = tokio::time::Instant::now();
    appender.append(message(subject(), "first")).await.unwrap();
    appender.append(message(subject(), "second")).await.unwrap();
    assert!(
        started.elapsed() >= interval,
        "the second batch started {:?} after the first",
        started.elapsed()
    );
    // A quiet spell as long as the interval: the next unit does not wait for it.
    tokio::time::sleep(interval).await;
    let quiet = tokio::time::Instant::now();
    appender.append(message(subject(), "third")).await.unwrap();
    assert!(quiet.elapsed() < interval, "waited {:?}", quiet.elapsed());
}

/// A unit with a use-once subject (a waiting-room ticket) beside its claim: a second use is
/// refused whether it comes later or in the same batch, by another citizen, and the refused
/// unit stores nothing; a moved claim is still reported as moved, before the ticket.
#[tokio::test]
async fn a_subject_written_once_refuses_its_second_use_and_stores_nothing_of_it() {
    let (_nats, js, appender) = started().await;
    let ticket = |id: &str| message(subjects::ticket(id), id);
    let first = appender
        .append_unit(unit("alice", 0).once(ticket("t1")))
        .await
        .unwrap();
    assert_eq!(first.len(), 3);

    // Later, by another citizen.
    let again = appender
        .append_unit(unit("bob", 0).once(ticket("t1")))
        .await;
    assert!(
        matches!(&again, Err(AppendError::Taken { subject }) if *subject == subjects::ticket("t1")),
        "{again:?}"
    );
    // In one batch: two citizens with one new ticket, and ten with tickets of their own.
    let mut units = vec![
        unit("carol", 0).once(ticket("t2")),
        unit("dave", 0).once(ticket("t2")),
    ];
    units.extend((0..10).map(|i| unit(&format!("e{i}"), 0).once(ticket(&format!("u{i}")))));
    // The claim moved (alice holds one) and the ticket is used: the claim answers first.
    units.push(unit("alice", 0).once(ticket("t1")));
    let results = join_all(units.into_iter().map(|u| appender.append_unit(u))).await;
    let t2: Vec<bool> = results[..2].iter().map(Result::is_ok).collect();
    assert_eq!(
        t2.iter().filter(|ok| **ok).count(),
        1,
        "{:?}",
        &results[..2]
    );
    assert!(
        results[..2]
            .iter()
            .any(|r| matches!(r, Err(AppendError::Taken { .. }))),
        "{:?}",
        &results[..2]
    );
    for result in &results[2..12] {
        assert_eq!(result.as_ref().map(Vec::len).unwrap(), 3);
    }
    assert!(
        matches!(&results[12], Err(AppendError::Moved { last: Some(_) })),
        "{:?}",
        results[12]
    );
    // Stored: alice's three, one of carol and dave's three, and the ten: nothing of bob's.
    let mut stream = js.get_stream(subjects::INTAKE_STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    assert_eq!(state.messages, 3 + 3 + 10 * 3);
    assert!(
        stream
            .direct_get_last_for_subject(subjects::claim("bob"))
            .await
            .is_err(),
        "the refused citizen holds no claim"
    );
}
