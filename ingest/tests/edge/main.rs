//! The edge against a real nats-server: what a citizen's claims and lost-link recoveries
//! answer over HTTP, and what they leave in the log.

mod contract;
mod helpers;
mod waiting_room;

use helpers::*;

/// The edge exposes health and Prometheus metrics: once it has appended (the operator's
/// window its start sets), `/healthz` answers 200 and `/metrics` counts the append.
#[ntex::test]
async fn the_edge_exposes_health_and_the_metrics_of_its_appends() {
    let edge = Edge::start_with(|_| {}).await;
    let answer = edge
        .send(edge.http.get(format!("{}/healthz", edge.url)), None)
        .await;
    assert_eq!(answer.status, 200);
    assert!(edge.metric("ingest_append_seconds_count").await >= 1);
}

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
    // The body of the registration the citizen holds now, under the first key: still
    // another body for that key.
    let (status, reused) = edge.submit(&citizen(7001, "place-39"), Some("key-0")).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(edge.held(&submitted).await, before);
}

/// How long `POST /v1/registrations/recover` takes for registered and unregistered citizens
/// (p50/p90/p99 over `REG_TIMING_SAMPLES` requests each, 300 by default, alternating), on
/// this build and a real nats-server. Ignored: it measures, it asserts nothing; run it with
/// `cargo test -p ingest --test edge recovery_timing -- --ignored --nocapture`.
#[ntex::test]
#[ignore]
async fn recovery_timing() {
    let samples: u32 = std::env::var("REG_TIMING_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let edge = Edge::start_with(|_| {}).await;
    let bodies: Vec<_> = (0..samples)
        .map(|n| citizen(10_000 + n, "timing"))
        .collect();
    for chunk in bodies.chunks(50) {
        let answers =
            futures::future::join_all(chunk.iter().map(|body| edge.submit(body, None))).await;
        assert!(answers.iter().all(|(status, _)| *status == 202));
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for n in 0..samples {
        for (times, who) in [(&mut known, 10_000 + n), (&mut unknown, 20_000 + n)] {
            let started = std::time::Instant::now();
            let answer = edge.recover(&citizen(who, "timing")).await;
            times.push(started.elapsed());
            assert_eq!(answer.status, 202);
        }
    }
    for (label, times) in [("registered", &mut known), ("unregistered", &mut unknown)] {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "recovery, {label:>12}: n={} p50={:.2} ms p90={:.2} ms p99={:.2} ms",
            times.len(),
            at(0.50).as_secs_f64() * 1e3,
            at(0.90).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
        );
    }
}

/// Lost-link recovery is limited per client address, whichever citizens it names: a
/// stranger cannot walk through national ids, since the per-citizen limit alone lets every
/// new national id through.
#[ntex::test]
async fn recoveries_are_limited_per_client_address() {
    // The defaults of both recovery limits.
    let defaults = ingest::settings::Settings::development("");
    let per_address = defaults.recoveries_per_address_per_minute;
    assert!((1..=10).contains(&per_address), "a few a minute by default");
    let edge = Edge::start_with(|s| {
        s.recoveries_per_hour = defaults.recoveries_per_hour;
        s.recoveries_per_address_per_minute = per_address;
    })
    .await;
    for n in 0..per_address {
        let answer = edge.recover(&citizen(9000 + n, "anywhere")).await;
        assert_eq!(answer.status, 202, "recovery {n}: {:?}", answer.json());
    }
    let refused = edge.recover(&citizen(9100, "anywhere")).await;
    assert_eq!(refused.status, 429, "{:?}", refused.json());
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    assert!(refused.headers.get("retry-after").is_some());
}

/// A registered and an unregistered citizen get the same answer, byte for byte, and it comes
/// before any lookup: here NATS is frozen (so the worker that looks the claim up and appends
/// the request is held back) while both are answered. Once NATS is back, the registered
/// citizen's request reaches the log (`RecoveryRequested` with their registration, for the
/// notification processor to send the link to the contact on record) and the stranger's
/// leaves nothing. An edge that looked the claim up (or appended) before answering would
/// answer neither while NATS is frozen.
#[ntex::test]
async fn a_recovery_is_answered_alike_before_any_lookup() {
    let edge = Edge::start_with(|_| {}).await;
    let known = citizen(8001, "recover");
    let (status, registered) = edge.submit(&known, None).await;
    assert_eq!(status, 202, "{registered}");
    let stranger = citizen(8002, "recover");

    edge.nats.pause();
    let for_stranger = edge.recover(&stranger).await;
    let for_known = edge.recover(&known).await;
    edge.nats.resume();
    assert_eq!(for_known.status, 202, "{:?}", for_known.json());
    assert_eq!(for_stranger.status, for_known.status);
    assert_eq!(for_stranger.body, for_known.body, "the same bytes");
    assert_eq!(for_stranger.headers.len(), for_known.headers.len());
    for (name, value) in for_known.headers.iter() {
        if name != "date" {
            assert_eq!(for_stranger.headers.get(name), Some(value), "{name}");
        }
    }

    let recover = streams::subjects::intake(&region(), streams::subjects::IntakeKind::Recover);
    testkit::eventually(
        "the registered citizen's recovery to be appended",
        std::time::Duration::from_secs(30),
        || async { (edge.held(&recover).await > 0).then_some(()) },
    )
    .await;
    // The worker takes requests in order: the stranger's was handled before and left nothing.
    assert_eq!(edge.held(&recover).await, 1);
    let js = async_nats::jetstream::new(edge.nats.connect().await);
    let stream = js
        .get_stream(streams::subjects::INTAKE_STREAM)
        .await
        .unwrap();
    let message = stream
        .get_last_raw_message_by_subject(&recover)
        .await
        .unwrap();
    let envelope = streams::events::Envelope::decode(&message.payload).unwrap();
    match envelope.event {
        streams::events::Event::RecoveryRequested(requested) => {
            assert_eq!(requested.registration_id, registration_id(&registered))
        }
        other => panic!("not a recovery: {other:?}"),
    }
}

/// The public `/metrics` tells nobody whether a recovery found a registration: after a
/// stranger's and a registered citizen's recovery (the latter appended), the only samples
/// that moved are the two `202` responses both got: the append histogram in particular must
/// not count the registered citizen's append.
#[ntex::test]
async fn the_public_metrics_do_not_tell_a_found_recovery_from_another() {
    let edge = Edge::start_with(|_| {}).await;
    let known = citizen(8101, "recover");
    let (status, registered) = edge.submit(&known, None).await;
    assert_eq!(status, 202, "{registered}");
    let before = edge.metrics().await;

    assert_eq!(edge.recover(&citizen(8102, "recover")).await.status, 202);
    assert_eq!(edge.recover(&known).await.status, 202);
    let recover = streams::subjects::intake(&region(), streams::subjects::IntakeKind::Recover);
    testkit::eventually(
        "the registered citizen's recovery to be appended",
        std::time::Duration::from_secs(30),
        || async { (edge.held(&recover).await == 1).then_some(()) },
    )
    .await;

    let after = edge.metrics().await;
    let moved: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    assert_eq!(
        moved,
        [r#"ingest_responses_total{route="recover",status="202"} 2"#],
        "samples that moved: {moved:#?}"
    );
}
