//! Verification against the registry simulator, end to end: the waiting list fills the
//! places the registry refuses, and a flaky registry leaves every registration with one
//! outcome that matches the population rule.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[ntex::test]
async fn a_slot_of_ten_raced_by_forty_with_twelve_refused_ends_with_ten_confirmed() {
    let p = Pipeline::start_with(Options {
        // Everyone gets a place or a place in line, so the refused ones' places are refilled.
        waitlist_per_slot: Some(30),
        registry: Some(registry_sim::Knobs::default()),
        ..Options::default()
    })
    .await;
    p.set_capacity("race", 10).await;
    let refused: Vec<u32> = (0..4)
        .flat_map(|k| [97 + 100 * k, 98 + 100 * k, 99 + 100 * k])
        .collect();
    let good: Vec<u32> = (0..28).map(|k| 1000 + k).collect();
    let mut citizens = refused.clone();
    citizens.extend(&good);
    assert_eq!((citizens.len(), refused.len()), (40, 12));
    let registrations = submit_all(&p, &citizens, "race").await;
    let records = settled(&p, &registrations, Duration::from_secs(60)).await;

    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for (n, record) in &records {
        let status = record["status"].as_str().unwrap();
        *by_status.entry(status).or_default() += 1;
        match status {
            "confirmed" => assert_eq!(refusal(*n), None, "citizen {n} was confirmed"),
            "rejected" => assert_eq!(
                record["reason"].as_str(),
                refusal(*n),
                "citizen {n} was rejected for the wrong reason"
            ),
            "waitlisted" => assert!(record["position"].as_u64().unwrap() >= 1),
            other => panic!("citizen {n} ended {other}: {record}"),
        }
    }
    assert_eq!(by_status.get("confirmed"), Some(&10), "{by_status:?}");
    let waiting = by_status.get("waitlisted").copied().unwrap_or(0);
    assert_eq!(
        waiting + by_status.get("rejected").copied().unwrap_or(0),
        30,
        "{by_status:?}"
    );
    p.wait_availability("race", 0, waiting as i64).await;
    // Nobody was asked about twice: each verdict was given once and recorded once.
    let counts = p.registry.as_ref().unwrap().counts();
    for (national_id, c) in &counts.by_national_id {
        assert!(c.answers <= 1, "{national_id} got {} answers", c.answers);
    }
}

#[ntex::test]
async fn a_flaky_hostile_registry_with_an_outage_leaves_one_right_outcome_each() {
    let p = Pipeline::start_with(Options {
        waitlist_per_slot: Some(0),
        registry: Some(registry_sim::Knobs {
            error_rate: 0.3,
            spike_rate: 0.05,
            spike_ms: 1000,
            hostile_rate: 0.05,
            ..registry_sim::Knobs::default()
        }),
        ..Options::default()
    })
    .await;
    let registry = p.registry.clone().unwrap();
    p.set_capacity("flaky", 200).await;
    let citizens: Vec<u32> = (2000..2060).chain([2097, 2098, 2099, 2197, 2198]).collect();
    let first = submit_all(&p, &citizens[..30], "flaky").await;
    // An outage starts mid-load and ends after a while.
    let mut outage = registry.knobs();
    outage.outage = true;
    registry.set_knobs(outage.clone()).unwrap();
    let second = submit_all(&p, &citizens[30..], "flaky").await;
    testkit::eventually("the outage to be felt", Duration::from_secs(30), || async {
        (registry.counts().outage > 0).then_some(())
    })
    .await;
    outage.outage = false;
    registry.set_knobs(outage).unwrap();

    let registrations: Vec<_> = first.into_iter().chain(second).collect();
    let records = settled(&p, &registrations, Duration::from_secs(120)).await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (n, record) in &records {
        let status = record["status"].as_str().unwrap();
        *by_status.entry(status.to_owned()).or_default() += 1;
        match status {
            "confirmed" => assert_eq!(refusal(*n), None, "citizen {n}"),
            "rejected" => assert_eq!(record["reason"].as_str(), refusal(*n), "citizen {n}"),
            // The registry never answered usably within the bounds: an operator decides.
            "manual_review" => {}
            other => panic!("citizen {n} ended {other}: {record}"),
        }
    }
    let counts = registry.counts();
    println!("outcomes {by_status:?}; registry saw {counts:?}");
    assert!(
        counts.faults + counts.bare_errors > 0 && counts.outage > 0,
        "the registry's failures were exercised: {counts:?}"
    );
    for (national_id, c) in &counts.by_national_id {
        assert!(c.answers <= 1, "{national_id} got {} answers", c.answers);
    }
}

