use std::time::Duration;

use nats_accounts::{Accounts, Service};
use streams::model::Region;
use streams::subjects::{self, IntakeKind};

use crate::helpers::{connect, create_streams, held, refusal, server, watched};

fn region() -> Region {
    Region::parse("mazowieckie").unwrap()
}

/// A JetStream publish as `client`, acknowledged by the stream.
async fn append(client: &async_nats::Client, subject: String) {
    async_nats::jetstream::new(client.clone())
        .publish(subject.clone(), "{}".into())
        .await
        .unwrap_or_else(|e| panic!("{subject} is sent: {e}"))
        .await
        .unwrap_or_else(|e| panic!("{subject} is acknowledged: {e}"));
}

/// Publishes `subject` as the watched client and waits for the server's refusal; then the
/// stream holds nothing on it.
async fn refused_publish(
    client: &async_nats::Client,
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subject: &str,
) {
    client
        .publish(subject.to_owned(), "{}".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    refusal(errors, "publish", subject).await;
}

#[tokio::test]
async fn the_edge_appends_submissions_and_claims_but_no_decision() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let (edge, mut errors) = watched(&nats, &accounts, Service::Ingest).await;
    let r = region();

    append(&edge, subjects::intake(&r, IntakeKind::Submitted)).await;
    append(&edge, subjects::claim("c0ffee")).await;
    append(&edge, subjects::idempotency_key("c0ffee")).await;
    for forbidden in [
        subjects::reservation_decisions(&r),
        subjects::notification_decisions(&r),
        subjects::intake(&r, IntakeKind::Verification),
        subjects::intake(&r, IntakeKind::Waitlist),
    ] {
        refused_publish(&edge, &mut errors, &forbidden).await;
    }
    // A refused publish never reached a stream; the allowed ones did.
    let decisions = subjects::DECISIONS_STREAM;
    assert_eq!(
        held(
            &nats,
            &accounts,
            decisions,
            &subjects::reservation_decisions(&r)
        )
        .await,
        0
    );
    let verdicts = subjects::intake(&r, IntakeKind::Verification);
    assert_eq!(
        held(&nats, &accounts, subjects::INTAKE_STREAM, &verdicts).await,
        0
    );
    let submitted = subjects::intake(&r, IntakeKind::Submitted);
    assert_eq!(
        held(&nats, &accounts, subjects::INTAKE_STREAM, &submitted).await,
        1
    );
    // The server logs each refusal (the pipeline test relies on it to find none).
    let log = nats.log();
    assert!(log.contains(streams::accounts::VIOLATION_LOG), "{log}");
}

#[tokio::test]
async fn the_read_api_publishes_nothing_but_reads_both_streams() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let r = region();
    let edge = connect(&nats, &accounts, Service::Ingest).await;
    append(&edge, subjects::intake(&r, IntakeKind::Capacity)).await;
    let (read_api, mut errors) = watched(&nats, &accounts, Service::Projections).await;

    let mut forbidden = vec![
        subjects::reservation_decisions(&r),
        subjects::notification_decisions(&r),
        subjects::claim("c0ffee"),
        format!(
            "$KV.{}.reservation.region.mazowieckie",
            subjects::LEASES_BUCKET
        ),
        format!("$JS.API.STREAM.UPDATE.{}", subjects::INTAKE_STREAM),
        format!("$JS.API.STREAM.DELETE.{}", subjects::DECISIONS_STREAM),
        format!("$JS.API.STREAM.PURGE.{}", subjects::INTAKE_STREAM),
        format!("$JS.API.STREAM.MSG.DELETE.{}", subjects::INTAKE_STREAM),
    ];
    for kind in IntakeKind::ALL {
        forbidden.push(subjects::intake(&r, kind));
    }
    for subject in &forbidden {
        refused_publish(&read_api, &mut errors, subject).await;
    }
    // Subscribing to the data or to another identity's replies is refused too.
    for subject in [
        "reg.>".to_owned(),
        format!("{}.>", streams::accounts::inbox_prefix("reg-ingest")),
    ] {
        let _subscription = read_api.subscribe(subject.clone()).await.unwrap();
        read_api.flush().await.unwrap();
        refusal(&mut errors, "subscription", &subject).await;
    }
    assert_eq!(
        held(
            &nats,
            &accounts,
            subjects::INTAKE_STREAM,
            &subjects::intake(&r, IntakeKind::Capacity)
        )
        .await,
        1,
        "the refused capacity publish added nothing"
    );

    // What the read API needs still works: an ordered consumer reads the intake stream.
    let read_api = connect(&nats, &accounts, Service::Projections).await;
    let js = async_nats::jetstream::new(read_api);
    streams::config::bind_streams(&js, streams::config::Replication(1))
        .await
        .expect("the read API binds");
    let (records, _) = streams::replay::ordered(
        &js,
        subjects::INTAKE_STREAM,
        subjects::intake_filter(&subjects::RegionFilter::All),
        1,
    )
    .await
    .expect("the read API creates an ordered consumer");
    use futures::StreamExt as _;
    let mut records = records;
    let first = tokio::time::timeout(Duration::from_secs(10), records.next())
        .await
        .expect("a message within the deadline")
        .expect("a message")
        .expect("readable");
    assert_eq!(
        first.subject.as_str(),
        subjects::intake(&r, IntakeKind::Capacity)
    );
}

