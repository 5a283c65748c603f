//! The reviews bucket the edge reads to refuse an operator's decision outside manual review.

use std::time::Duration;

use streams::events::*;
use streams::model::RegistrationId;
use streams::subjects::{self, IntakeKind};

use crate::helpers::*;

fn inconclusive(id: &RegistrationId) -> Event {
    Event::VerificationInconclusive(VerificationInconclusive {
        registration_id: id.clone(),
        attempts: 8,
        last_error: "the registry did not answer in time".into(),
        error_code: "registry_timeout".into(),
    })
}

/// A replica taking a region over rewrites the region's keys from its state: 2,000 keys left
/// by a replica that died before recording that they left review are purged, the one
/// registration in review is listed, another region's keys and a foreign key stay as they
/// were; then a verdict takes the registration out of review and its key goes.
#[tokio::test]
async fn a_takeover_rewrites_the_regions_reviews_from_its_state() {
    let world = World::start().await;
    let js = async_nats::jetstream::new(world.client.clone());
    let bucket = js.get_key_value(subjects::REVIEWS_BUCKET).await.unwrap();
    let stale: Vec<RegistrationId> = (0..2_000)
        .map(|_| RegistrationId::generate(&region()))
        .collect();
    for chunk in stale.chunks(200) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|id| bucket.put(subjects::review_key(id), "manual_review".into())),
        )
        .await
        .unwrap();
    }
    let elsewhere = RegistrationId::generate(&streams::model::Region::parse("slaskie").unwrap());
    bucket
        .put(subjects::review_key(&elsewhere), "manual_review".into())
        .await
        .unwrap();
    bucket
        .put(format!("{}.not-an-id", region()), "x".into())
        .await
        .unwrap();

    let s = slot("review");
    world.set_capacity(&s, 1).await;
    let (id, _) = world.submit(&s).await;
    world
        .append(IntakeKind::Verification, &region(), inconclusive(&id))
        .await;
    let replica = world.replica();
    let key = subjects::review_key(&id);
    testkit::eventually(
        "the registration listed in review",
        Duration::from_secs(30),
        || async { bucket.get(&key).await.unwrap().map(drop) },
    )
    .await;
    // The takeover's rewrite runs before the replica decides anything: listed means done.
    for id in &stale {
        assert_eq!(
            bucket.get(subjects::review_key(id)).await.unwrap(),
            None,
            "{id}"
        );
    }
    assert!(
        bucket
            .get(subjects::review_key(&elsewhere))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        bucket
            .get(format!("{}.not-an-id", region()))
            .await
            .unwrap()
            .is_some()
    );

    // The registry answers after all: confirmed, out of review.
    world
        .append(
            IntakeKind::Verification,
            &region(),
            Event::VerificationPassed(VerificationPassed {
                registration_id: id.clone(),
                reviewer: None,
            }),
        )
        .await;
    testkit::eventually("the key gone", Duration::from_secs(30), || async {
        bucket.get(&key).await.unwrap().is_none().then_some(())
    })
    .await;
    replica.stop().await;
}
