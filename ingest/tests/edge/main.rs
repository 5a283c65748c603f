//! The edge against a real nats-server: what a citizen's claims answer over HTTP, and what
//! they leave in the log.

mod helpers;

use helpers::*;

/// An `Idempotency-Key` answers its registration for the whole campaign, whatever the citizen
/// did since: forty registrations later (each but the last ended and its claim released, so
/// the citizen could register again), the first key still answers the first registration. Before the
/// fix the claim remembered only the last 32 keys, and the replay created a new registration.
#[ntex::test]
async fn an_idempotency_key_answers_its_registration_after_forty_later_ones() {
    let edge = Edge::start_with(|_| {}).await;
    let appender = edge.appender().await;
    let mut first = None;
    for n in 0..40 {
        let body = citizen(7001, &format!("place-{n}"));
        let (status, answer) = edge.submit(&body, Some(&format!("key-{n}"))).await;
        assert_eq!(status, 202, "submission {n}: {answer}");
        // Each registration ends (the last one is still held when the first key returns).
        if n < 39 {
            edge.release(&appender, &body, &registration_id(&answer))
                .await;
        }
        first.get_or_insert(answer);
    }
    let first = first.unwrap();
    let submitted = streams::subjects::intake(&region(), streams::subjects::IntakeKind::Submitted);
    let before = edge.held(&submitted).await;
    assert_eq!(before, 40);

    let (status, replay) = edge.submit(&citizen(7001, "place-0"), Some("key-0")).await;
    assert_eq!(
        (status, &replay),
        (202, &first),
        "the first key answers the first registration, its id and token"
    );
    // Another body under the first key is refused, and nothing was appended for either.
    let (status, reused) = edge
        .submit(&citizen(7001, "elsewhere"), Some("key-0"))
        .await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    assert_eq!(reused["error"]["field"], "Idempotency-Key");
    assert_eq!(edge.held(&submitted).await, before);
}