#[tokio::test]
async fn verification_appends_verdicts_and_cannot_touch_capacity() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let r = region();
    let (verifier, mut errors) = watched(&nats, &accounts, Service::Verification).await;

    append(&verifier, subjects::intake(&r, IntakeKind::Verification)).await;
    for forbidden in [
        subjects::intake(&r, IntakeKind::Capacity),
        subjects::intake(&r, IntakeKind::Window),
        subjects::intake(&r, IntakeKind::Submitted),
        subjects::reservation_decisions(&r),
        format!("$JS.API.STREAM.UPDATE.{}", subjects::INTAKE_STREAM),
    ] {
        refused_publish(&verifier, &mut errors, &forbidden).await;
    }
    let capacity = subjects::intake(&r, IntakeKind::Capacity);
    assert_eq!(
        held(&nats, &accounts, subjects::INTAKE_STREAM, &capacity).await,
        0
    );
}

#[tokio::test]
async fn only_the_admin_creates_streams_the_services_bind() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    let replicas = streams::config::Replication(1);
    let edge = async_nats::jetstream::new(connect(&nats, &accounts, Service::Ingest).await);
    assert!(
        streams::config::bind_streams(&edge, replicas)
            .await
            .is_err(),
        "nothing to bind to before the admin created the streams"
    );
    // A service with stream management turned on is refused (its update request times out
    // unanswered: the server dropped it).
    let err = streams::config::ensure_streams(&edge, replicas)
        .await
        .expect_err("the edge may not create streams");
    assert!(
        format!("{err:#}").contains("Failed to create or update stream"),
        "{err:#}"
    );

    create_streams(&nats, &accounts).await;
    for service in [
        Service::Ingest,
        Service::Reservation,
        Service::Verification,
        Service::Notification,
        Service::Projections,
    ] {
        let js = async_nats::jetstream::new(connect(&nats, &accounts, service).await);
        streams::config::bind_streams(&js, replicas)
            .await
            .unwrap_or_else(|e| panic!("{service:?} binds: {e:#}"));
    }
    // A wrong password is refused at once.
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password(Service::Admin.user().into(), "not-the-password".into())
        .connect(nats.url())
        .await;
    assert!(wrong.is_err(), "a wrong password connects");
}

/// The edge and the waiting-room controller (the reservation identity) follow the waiting-room
/// bucket with a watch, writing their own keys; a watch that falls megabytes behind answers
/// the server's flow control. Without that permission the watch stopped for good in the
/// surge benchmark: every edge kept an old serving place and nobody else was admitted.
#[tokio::test]
async fn the_edge_and_the_controller_follow_the_waiting_rooms_through_flow_control() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let r = region();
    // The edges write the counts; each identity follows them.
    let writer = async_nats::jetstream::new(connect(&nats, &accounts, Service::Ingest).await)
        .get_key_value(subjects::WAITING_ROOM_BUCKET)
        .await
        .expect("the edge opens the bucket");
    for (round, service) in [Service::Ingest, Service::Reservation]
        .into_iter()
        .enumerate()
    {
        let (client, mut errors) = watched(&nats, &accounts, service).await;
        let js = async_nats::jetstream::new(client.clone());
        let bucket = js
            .get_key_value(subjects::WAITING_ROOM_BUCKET)
            .await
            .expect("the bucket opens");
        let rooms = streams::waiting_room::Rooms::default();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(rooms.clone().follow(bucket.clone(), stop.clone()));
        // 6 MiB of counts through the watch: far past what a push consumer sends before
        // it asks for flow control.
        let mut counts = streams::waiting_room::Counts::default();
        for second in 0..8_000 {
            counts.issued.insert(1_800_000_000 + second, 1_000);
        }
        let value = serde_json::to_vec(&counts).unwrap();
        for edge in 0..60 {
            writer
                .put(
                    subjects::room_counts(&r, &format!("edge{round}-{edge}")),
                    value.clone().into(),
                )
                .await
                .unwrap_or_else(|e| panic!("an edge writes its counts: {e}"));
        }
        testkit::eventually(
            &format!("{service:?} to see every edge's counts"),
            Duration::from_secs(30),
            || async { (rooms.reporting(&r) == 60 * (round + 1)).then_some(()) },
        )
        .await;
        stop.cancel();
        assert!(
            errors.try_recv().is_err(),
            "{service:?} was refused something while following the bucket"
        );
    }
}

/// The controller paces headroom-paced rooms by what it measures: the reservation lease and
/// the lists of both streams' consumers. The reservation identity it runs as may ask for
/// them, and the stages it finds are the ones other identities created.
#[tokio::test]
async fn the_controller_measures_the_pipeline_behind_a_room_with_its_own_permissions() {
    let accounts = Accounts::generate();
    let nats = server(&accounts);
    create_streams(&nats, &accounts).await;
    let r = region();
    // A verification processor's durable consumer, created by its own identity.
    let verifier =
        async_nats::jetstream::new(connect(&nats, &accounts, Service::Verification).await);
    verifier
        .get_stream(subjects::DECISIONS_STREAM)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(subjects::verification_consumer(&r)),
            filter_subject: subjects::reservation_decisions(&r),
            ..Default::default()
        })
        .await
        .expect("the verification identity creates its consumer");
    let (client, mut errors) = watched(&nats, &accounts, Service::Reservation).await;
    let js = async_nats::jetstream::new(client);
    let leases = js.get_key_value(subjects::LEASES_BUCKET).await.unwrap();
    let measured = streams::waiting_room::measure(&js, &leases, std::slice::from_ref(&r))
        .await
        .expect("the controller measures");
    let pressure = &measured[&r];
    let stages: Vec<_> = pressure
        .stages
        .iter()
        .map(|stage| (stage.name.clone(), stage.pending))
        .collect();
    assert_eq!(stages, vec![(subjects::verification_consumer(&r), 0)]);
    // Nobody holds the region's reservation lease here.
    assert!(pressure.stalled.is_some());
    assert!(
        errors.try_recv().is_err(),
        "the controller was refused something while measuring"
    );
}