#[ntex::test]
async fn operators_list_approve_reject_and_requeue_what_the_registry_could_not_answer() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs {
            outage: true,
            ..registry_sim::Knobs::default()
        }),
        verify_max_attempts: Some(2),
        ..Options::default()
    })
    .await;
    p.set_capacity("review", 10).await;
    let registrations = submit_all(&p, &[3001, 3002, 3003], "review").await;
    for (_, id, token) in &registrations {
        let record = p.wait_status(id, token, "manual_review").await;
        assert!(record.get("reason").is_none(), "{record}");
    }
    p.wait_availability("review", 7, 0).await; // places stay held during the review

    let list_url = format!("{}/v1/admin/reviews?region=mazowieckie", p.read);
    let (status, _, _) = p.send(p.http.get(&list_url), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = p
        .send(p.http.get(&list_url).bearer_auth("not-the-token"), None)
        .await;
    assert_eq!(status, 403);
    let (status, _, listed) = p.send(p.http.get(&list_url).bearer_auth(ADMIN), None).await;
    assert_eq!(status, 200, "{listed}");
    let mut listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["registration_id"].as_str().unwrap())
        .collect();
    listed.sort();
    let mut ids: Vec<&str> = registrations.iter().map(|r| r.1.as_str()).collect();
    ids.sort();
    assert_eq!(listed, ids);

    let decide = |id: &str, body: Value| {
        let request = p
            .http
            .post(format!("{}/v1/admin/reviews/{id}", p.ingest))
            .bearer_auth(ADMIN)
            .content_type("application/json");
        let p = &p;
        async move { p.send(request, Some(body.to_string().into_bytes())).await }
    };
    let [(_, a, a_token), (_, b, b_token), (_, c, c_token)] = &registrations[..] else {
        unreachable!()
    };
    // A bad decision changes nothing and says which field is wrong.
    let (status, _, body) = decide(
        a,
        serde_json::json!({"decision": "reject", "operator": "a.nowak", "note": "no reason"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "reason");
    let (status, _, body) = decide(a, serde_json::json!({"decision": "approve", "operator": "a.nowak", "note": "documents checked at the desk"})).await;
    assert_eq!(status, 202, "{body}");
    p.wait_status(a, a_token, "confirmed").await;
    let (status, _, _) = decide(b, serde_json::json!({"decision": "reject", "reason": "deceased", "operator": "a.nowak", "note": "registry office by phone"})).await;
    assert_eq!(status, 202);
    let record = p.wait_status(b, b_token, "rejected").await;
    assert_eq!(record["reason"], "deceased");
    // The registry is back: a requeued registration is verified like any other.
    let registry = p.registry.as_ref().unwrap();
    let mut knobs = registry.knobs();
    knobs.outage = false;
    registry.set_knobs(knobs).unwrap();
    let (status, _, _) = decide(c, serde_json::json!({"decision": "requeue", "operator": "a.nowak", "note": "the registry is back"})).await;
    assert_eq!(status, 202);
    p.wait_status(c, c_token, "confirmed").await;
    // A decision on a registration no longer in review is refused, and changes nothing.
    let before = p.intake_messages().await;
    let (status, _, body) = decide(a, serde_json::json!({"decision": "reject", "reason": "not_found", "operator": "b.kowal", "note": "late"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "not_in_review");
    assert_eq!(p.intake_messages().await, before, "nothing appended");
    p.wait_availability("review", 8, 0).await; // b's place came back; a and c hold theirs
    let (_, record) = p.status(a, Some(a_token)).await;
    assert_eq!(record["status"], "confirmed", "{record}");
    let (_, _, listed) = p.send(p.http.get(&list_url).bearer_auth(ADMIN), None).await;
    assert_eq!(listed, serde_json::json!([]));
}

/// An operator's approve or reject for a registration that still waits for the registry (it
/// holds a place, `reserved`) is `409 not_in_review`, appends nothing and changes nothing:
/// only the registry, or an operator once the registration is in manual review, decides.
#[ntex::test]
async fn an_operators_decision_on_a_registration_not_in_review_is_refused() {
    // No verification runs: registrations stay `reserved`, as with the registry down.
    let p = Pipeline::start().await;
    p.set_capacity("pending", 1).await;
    let [(_, id, token)] = &submit_all(&p, &[3101], "pending").await[..] else {
        unreachable!()
    };
    p.wait_status(id, token, "reserved").await;
    let before = p.intake_messages().await;
    for body in [
        serde_json::json!({"decision": "approve", "operator": "a.nowak", "note": "looks fine"}),
        serde_json::json!({"decision": "reject", "reason": "deceased", "operator": "a.nowak", "note": "x"}),
        serde_json::json!({"decision": "requeue", "operator": "a.nowak", "note": "again"}),
    ] {
        let request = p
            .http
            .post(format!("{}/v1/admin/reviews/{id}", p.ingest))
            .bearer_auth(ADMIN)
            .content_type("application/json");
        let (status, _, answer) = p.send(request, Some(body.to_string().into_bytes())).await;
        assert_eq!(status, 409, "{body} got {answer}");
        assert_eq!(answer["error"]["code"], "not_in_review");
    }
    assert_eq!(p.intake_messages().await, before, "nothing appended");
    let (_, record) = p.status(id, Some(token)).await;
    assert_eq!(record["status"], "reserved", "{record}");
}

/// The age bound holds while the breaker is open: a registry in an outage opens the breaker
/// for far longer than `REG_VERIFY_MAX_AGE_S`, and with calls to spare every registration
/// still reaches manual review at its age instead of waiting for the breaker's next probe.
#[ntex::test]
async fn an_open_breaker_does_not_keep_registrations_from_manual_review() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs {
            outage: true,
            ..registry_sim::Knobs::default()
        }),
        verify_max_attempts: Some(1000),
        verify_max_age: Some(Duration::from_secs(3)),
        breaker_cooldown: Some(Duration::from_secs(600)),
        ..Options::default()
    })
    .await;
    p.set_capacity("breaker", 20).await;
    // More registrations than the failures that open the breaker (5).
    let registrations = submit_all(&p, &(8001..8013).collect::<Vec<_>>(), "breaker").await;
    for (_, id, token) in &registrations {
        p.wait_status(id, token, "manual_review").await;
    }
    let counts = p.registry.as_ref().unwrap().counts();
    assert!(
        counts.total < registrations.len() as u64 * 3,
        "the breaker was open, so few calls went out: {counts:?}"
    );
}

