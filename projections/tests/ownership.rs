//! The projections against a record on a subject its writer does not own: the worker and the
//! rebuild stop there.

use async_nats::jetstream;
use streams::events::Envelope;
use streams::model::Region;
use streams::subjects;
use testkit::NatsServer;

fn sample(event_type: &str) -> Envelope {
    streams::events::samples()
        .into_iter()
        .find(|e| e.event.event_type() == event_type)
        .unwrap()
}

/// A subject carries only the event types its writer owns: a confirmation on the notification
/// subject (which the notification processor's identity may append to) is refused by every
/// reader of the projections as a record it cannot decode. The live worker stops at it with
/// its checkpoint before it and the registration is not confirmed; a rebuild fails there (an
/// analyst's replay writes it as undecodable: `deploy/admin/replay/tests/replay.rs`).
#[tokio::test]
async fn a_decision_on_the_notification_subject_is_refused_by_the_projections() {
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    streams::config::ensure_streams(&js, streams::config::Replication(1))
        .await
        .unwrap();
    let region = Region::parse("mazowieckie").unwrap();
    let reserved = sample("SlotReserved");
    let id = reserved.event.registration_id().unwrap().to_string();
    let append = async |subject: String, envelope: &Envelope| {
        js.publish(subject, envelope.encode().into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    };
    let owned = append(subjects::reservation_decisions(&region), &reserved).await;
    let foreign = append(
        subjects::notification_decisions(&region),
        &sample("RegistrationConfirmed"),
    )
    .await;

    let (stream, filter) = projections::worker::projected_streams()[1].clone();
    assert_eq!(stream, subjects::DECISIONS_STREAM);
    let store = projections::store::Store::open(&projections::store::StoreOptions::new("mem://"))
        .await
        .unwrap();
    let metrics = projections::metrics::Metrics::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(projections::worker::project(
        js.clone(),
        store.clone(),
        stream,
        filter.clone(),
        std::time::Duration::ZERO,
        metrics.clone(),
        shutdown.clone(),
    ));
    let stall = testkit::eventually(
        "the decisions worker to stop at the foreign record",
        std::time::Duration::from_secs(30),
        || async { metrics.health.stall_of("projection.reg_decisions") },
    )
    .await;
    assert_eq!(stall.seq, foreign, "{stall}");
    assert!(stall.reason.contains("RegistrationConfirmed"), "{stall}");
    assert_eq!(store.checkpoint(stream).await.unwrap(), owned);
    let row = store.registration(&id).await.unwrap().unwrap();
    assert_eq!(row.status, streams::model::Status::Reserved, "{row:?}");
    shutdown.cancel();
    worker.await.unwrap();

    let rebuilt = store.database("rebuild_foreign").await.unwrap();
    let failed =
        projections::rebuild::project_until(&js, &rebuilt, (stream, filter), foreign, &|_| {})
            .await
            .unwrap_err();
    assert!(
        failed.to_string().contains(&foreign.to_string()),
        "{failed:#}"
    );
    assert!(rebuilt.checkpoint(stream).await.unwrap() < foreign);
    let row = rebuilt.registration(&id).await.unwrap();
    assert!(
        row.as_ref()
            .is_none_or(|row| row.status != streams::model::Status::Confirmed),
        "{row:?}"
    );
}
