//! A subject carries only the event types its writer owns: a service's identity that may
//! append to a subject cannot use it to append what another service decides.

use std::time::Duration;

use nats_accounts::Service;
use streams::events::{CancellationRequested, Envelope, Event};
use streams::model::{Region, RegistrationId};
use streams::subjects::{self, IntakeKind};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// The reported attack: with the verification processor's own credentials, a
/// `CancellationRequested` appended on the region's verification subject (which that identity
/// may append to). The region's reservation reader stops at it as at a record it cannot
/// decode, and the confirmed citizen stays confirmed. Before the fix, the citizen was
/// cancelled and their place released.
#[ntex::test]
async fn a_cancellation_appended_with_the_verification_identity_cancels_nobody() {
    let p = Pipeline::start_with(Options {
        accounts: true,
        registry: Some(registry_sim::Knobs::default()),
        ..Options::default()
    })
    .await;
    p.set_capacity("owned", 5).await;
    let (status, body) = p.submit(&citizen(9300, "owned"), None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["registration_id"].as_str().unwrap();
    let token = body["token"].as_str().unwrap();
    p.wait_status(id, token, "confirmed").await;
    p.wait_remaining("owned", 4).await;

    let accounts = p.accounts.as_ref().unwrap();
    let verification = accounts.nats_options(Service::Verification, &p.nats.url(), "forger");
    let js = async_nats::jetstream::new(
        streams::runtime::connect(&verification, &CancellationToken::new())
            .await
            .unwrap(),
    );
    let region = Region::parse("mazowieckie").unwrap();
    let forged = Envelope::new(
        id,
        Event::CancellationRequested(CancellationRequested {
            registration_id: RegistrationId::parse(id).unwrap(),
        }),
    );
    let stored = js
        .publish(
            subjects::intake(&region, IntakeKind::Verification),
            forged.encode().into(),
        )
        .await
        .unwrap()
        .await
        .expect("the server stores what the identity may append");

    // The reservation reader stops at that record: everything before it was decided (the
    // citizen's confirmation), nothing from it on is.
    let stalled = r#"consumer_stalled{consumer="reservation.mazowieckie"}"#;
    testkit::eventually(
        "the region's reservation reader to stop at the foreign record",
        Duration::from_secs(30),
        || async { (p.metric(&p.processors, stalled).await == 1).then_some(()) },
    )
    .await;
    let (_, record) = p.status(id, Some(token)).await;
    assert_eq!(record["status"], "confirmed", "{record}");
    assert_eq!(p.remaining("owned").await, Some(4));
    let admin = async_nats::jetstream::new(p.admin_client().await);
    let mut cancelled = Vec::new();
    streams::replay::read_to_end(
        &admin,
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions(&region),
        1,
        |record| {
            if let Ok(Envelope {
                event: event @ (Event::RegistrationCancelled(_) | Event::SlotReleased(_)),
                ..
            }) = record.envelope
            {
                cancelled.push(event);
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(cancelled, Vec::new(), "nothing cancelled or released");
    // The processors are not ready while their reader is stopped, and say where.
    let (status, _, body) = p
        .send(p.http.get(format!("{}/readyz", p.processors)), None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.to_string().contains("reservation.mazowieckie"),
        "{body} (stopped at sequence {})",
        stored.sequence
    );
}