/// A registry whose faults echo the citizen's data, 64 KiB of it: every registration still
/// reaches manual review, and what the decision log keeps of the failure is a short code
/// without a trace of the echo.
#[ntex::test]
async fn a_registry_fault_echoing_personal_data_leaves_none_of_it_in_the_log() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs {
            error_rate: 1.0,
            fault_echo: true,
            ..registry_sim::Knobs::default()
        }),
        verify_max_attempts: Some(1),
        ..Options::default()
    })
    .await;
    p.set_capacity("echo", 20).await;
    let citizens: Vec<u32> = (8101..8111).collect();
    let registrations = submit_all(&p, &citizens, "echo").await;
    for (_, id, token) in &registrations {
        p.wait_status(id, token, "manual_review").await;
    }
    let counts = p.registry.as_ref().unwrap().counts();
    assert!(counts.faults > 0, "some faults echoed: {counts:?}");
    let js = async_nats::jetstream::new(p.nats.connect().await);
    let mut reviews = Vec::new();
    streams::replay::read_to_end(
        &js,
        streams::subjects::DECISIONS_STREAM,
        streams::subjects::reservation_decisions_filter(&streams::subjects::RegionFilter::All),
        1,
        |record: streams::replay::Record| {
            if let streams::events::Event::ReviewRequired(e) = record.envelope.unwrap().event {
                reviews.push(e);
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(reviews.len(), citizens.len());
    for review in &reviews {
        let json = serde_json::to_string(review).unwrap();
        assert!(json.len() < 1024, "{} bytes kept", json.len());
        for n in &citizens {
            let person = citizen(*n, "echo");
            for personal in [&person["national_id"], &person["full_name"]] {
                let personal = personal.as_str().unwrap();
                assert!(!json.contains(personal), "{personal} in {json}");
            }
        }
        assert!(review.error_code == "registry_fault_server", "{json}");
    }
}

/// Submits `citizens` (at most 64 at a time) across the `slots` locations; returns each
/// accepted registration and every answer's latency.
async fn load(
    p: &Pipeline,
    citizens: std::ops::Range<u32>,
    slots: &[String],
) -> (Vec<(u32, String, String)>, Vec<Duration>) {
    use futures::StreamExt;
    let results: Vec<_> = futures::stream::iter(citizens)
        .map(|n| {
            let location = slots[n as usize % slots.len()].clone();
            async move {
                let started = std::time::Instant::now();
                let (status, body) = p.submit(&citizen(n, &location), None).await;
                assert_eq!(status, 202, "{body}");
                (
                    (
                        n,
                        body["registration_id"].as_str().unwrap().to_owned(),
                        body["token"].as_str().unwrap().to_owned(),
                    ),
                    started.elapsed(),
                )
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().unzip()
}

fn percentile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort();
    let i = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
    latencies[i]
}

/// The load scenario, small enough for CI by default: `REG_LOAD_CITIZENS` (600) and
/// `REG_LOAD_OUTAGE_S` (3) scale it up. A registry with 30 % errors, one-second latency
/// spikes and hostile answers, and an outage started mid-load: every accepted registration
/// ends confirmed, rejected for the population rule's reason (or for a full line), in line
/// or in manual review, and nobody is answered twice. The same load without a registry runs
/// first, and the edge's latency of both is printed (a report, not a gate).
#[ntex::test]
async fn under_load_with_a_failing_registry_every_registration_ends_once() {
    let citizens: u32 = std::env::var("REG_LOAD_CITIZENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let outage = Duration::from_secs(
        std::env::var("REG_LOAD_OUTAGE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3),
    );
    let slots: Vec<String> = (0..10).map(|i| format!("load-{i}")).collect();
    // Half the citizens get a place at first; the line is as long as the capacity.
    let capacity = (citizens / 20).max(1);

    let baseline = Pipeline::start().await;
    for s in &slots {
        baseline.set_capacity(s, capacity).await;
    }
    let (_, mut without) = load(&baseline, 10_000..10_000 + citizens, &slots).await;
    drop(baseline);

    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs {
            error_rate: 0.3,
            spike_rate: 0.05,
            spike_ms: 1000,
            hostile_rate: 0.02,
            ..registry_sim::Knobs::default()
        }),
        ..Options::default()
    })
    .await;
    for s in &slots {
        p.set_capacity(s, capacity).await;
    }
    let registry = p.registry.clone().unwrap();
    let half = 10_000 + citizens / 2;
    let (mut accepted, mut with) = load(&p, 10_000..half, &slots).await;
    let mut knobs = registry.knobs();
    knobs.outage = true;
    registry.set_knobs(knobs.clone()).unwrap();
    let ends = {
        let registry = registry.clone();
        let mut knobs = knobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await; // the scenario's outage, not a wait for anything
            knobs.outage = false;
            registry.set_knobs(knobs).unwrap();
        })
    };
    let (more, latencies) = load(&p, half..10_000 + citizens, &slots).await;
    accepted.extend(more);
    with.extend(latencies);
    ends.await.unwrap();

    let records = settled(&p, &accepted, Duration::from_secs(600)).await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for (n, record) in &records {
        let status = record["status"].as_str().unwrap();
        *by_status.entry(status.to_owned()).or_default() += 1;
        match (status, record["reason"].as_str()) {
            ("confirmed", _) => assert_eq!(refusal(*n), None, "citizen {n}"),
            ("rejected", Some("slot_full")) => {}
            ("rejected", reason) => assert_eq!(reason, refusal(*n), "citizen {n}"),
            ("waitlisted" | "manual_review", _) => {}
            (other, _) => panic!("citizen {n} ended {other}: {record}"),
        }
    }
    let counts = registry.counts();
    let most_calls = counts.by_national_id.values().map(|c| c.requests).max();
    for (national_id, c) in &counts.by_national_id {
        assert!(c.answers <= 1, "{national_id} got {} answers", c.answers);
    }
    assert!(counts.outage > 0, "the outage was felt: {counts:?}");
    println!(
        "{citizens} citizens, outage {outage:?}: outcomes {by_status:?}; registry calls {} \
         (answers {:?}, faults {}, bare errors {}, outage {}, hostile {}, most calls for one \
         citizen {most_calls:?}); edge p50/p99 without a registry {:?}/{:?}, with a failing \
         one {:?}/{:?}",
        counts.total,
        counts.answered,
        counts.faults,
        counts.bare_errors,
        counts.outage,
        counts.hostile,
        percentile(&mut without, 0.5),
        percentile(&mut without, 0.99),
        percentile(&mut with, 0.5),
        percentile(&mut with, 0.99),
    );
}

