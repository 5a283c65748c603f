//! The pipeline end to end, over HTTP, on real servers: what a citizen and an operator see.

mod at_rest;
mod helpers;
mod notification;
mod ownership;
mod page;
mod rebuild;
mod settings;
mod verification;

use std::collections::HashSet;

use futures::future::join_all;
use helpers::*;
use serde_json::{Value, json};

use testkit::http::assert_error;

#[ntex::test]
async fn a_submission_becomes_reserved_and_availability_drops() {
    let p = Pipeline::start().await;
    p.set_capacity("warszawa-narodowy", 5).await;
    p.wait_remaining("warszawa-narodowy", 5).await;

    let (status, body) = p.submit(&citizen(1, "warszawa-narodowy"), None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["registration_id"].as_str().unwrap();
    let token = body["token"].as_str().unwrap();
    // The status URL points at the read API and can be followed as is.
    let status_url = body["status_url"].as_str().unwrap();
    assert_eq!(status_url, format!("{}/v1/registrations/{id}", p.read));
    let (code, _, followed) = p
        .send(p.http.get(status_url).bearer_auth(token), None)
        .await;
    assert_eq!(code, 200, "{followed}");
    assert_eq!(followed["registration_id"], id);

    let record = p.wait_status(id, token, "reserved").await;
    assert_eq!(record["registration_id"], id);
    assert_eq!(record["region"], "mazowieckie");
    assert_eq!(record["location"], "warszawa-narodowy");
    assert_eq!(record["date"], slot_date());
    assert!(record["updated_at"].is_string());
    for personal in [
        "national_id",
        "full_name",
        "birth_date",
        "email",
        "attributes",
    ] {
        assert!(
            record.get(personal).is_none(),
            "status leaks {personal}: {record}"
        );
    }
    p.wait_remaining("warszawa-narodowy", 4).await;
}

#[ntex::test]
async fn sixty_concurrent_submissions_for_ten_slots_grant_ten_queue_ten_and_refuse_the_rest() {
    let p = Pipeline::start().await;
    p.set_capacity("hot", 10).await;
    let responses = join_all((0..60).map(|n| {
        let body = citizen(100 + n, "hot");
        let p = &p;
        async move { p.submit(&body, None).await }
    }))
    .await;
    let accepted: Vec<(String, String)> = responses
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            (
                body["registration_id"].as_str().unwrap().to_owned(),
                body["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut reserved = Vec::new();
    let mut positions = Vec::new();
    let mut rejected = 0;
    for (id, token) in &accepted {
        let record =
            testkit::eventually("a decision", std::time::Duration::from_secs(30), || async {
                let (_, body) = p.status(id, Some(token)).await;
                (body["status"] != "received").then_some(body)
            })
            .await;
        match record["status"].as_str().unwrap() {
            "reserved" => reserved.push((id, token)),
            "waitlisted" => positions.push((record["position"].as_u64().unwrap(), id, token)),
            "rejected" => {
                assert_eq!(record["reason"], "slot_full");
                rejected += 1
            }
            other => panic!("unexpected status {other}"),
        }
    }
    positions.sort();
    assert_eq!(
        (reserved.len(), positions.len(), rejected),
        (10, 10, 40),
        "the line is as long as the capacity"
    );
    assert_eq!(
        positions.iter().map(|p| p.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "positions 1..10, each once"
    );
    p.wait_availability("hot", 0, 10).await;

    // A cancellation gives the place to the first in line; everyone behind moves up one.
    let (id, token) = reserved[0];
    let (status, body) = p.cancel(id, token).await;
    assert_eq!(status, 202, "{body}");
    let (_, first_id, first_token) = positions[0];
    p.wait_status(first_id, first_token, "reserved").await;
    let (_, second_id, second_token) = positions[1];
    let record = p.wait_status(second_id, second_token, "waitlisted").await;
    assert_eq!(record["position"], 1, "{record}");
    p.wait_availability("hot", 0, 9).await;
}

#[ntex::test]
async fn ten_concurrent_identical_submissions_make_one_registration() {
    let p = Pipeline::start().await;
    p.set_capacity("retry", 3).await;
    let before = p.intake_messages().await;
    let body = citizen(7, "retry");
    let responses = join_all((0..10).map(|_| p.submit(&body, Some("key-7")))).await;
    let mut ids = HashSet::new();
    for (status, body) in &responses {
        match status {
            202 => {
                ids.insert(body["registration_id"].as_str().unwrap().to_owned());
            }
            409 => assert_error(body, "request_in_flight", None),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "one registration id for one request: {ids:?}");

    // After the dust settles, a retry is a replay: same id, same token.
    let (status, again) = p.submit(&body, Some("key-7")).await;
    assert_eq!(status, 202);
    assert!(ids.contains(again["registration_id"].as_str().unwrap()));
    // The same key with another body is refused...
    let mut changed = body.clone();
    changed["location"] = json!("elsewhere");
    let (status, err) = p.submit(&changed, Some("key-7")).await;
    assert_eq!(status, 422);
    assert_error(&err, "idempotency_key_reused", Some("Idempotency-Key"));
    // ...and so is a second registration of the same citizen under another key.
    let (status, err) = p.submit(&changed, Some("key-8")).await;
    assert_eq!(status, 409);
    assert_error(&err, "already_registered", Some("national_id"));

    // The log may hold the submission more than once (replays re-append), but all copies
    // carry the one registration id, and it got exactly one decision.
    let id = ids.into_iter().next().unwrap();
    let token = again["token"].as_str().unwrap();
    p.wait_status(&id, token, "reserved").await;
    let js = async_nats::jetstream::new(p.nats.connect().await);
    let mut submitted_ids = HashSet::new();
    streams::replay::read_to_end(
        &js,
        streams::subjects::INTAKE_STREAM,
        "reg.intake.*.submitted".into(),
        before + 1,
        |r| {
            if let Ok(streams::events::Envelope {
                event: streams::events::Event::RegistrationSubmitted(s),
                ..
            }) = r.envelope
            {
                submitted_ids.insert(s.registration_id.to_string());
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(submitted_ids, HashSet::from([id]));
    p.wait_remaining("retry", 2).await;
}

/// Contract 1.2: a region exists once an operator set a capacity or a window for it. 10,000
/// submissions naming made-up regions are each `400` on `region`, append nothing, and leave
/// the server's consumers and the processors' regions as they were.
#[ntex::test]
async fn submissions_for_regions_nobody_configured_create_nothing() {
    let p = Pipeline::start_with(Options {
        rate_per_address: 0,
        ..Options::default()
    })
    .await;
    p.set_capacity("real", 1).await;
    // The processors serve the configured region (its consumers exist) before counting.
    let (status, body) = p.submit(&citizen(1, "real"), None).await;
    assert_eq!(status, 202, "{body}");
    p.wait_remaining("real", 0).await;
    let js = async_nats::jetstream::new(p.admin_client().await);
    let consumers = || {
        let js = js.clone();
        async move { js.query_account().await.unwrap().consumers }
    };
    let (consumers_before, intake_before) = (consumers().await, p.intake_messages().await);
    let regions_before = streams::regions::discover(&js).await.unwrap();

    use futures::StreamExt;
    let refused = futures::stream::iter(0..10_000u32)
        .map(|n| {
            let mut body = citizen(n + 2, "real");
            body["region"] = json!(format!("made-up-{}", n % 60));
            let p = &p;
            async move { p.submit(&body, None).await }
        })
        .buffer_unordered(32)
        .filter(|(status, body)| {
            let ok = *status == 400 && body["error"]["field"] == "region";
            async move { ok }
        })
        .count()
        .await;
    assert_eq!(refused, 10_000, "every one 400 on region");
    assert_eq!(p.intake_messages().await, intake_before, "nothing appended");
    // The processors started for every region serve what `discover` finds, and nothing else
    // makes them start a region: it finds what it found before.
    assert_eq!(
        streams::regions::discover(&js).await.unwrap(),
        regions_before
    );
    let consumers_after = consumers().await;
    println!("consumers before {consumers_before}, after 10,000 made-up regions {consumers_after}");
    assert_eq!(consumers_after, consumers_before);
}

#[ntex::test]
async fn a_cancelled_registration_returns_its_slot() {
    // No waiting list: the freed place goes to the next newcomer.
    let p = Pipeline::start_with(Options {
        waitlist_per_slot: Some(0),
        ..Options::default()
    })
    .await;
    p.set_capacity("one", 1).await;
    let (_, first) = p.submit(&citizen(21, "one"), None).await;
    let (id, token) = (
        first["registration_id"].as_str().unwrap(),
        first["token"].as_str().unwrap(),
    );
    p.wait_status(id, token, "reserved").await;
    let (_, second) = p.submit(&citizen(22, "one"), None).await;
    let record = p
        .wait_status(
            second["registration_id"].as_str().unwrap(),
            second["token"].as_str().unwrap(),
            "rejected",
        )
        .await;
    assert_eq!(record["reason"], "slot_full");
    p.wait_remaining("one", 0).await;

    let cancel_url = format!("{}/v1/registrations/{id}", p.ingest);
    let (status, _, body) = p
        .send(
            p.http.delete(&cancel_url).bearer_auth("not-the-token"),
            None,
        )
        .await;
    assert_eq!(status, 404, "a wrong token cancels nothing: {body}");
    let (status, _, body) = p
        .send(p.http.delete(&cancel_url).bearer_auth(token), None)
        .await;
    assert_eq!(status, 202, "{body}");
    p.wait_status(id, token, "cancelled").await;
    p.wait_remaining("one", 1).await;
    // Idempotent: cancelling again changes nothing.
    let (status, _, _) = p
        .send(p.http.delete(&cancel_url).bearer_auth(token), None)
        .await;
    assert_eq!(status, 202);

    let (_, third) = p.submit(&citizen(23, "one"), None).await;
    p.wait_status(
        third["registration_id"].as_str().unwrap(),
        third["token"].as_str().unwrap(),
        "reserved",
    )
    .await;
    p.wait_remaining("one", 0).await;
    assert_eq!(p.status(id, Some(token)).await.1["status"], "cancelled");

    // Once the registration has ended, the citizen's claim is released: the same citizen may
    // register again (here for another slot), and gets a new registration.
    p.set_capacity("two", 1).await;
    let again = testkit::eventually(
        "the claim to be released",
        std::time::Duration::from_secs(30),
        || async {
            let (status, body) = p.submit(&citizen(21, "two"), None).await;
            (status == 202).then_some(body)
        },
    )
    .await;
    assert_ne!(again["registration_id"], first["registration_id"]);
    p.wait_status(
        again["registration_id"].as_str().unwrap(),
        again["token"].as_str().unwrap(),
        "reserved",
    )
    .await;
}

#[ntex::test]
async fn when_jetstream_is_down_the_edge_answers_503_and_never_a_false_202() {
    let mut p = Pipeline::start().await;
    p.set_capacity("outage", 2).await;
    p.nats.kill();
    // Once the edge has seen the connection drop, it knows nothing can be recorded:
    // `unavailable`. (Before it notices, a request already sent may have landed, and the
    // honest answer is `outcome_unknown`, tested elsewhere.)
    let ready = format!("{}/readyz", p.ingest);
    testkit::eventually(
        "the edge to notice",
        std::time::Duration::from_secs(30),
        || async {
            let (status, _, _) = p.send(p.http.get(&ready), None).await;
            (status == 503).then_some(())
        },
    )
    .await;
    let (status, body) = p.submit(&citizen(41, "outage"), None).await;
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "unavailable", None);
    p.nats.restart();
    // Once JetStream is back, the same request goes through and is decided.
    let (id, token) = testkit::eventually(
        "a 202 after the restart",
        std::time::Duration::from_secs(30),
        || async {
            let (status, body) = p.submit(&citizen(41, "outage"), None).await;
            (status == 202).then(|| {
                (
                    body["registration_id"].as_str().unwrap().to_owned(),
                    body["token"].as_str().unwrap().to_owned(),
                )
            })
        },
    )
    .await;
    p.wait_status(&id, &token, "reserved").await;
}

#[ntex::test]
async fn a_citizen_holds_one_registration_and_may_register_again_once_it_ends() {
    let p = Pipeline::start().await;
    p.set_capacity("first", 1).await;
    p.set_capacity("second", 1).await;
    let (status, held) = p.submit(&citizen(40, "first"), None).await;
    assert_eq!(status, 202, "{held}");
    let (id, token) = (
        held["registration_id"].as_str().unwrap(),
        held["token"].as_str().unwrap(),
    );
    p.wait_status(id, token, "reserved").await;

    // The same citizen elsewhere: refused while the first registration is active.
    let elsewhere = citizen(40, "second");
    let (status, body) = p.submit(&elsewhere, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_registered");
    assert_eq!(body["error"]["field"], "national_id");

    // Once it is cancelled, the claims releaser releases the claim and the citizen may
    // register again: the edge claims behind the release (its fence is the release's
    // sequence, not "empty").
    let cancel_url = format!("{}/v1/registrations/{id}", p.ingest);
    let (status, _, body) = p
        .send(p.http.delete(&cancel_url).bearer_auth(token), None)
        .await;
    assert_eq!(status, 202, "{body}");
    p.wait_status(id, token, "cancelled").await;
    let again = testkit::eventually(
        "the citizen to be accepted again after the release",
        std::time::Duration::from_secs(30),
        || async {
            let (status, body) = p.submit(&elsewhere, None).await;
            match status {
                202 => Some(body),
                409 => None,
                other => panic!("unexpected {other}: {body}"),
            }
        },
    )
    .await;
    let new_id = again["registration_id"].as_str().unwrap();
    assert_ne!(new_id, id, "a new registration, not the cancelled one");
    p.wait_status(new_id, again["token"].as_str().unwrap(), "reserved")
        .await;
    // And it is the citizen's one active registration again.
    let (status, body) = p.submit(&citizen(40, "first"), None).await;
    assert_eq!(status, 409, "{body}");
}

/// The last record on a citizen's claim subject: `held` or `released`.
async fn claim_state(p: &Pipeline, body: &Value) -> Option<String> {
    let keys = streams::crypto::Keys::from_secret(streams::crypto::DEVELOPMENT_SECRET);
    let citizen_key = keys.citizen_key(body["national_id"].as_str().unwrap());
    let js = async_nats::jetstream::new(p.nats.connect().await);
    let last = streams::claims::last(&js, &citizen_key).await.unwrap()?;
    let state = last.headers.get(streams::claims::CLAIM_STATE_HEADER)?;
    Some(state.as_str().to_owned())
}

/// An Idempotency-Key answers its registration for as long as the campaign lasts: after that
/// registration was rejected and its claim released, and after the citizen registered again.
/// Before the fix, the same key and body got a new registration once the claim was released,
/// and another body under the key was accepted instead of 422.
#[ntex::test]
async fn an_idempotency_key_keeps_its_registration_after_it_ended() {
    // No waiting list, so a full slot ends the registration at once.
    let p = Pipeline::start_with(Options {
        waitlist_per_slot: Some(0),
        ..Options::default()
    })
    .await;
    p.set_capacity("full", 1).await;
    p.set_capacity("roomy", 10).await;
    let (status, body) = p.submit(&citizen(60, "full"), None).await;
    assert_eq!(status, 202, "{body}");
    let original = citizen(61, "full");
    let (status, first) = p.submit(&original, Some("key-one")).await;
    assert_eq!(status, 202, "{first}");
    let (id, token) = (
        first["registration_id"].as_str().unwrap(),
        first["token"].as_str().unwrap(),
    );
    let rejected = p.wait_status(id, token, "rejected").await;
    assert_eq!(rejected["reason"], "slot_full");
    testkit::eventually(
        "the claim to be released",
        std::time::Duration::from_secs(30),
        || async {
            (claim_state(&p, &original).await.as_deref() == Some("released")).then_some(())
        },
    )
    .await;

    // Released: the key still answers the original registration, and refuses another body.
    let (status, again) = p.submit(&original, Some("key-one")).await;
    assert_eq!(
        (status, &again),
        (202, &first),
        "the same answer, id and token"
    );
    let elsewhere = citizen(61, "roomy");
    let (status, body) = p.submit(&elsewhere, Some("key-one")).await;
    assert_eq!(status, 422, "{body}");
    assert_error(&body, "idempotency_key_reused", Some("Idempotency-Key"));

    // The citizen registers again under another key: both keys answer their own.
    let (status, second) = p.submit(&elsewhere, Some("key-two")).await;
    assert_eq!(status, 202, "{second}");
    assert_ne!(second["registration_id"], first["registration_id"]);
    let (status, body) = p.submit(&original, Some("key-one")).await;
    assert_eq!((status, &body), (202, &first));
    let (status, body) = p.submit(&elsewhere, Some("key-two")).await;
    assert_eq!((status, &body), (202, &second));
    assert_eq!(claim_state(&p, &original).await.as_deref(), Some("held"));
}

/// A write the edge stopped waiting for may still land: the edge says the outcome is unknown
/// and how to learn it, and the retry is answered from what landed. Before the fix, the
/// answer said nothing was recorded, and a retry with another body got 409 with no way to
/// the registration.
#[ntex::test]
async fn a_timed_out_append_is_an_unknown_outcome_and_the_retry_answers_from_what_landed() {
    let p = Pipeline::start_with(Options {
        append_timeout: Some(std::time::Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    p.set_capacity("limbo", 5).await;
    let body = citizen(62, "limbo");
    let before = p.intake_messages().await;
    p.nats.pause();
    let (status, answer) = p.submit(&body, Some("key-limbo")).await;
    p.nats.resume();
    assert_eq!(status, 503, "{answer}");
    assert_error(&answer, "outcome_unknown", None);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("same Idempotency-Key"),
        "{answer}"
    );
    // The write landed after the answer (a claim, its key's record, the registration's own
    // data key and its registration)...
    testkit::eventually(
        "the timed-out write to land",
        std::time::Duration::from_secs(30),
        || async { (p.intake_messages().await == before + 4).then_some(()) },
    )
    .await;
    // ...and the retry is answered from it: no second registration.
    let (status, retry) = testkit::eventually(
        "the retry to be answered",
        std::time::Duration::from_secs(30),
        || async {
            let (status, retry) = p.submit(&body, Some("key-limbo")).await;
            (status != 503).then_some((status, retry))
        },
    )
    .await;
    assert_eq!(status, 202, "{retry}");
    assert_eq!(
        p.intake_messages().await,
        before + 4,
        "nothing appended twice"
    );
    let (id, token) = (
        retry["registration_id"].as_str().unwrap(),
        retry["token"].as_str().unwrap(),
    );
    p.wait_status(id, token, "reserved").await;
}
