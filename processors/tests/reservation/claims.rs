//! The claims releaser against a real nats-server.

use processors::claims::release_seen;
use streams::claims::{self, Claim, ClaimRecord, Step};
use streams::model::RegistrationId;

use crate::helpers::*;

const CITIZEN: &str = "c0ffee";

/// Appends `record` behind whatever the citizen's claim subject holds, as its writers do.
async fn write(world: &World, record: ClaimRecord) {
    let js = async_nats::jetstream::new(world.client.clone());
    let last = claims::last(&js, CITIZEN).await.unwrap();
    claims::update(&world.appender, last, |_| {
        Step::Append(vec![record.message(CITIZEN)], ())
    })
    .await
    .unwrap();
}

fn claim() -> Claim {
    Claim {
        registration_id: RegistrationId::generate(&region()),
        request_hash: "request".into(),
        idempotency_key_hash: None,
    }
}

/// A read of the claim answered by a replica still catching up (after a restart, say) shows
/// an older record than the leader holds: here the release of the citizen's previous
/// registration, while the leader already holds their new one, which just ended. The release
/// must not be skipped on that stale answer: the claim would stay held and the citizen be
/// refused `409 already_registered` for good. A releaser that trusted the read would decide
/// there was nothing to release and acknowledge the decision.
#[tokio::test]
async fn a_stale_read_of_the_claim_does_not_skip_its_release() {
    let world = World::start().await;
    let js = async_nats::jetstream::new(world.client.clone());
    let (earlier, ended) = (claim(), claim());
    let held = ClaimRecord::held(earlier.clone(), None);
    write(&world, held.clone()).await;
    write(&world, held.release(&earlier.registration_id).unwrap()).await;
    // What a lagging replica still answers: the earlier registration's release.
    let stale = claims::last(&js, CITIZEN).await.unwrap();
    let previous = ClaimRecord::decode(&stale.as_ref().unwrap().payload).unwrap();
    write(&world, ClaimRecord::held(ended.clone(), Some(&previous))).await;

    release_seen(&js, &world.appender, CITIZEN, &ended.registration_id, stale)
        .await
        .unwrap();

    let now = claims::last(&js, CITIZEN).await.unwrap().unwrap();
    let record = ClaimRecord::decode(&now.payload).unwrap();
    assert!(
        matches!(&record, ClaimRecord::Released { registration_id, .. } if registration_id == &ended.registration_id),
        "the claim is released: {record:?}"
    );
    // A redelivery of the decision finds it released, on the leader too: nothing appended.
    release_seen(
        &js,
        &world.appender,
        CITIZEN,
        &ended.registration_id,
        Some(now.clone()),
    )
    .await
    .unwrap();
    let again = claims::last(&js, CITIZEN).await.unwrap().unwrap();
    assert_eq!(again.sequence, now.sequence);
}