/// Two processor replicas share each region's verification consumer; a verdict stored twice
/// (as after a crash between storing it and acknowledging the decision) is appended again by
/// hand. Every registration still gets exactly one outcome in the decision log.
#[ntex::test]
async fn two_replicas_and_a_verdict_stored_twice_give_one_outcome_each() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs::default()),
        processor_replicas: 2,
        ..Options::default()
    })
    .await;
    p.set_capacity("replicas", 100).await;
    let citizens: Vec<u32> = (4000..4030).chain([4097, 4098, 4099]).collect();
    let registrations = submit_all(&p, &citizens, "replicas").await;
    let records = settled(&p, &registrations, Duration::from_secs(60)).await;
    for (n, record) in &records {
        let want = refusal(*n).map_or("confirmed", |_| "rejected");
        assert_eq!(record["status"], want, "citizen {n}: {record}");
    }
    // The verdicts again, as a crashed replica's redelivery would store them: a refusal for
    // a confirmed registration and a pass for a rejected one.
    let js = async_nats::jetstream::new(p.nats.connect().await);
    let region = streams::model::Region::parse("mazowieckie").unwrap();
    for (n, id, _) in &registrations {
        let id = streams::model::RegistrationId::parse(id).unwrap();
        let event = match refusal(*n) {
            None => {
                streams::events::Event::VerificationFailed(streams::events::VerificationFailed {
                    registration_id: id.clone(),
                    reason: streams::events::RegistryRefusal::NotFound,
                    reviewer: None,
                })
            }
            Some(_) => {
                streams::events::Event::VerificationPassed(streams::events::VerificationPassed {
                    registration_id: id.clone(),
                    reviewer: None,
                })
            }
        };
        let envelope = streams::events::Envelope::new(id.to_string(), event);
        js.publish(
            streams::subjects::intake(&region, streams::subjects::IntakeKind::Verification),
            envelope.encode().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // A marker after them: once it is decided, everything before it was read.
    let (_, marker, marker_token) = &submit_all(&p, &[4500], "replicas").await[0];
    settled(
        &p,
        &[(4500, marker.clone(), marker_token.clone())],
        Duration::from_secs(60),
    )
    .await;
    let mut outcomes: HashMap<String, Vec<&'static str>> = HashMap::new();
    streams::replay::read_to_end(
        &js,
        streams::subjects::DECISIONS_STREAM,
        streams::subjects::reservation_decisions_filter(&streams::subjects::RegionFilter::All),
        1,
        |record: streams::replay::Record| match record.envelope.unwrap().event {
            streams::events::Event::RegistrationConfirmed(e) => outcomes
                .entry(e.registration_id.to_string())
                .or_default()
                .push("confirmed"),
            streams::events::Event::SlotRejected(e) => outcomes
                .entry(e.registration_id.to_string())
                .or_default()
                .push("rejected"),
            _ => {}
        },
    )
    .await
    .unwrap();
    for (n, id, token) in &registrations {
        assert_eq!(outcomes[id].len(), 1, "citizen {n}: {:?}", outcomes[id]);
        let (_, record) = p.status(id, Some(token)).await;
        let want = refusal(*n).map_or("confirmed", |_| "rejected");
        assert_eq!(record["status"], want, "citizen {n} changed: {record}");
    }
    let counts = p.registry.as_ref().unwrap().counts();
    for (national_id, c) in &counts.by_national_id {
        assert_eq!(c.answers, 1, "{national_id}: {c:?}");
    }
}
