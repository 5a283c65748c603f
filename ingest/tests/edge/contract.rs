//! The edge's HTTP contract on its own: statuses, error bodies and headers a citizen or an
//! operator gets for what the edge refuses, each with the proof that nothing was appended
//! (the intake stream holds what it held before).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

#[ntex::test]
async fn bad_input_gets_a_structured_error_and_appends_nothing() {
    let p = Edge::start_with(|_| {}).await;
    // A closed window for one region, appended before we start counting.
    let (status, _) = p
        .admin_put(
            "/v1/admin/windows",
            &json!({"region": "closed", "opens_at": "2020-01-01T00:00:00Z", "closes_at": "2020-01-02T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 200);
    let before = p.intake_messages().await;
    let url = format!("{}/v1/registrations", p.url);
    let valid = citizen(9, "anywhere");

    // 415: not JSON
    let answer = p
        .send(
            p.http.post(&url).content_type("text/plain"),
            Some(b"hello".to_vec()),
        )
        .await;
    assert_eq!(answer.status, 415);
    assert_error(&answer.json(), "unsupported_media_type", None);
    // 400: malformed JSON
    let answer = p
        .send(
            p.http.post(&url).content_type("application/json"),
            Some(b"{\"national_id\": ".to_vec()),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_error(&answer.json(), "invalid_json", None);
    // 400: each field named
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let mut bad_pesel = valid.clone();
    bad_pesel["national_id"] = json!("44051401358");
    cases.push((bad_pesel, "national_id"));
    let mut missing_contact = valid.clone();
    missing_contact.as_object_mut().unwrap().remove("email");
    cases.push((missing_contact, "email"));
    let mut bad_date = valid.clone();
    bad_date["date"] = json!("2027-02-30");
    cases.push((bad_date, "date"));
    let mut bad_region = valid.clone();
    bad_region["region"] = json!("Mazowieckie!");
    cases.push((bad_region, "region"));
    let mut too_many = valid.clone();
    too_many["attributes"] = Value::Object((0..33).map(|i| (format!("k{i}"), json!(i))).collect());
    cases.push((too_many, "attributes"));
    for (body, field) in cases {
        let (status, err) = p.submit(&body, None).await;
        assert_eq!(status, 400, "{field}: {err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // 413: over 16 KiB
    let mut huge = valid.clone();
    huge["full_name"] = json!("x".repeat(17 * 1024));
    let (status, err) = p.submit(&huge, None).await;
    assert_eq!(status, 413);
    assert_error(&err, "body_too_large", None);
    // 403: window closed
    let mut closed = valid.clone();
    closed["region"] = json!("closed");
    let (status, err) = p.submit(&closed, None).await;
    assert_eq!(status, 403);
    assert_error(&err, "window_closed", Some("region"));
    // Operators: 401 without a token, 403 with a wrong one, 400 on a bad body.
    let capacity = json!({"region": "mazowieckie", "location": "x", "date": testkit::slot_date(), "capacity": 1});
    let cap_url = format!("{}/v1/admin/capacity", p.url);
    let answer = p
        .send(
            p.http.put(&cap_url).content_type("application/json"),
            Some(capacity.to_string().into_bytes()),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert_error(&answer.json(), "unauthorized", None);
    let answer = p
        .send(
            p.http
                .put(&cap_url)
                .content_type("application/json")
                .bearer_auth("wrong"),
            Some(capacity.to_string().into_bytes()),
        )
        .await;
    assert_eq!(answer.status, 403);
    assert_error(&answer.json(), "forbidden", None);
    let (status, body) = p
        .admin_put(
            "/v1/admin/capacity",
            &json!({"region": "mazowieckie", "location": "x", "date": testkit::slot_date(), "capacity": -1}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "capacity");
    // Unknown route: 404 with the same error shape.
    let answer = p
        .send(p.http.get(format!("{}/v2/nothing", p.url)), None)
        .await;
    assert_eq!(answer.status, 404);
    assert_error(&answer.json(), "not_found", None);

    // Proof that nothing was appended: the intake stream holds exactly what it held before.
    assert_eq!(p.intake_messages().await, before);
}

/// Contract 1.2: a slot's day ends at midnight in its region's time zone (Europe/Warsaw by
/// default). A day that is over takes no registration and no capacity change (`400` on
/// `date`), and nothing is appended.
#[ntex::test]
async fn a_day_that_is_over_takes_no_registration_and_no_capacity() {
    let p = Edge::start_with(|_| {}).await;
    p.set_capacity("open", 1).await;
    let zone = streams::calendar::Calendar::default();
    let region = streams::model::Region::parse("mazowieckie").unwrap();
    let today = zone.today(&region, chrono::Utc::now());
    let yesterday = today - chrono::Duration::days(1);
    let before = p.intake_messages().await;
    let (status, body) = p
        .admin_put(
            "/v1/admin/capacity",
            &json!({"region": "mazowieckie", "location": "open", "date": yesterday.to_string(), "capacity": 5}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_field", Some("date"));
    let mut late = citizen(1, "open");
    late["date"] = json!(yesterday.to_string());
    let (status, body) = p.submit(&late, None).await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "invalid_field", Some("date"));
    assert_eq!(p.intake_messages().await, before, "nothing appended");
    // Today is still open, in the region's time.
    let (status, body) = p
        .admin_put(
            "/v1/admin/capacity",
            &json!({"region": "mazowieckie", "location": "open", "date": today.to_string(), "capacity": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut now = citizen(1, "open");
    now["date"] = json!(today.to_string());
    let (status, body) = p.submit(&now, None).await;
    assert_eq!(status, 202, "{body}");
}

#[ntex::test]
async fn the_per_address_limit_answers_429_with_retry_after() {
    let p = Edge::start_with(|s| s.rate_per_address = 1).await;
    let url = format!("{}/v1/registrations", p.url);
    let mut limited = None;
    for n in 0..5 {
        let answer = p
            .send(
                p.http.post(&url).content_type("application/json"),
                Some(citizen(50 + n, "x").to_string().into_bytes()),
            )
            .await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("a burst over the limit is refused");
    assert!(limited.headers.get("retry-after").is_some());
    assert_error(&limited.json(), "rate_limited", None);
}

#[ntex::test]
async fn beyond_the_admission_bound_a_submission_is_refused_at_once_and_nothing_is_recorded() {
    let p = Edge::start_with(|s| {
        s.max_open_submissions = 1;
        // The admitted submission waits while nats-server is stopped: long enough for the
        // test's own requests however loaded the machine is.
        s.append_timeout = Duration::from_secs(30);
    })
    .await;
    p.set_capacity("busy", 5).await;
    let before = p.intake_messages().await;
    let submissions = format!("{}/v1/registrations", p.url);
    // nats-server stopped, not killed: the connection stays up and the one admitted
    // submission waits for its durable write, holding the only permit.
    p.nats.pause();
    let admitted = citizen(61, "busy");
    let (first, refused) = futures::join!(p.submit(&admitted, None), async {
        testkit::eventually(
            "the first submission admitted",
            Duration::from_secs(10),
            || async { (p.metric("ingest_open_submissions").await == 1).then_some(()) },
        )
        .await;
        let refused = p
            .send(
                p.http.post(&submissions).content_type("application/json"),
                Some(citizen(62, "busy").to_string().into_bytes()),
            )
            .await;
        p.nats.resume();
        refused
    });
    assert_eq!(first.0, 202, "{}", first.1);
    let body = refused.json();
    assert_eq!(refused.status, 503, "{body}");
    assert_error(&body, "overloaded", None);
    assert!(refused.headers.get("retry-after").is_some());
    // Only the admitted submission was appended (its claim, its own key and its event)...
    assert_eq!(p.intake_messages().await, before + 3);
    // ...and the refused citizen holds nothing: the same request now makes a registration.
    let (status, body) = p.submit(&citizen(62, "busy"), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(p.intake_messages().await, before + 6);
}

/// A client that retries after a lost answer gets its own answer even when the citizen is
/// over the per-citizen limit; a new request is still refused. A replay is never refused
/// with 429 for what it already got.
#[ntex::test]
async fn a_replay_over_the_per_citizen_limit_gets_its_answer_and_a_new_request_does_not() {
    let p = Edge::start_with(|s| s.rate_per_citizen = 1).await;
    p.set_capacity("limited", 5).await;
    let body = citizen(63, "limited");
    let (status, first) = p.submit(&body, Some("key-lost")).await;
    assert_eq!(status, 202, "{first}");
    let (status, replay) = p.submit(&body, Some("key-lost")).await;
    assert_eq!((status, &replay), (202, &first), "answered from the record");
    let (status, refused) = p.submit(&citizen(63, "other"), Some("key-new")).await;
    assert_eq!(status, 429, "{refused}");
    assert_error(&refused, "rate_limited", None);
}

/// The edge never serves before it knows the registration windows: a window it cannot
/// decode (a newer writer's, during a rolling upgrade) keeps it not ready, and submissions
/// get `503` rather than slip into a region that may be closed.
#[ntex::test]
async fn an_edge_that_cannot_read_the_windows_is_not_ready_and_accepts_nothing() {
    let nats = testkit::NatsServer::start();
    plant_undecodable_window(&nats).await;
    let p = Edge::start_on(nats, |_| {}).await;
    let ready = format!("{}/readyz", p.url);
    let body = testkit::eventually(
        "the windows reader to stall",
        Duration::from_secs(30),
        || async {
            let answer = p.send(p.http.get(&ready), None).await;
            let stalled = p.metric(r#"consumer_stalled{consumer="windows"}"#).await;
            (answer.status == 503 && stalled == 1).then(|| answer.json())
        },
    )
    .await;
    assert!(
        body.to_string().contains("registration windows"),
        "readiness names what is missing: {body}"
    );
    let (status, body) = p.submit(&citizen(70, "anywhere"), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        p.intake_messages().await,
        1,
        "nothing was appended beside the planted record"
    );
}

/// A window record the edge cannot decode (a newer writer's shape), planted before the edge
/// starts.
async fn plant_undecodable_window(nats: &testkit::NatsServer) {
    const UNDECODABLE_WINDOW: &[u8] = br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000000","occurred_at":"2027-02-01T08:00:00Z","correlation_id":"x","version":9,"type":"WindowSet","data":{"region":"mazowieckie","opens_at":"2027-02-01T08:00:00Z","closes_at":"2027-02-02T08:00:00Z","shape":"new"}}"#;
    let js = async_nats::jetstream::new(nats.connect().await);
    streams::config::ensure_streams(&js, streams::config::Replication(1))
        .await
        .unwrap();
    js.publish(
        streams::subjects::intake(&region(), streams::subjects::IntakeKind::Window),
        UNDECODABLE_WINDOW.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}
