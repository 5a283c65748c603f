//! Notifications end to end, through the local mail and webhook receivers.

use std::time::Duration;

use crate::helpers::*;

/// Every decision a citizen should hear of reaches them once per channel: a registration with
/// an e-mail and a phone, reserved then confirmed, then one put in line and told when it got
/// the place a cancellation freed. Both receivers fail a share of the attempts; what they
/// stored is exactly one message per (registration, decision, channel), in the citizen's
/// language, with the status link's token in the fragment and no national id.
#[ntex::test]
async fn each_decision_reaches_the_citizen_once_per_channel_through_failing_providers() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs::default()),
        receivers: Some(receivers::Knobs {
            smtp_fail_rate: 0.2,
            webhook_fail_rate: 0.2,
        }),
        ..Options::default()
    })
    .await;
    p.set_capacity("notify", 1).await;
    let mut first = citizen(5001, "notify");
    first["phone"] = "+48600100200".into();
    let (status, a) = p.submit(&first, None).await;
    assert_eq!(status, 202, "{a}");
    let (a, a_token) = (
        a["registration_id"].as_str().unwrap(),
        a["token"].as_str().unwrap(),
    );
    p.wait_status(a, a_token, "confirmed").await;
    let second = citizen(5002, "notify"); // e-mail only, Polish
    let (_, b) = p.submit(&second, None).await;
    let (b, b_token) = (
        b["registration_id"].as_str().unwrap(),
        b["token"].as_str().unwrap(),
    );
    p.wait_status(b, b_token, "waitlisted").await;
    let (status, _) = p.cancel(a, a_token).await;
    assert_eq!(status, 202);
    p.wait_status(b, b_token, "confirmed").await;

    // a: reserved, confirmed, cancelled on two channels; b: waitlisted, reserved, confirmed
    // by e-mail: 9 messages, each stored once however often a delivery was retried.
    let (receivers, _) = p.receivers.as_ref().unwrap();
    let counts = testkit::eventually("nine messages stored", Duration::from_secs(60), || async {
        let c = receivers.counts();
        (c.smtp.accepted + c.webhook.accepted == 9).then_some(c)
    })
    .await;
    assert_eq!(
        (counts.smtp.accepted, counts.webhook.accepted),
        (6, 3),
        "{counts:?}"
    );
    for transport in [&counts.smtp, &counts.webhook] {
        for (id, c) in &transport.by_notification_id {
            assert!(c.stored, "{id} was never stored: {c:?}");
        }
    }
    let mails: Vec<String> = std::fs::read_dir(receivers.mail_dir())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(mails.len(), 6);
    let national_ids = [
        first["national_id"].as_str().unwrap(),
        second["national_id"].as_str().unwrap(),
    ];
    for mail in &mails {
        assert!(mail.contains("X-Notification-Id") && mail.contains("X-Registration-Id"));
        assert!(mail.contains("#registration="), "the status link: {mail}");
        for national_id in national_ids {
            assert!(
                !mail.contains(national_id),
                "a national id in a message: {mail}"
            );
        }
    }
    assert!(
        mails
            .iter()
            .filter(|m| m.contains(b))
            .all(|m| m.contains("Subject: =?utf-8?") || m.contains("Twoj") || m.contains("Jeste")),
        "b's messages are in Polish"
    );
    let hooks = std::fs::read_to_string(receivers.webhook_file()).unwrap();
    assert_eq!(hooks.lines().count(), 3, "{hooks}");
    assert!(
        hooks
            .lines()
            .all(|l| l.contains(a) && l.contains("+48600100200"))
    );
    // Six decisions told of, two submissions read and opened: each registration's later
    // decisions (and every retry) found its contact in the processor's cache.
    let contacts = "notification_contacts_total{source=";
    let read = p
        .metric(&p.processors, &format!("{contacts}\"submission\"}}"))
        .await;
    let cached = p
        .metric(&p.processors, &format!("{contacts}\"cache\"}}"))
        .await;
    assert_eq!(read, 2, "submissions read for a contact");
    assert!(cached >= 4, "contacts from the cache: {cached}");
}

/// A citizen who lost their link asks for a fresh one with their national id and birth date:
/// the same `202` whether or not they are registered, a message only to the contact on
/// record, and a limit per citizen.
#[ntex::test]
async fn a_lost_link_is_recovered_only_through_the_contact_on_record() {
    let p = Pipeline::start_with(Options {
        receivers: Some(receivers::Knobs::default()),
        ..Options::default()
    })
    .await;
    p.set_capacity("recover", 5).await;
    let known = citizen(6001, "recover");
    let (_, answer) = p.submit(&known, None).await;
    let (id, token) = (
        answer["registration_id"].as_str().unwrap().to_owned(),
        answer["token"].as_str().unwrap().to_owned(),
    );
    p.wait_status(&id, &token, "reserved").await;
    let (receivers, _) = p.receivers.as_ref().unwrap();
    let stored = || {
        let c = receivers.counts();
        c.smtp.accepted + c.webhook.accepted
    };
    testkit::eventually("the reserved message", Duration::from_secs(30), || async {
        (stored() == 1).then_some(())
    })
    .await;

    let ask = |national_id: &str, birth_date: &str| {
        let body = serde_json::json!({"national_id": national_id, "birth_date": birth_date});
        let request = p
            .http
            .post(format!("{}/v1/registrations/recover", p.ingest))
            .content_type("application/json");
        let p = &p;
        async move { p.send(request, Some(body.to_string().into_bytes())).await }
    };
    let (status, _, for_known) = ask(
        known["national_id"].as_str().unwrap(),
        known["birth_date"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{for_known}");
    let link = testkit::eventually("the recovery message", Duration::from_secs(30), || async {
        let mails: Vec<String> = std::fs::read_dir(receivers.mail_dir())
            .ok()?
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        mails
            .into_iter()
            .find(|m| m.contains("#registration=") && stored() == 2)
    })
    .await;
    assert!(
        link.contains(&id),
        "the link opens the citizen's registration"
    );

    // Someone never registered (a valid PESEL): the same answer, and nothing is sent.
    let stranger = citizen(6002, "recover");
    let (status, _, for_stranger) = ask(
        stranger["national_id"].as_str().unwrap(),
        stranger["birth_date"].as_str().unwrap(),
    )
    .await;
    assert_eq!((status, &for_stranger), (202, &for_known), "no oracle");
    // A malformed request says which field, and reveals nothing more.
    let (status, _, body) = ask(stranger["national_id"].as_str().unwrap(), "1999-01-01").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "national_id");
    // Three recoveries an hour per citizen (the default): the fourth is refused.
    for _ in 0..2 {
        let (status, _, _) = ask(
            known["national_id"].as_str().unwrap(),
            known["birth_date"].as_str().unwrap(),
        )
        .await;
        assert_eq!(status, 202);
    }
    let (status, headers, body) = ask(
        known["national_id"].as_str().unwrap(),
        known["birth_date"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.get("retry-after").is_some());
    // The stranger's request sent nothing: only the known citizen's messages were stored
    // (reserved, then three recoveries).
    testkit::eventually("four messages", Duration::from_secs(30), || async {
        (stored() == 4).then_some(())
    })
    .await;
    let counts = receivers.counts();
    assert_eq!(counts.smtp.accepted, 4, "{counts:?}");
}

/// A provider that keeps failing: the message is dead-lettered after the attempts, listed for
/// operators, and re-driven once the provider is back, arriving once.
#[ntex::test]
async fn an_undeliverable_message_is_dead_lettered_listed_and_redriven_once() {
    let p = Pipeline::start_with(Options {
        receivers: Some(receivers::Knobs {
            smtp_fail_rate: 1.0,
            webhook_fail_rate: 0.0,
        }),
        notify_max_attempts: Some(3),
        ..Options::default()
    })
    .await;
    p.set_capacity("dead", 5).await;
    let (_, answer) = p.submit(&citizen(7001, "dead"), None).await;
    let id = answer["registration_id"].as_str().unwrap().to_owned();
    let list_url = format!("{}/v1/admin/notifications/dead-letters", p.read);
    let (status, _, _) = p.send(p.http.get(&list_url), None).await;
    assert_eq!(status, 401);
    let dead = testkit::eventually("a dead letter", Duration::from_secs(60), || async {
        let (status, _, body) = p.send(p.http.get(&list_url).bearer_auth(ADMIN), None).await;
        (status == 200 && body.as_array().is_some_and(|a| a.len() == 1)).then_some(body[0].clone())
    })
    .await;
    assert_eq!(dead["registration_id"], id.as_str(), "{dead}");
    assert_eq!(
        (dead["channel"].as_str(), dead["attempts"].as_u64()),
        (Some("email"), Some(3))
    );
    // A code and its fixed sentence, not the mail server's words.
    assert_eq!(
        (dead["error_code"].as_str(), dead["last_error"].as_str()),
        (
            Some("smtp_451"),
            Some("the mail server refused the message for now")
        ),
        "{dead}"
    );
    let (receivers, _) = p.receivers.as_ref().unwrap();
    assert_eq!(receivers.counts().smtp.accepted, 0);

    // The provider is back; an operator re-drives the dead letter.
    receivers
        .set_knobs(receivers::Knobs {
            smtp_fail_rate: 0.0,
            webhook_fail_rate: 0.0,
        })
        .unwrap();
    let body = serde_json::json!({
        "registration_id": id, "decision_seq": dead["decision_seq"], "channel": "email",
        "operator": "a.nowak", "note": "the mail relay is back",
    });
    let redrive = format!("{}/v1/admin/notifications/redrive", p.ingest);
    let (status, _, answer) = p
        .send(
            p.http.post(&redrive).content_type("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    let (status, _, answer) = p
        .send(
            p.http
                .post(&redrive)
                .bearer_auth(ADMIN)
                .content_type("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    testkit::eventually("the re-driven message", Duration::from_secs(30), || async {
        (receivers.counts().smtp.accepted == 1).then_some(())
    })
    .await;
    testkit::eventually("the dead letter gone", Duration::from_secs(30), || async {
        let (_, _, body) = p.send(p.http.get(&list_url).bearer_auth(ADMIN), None).await;
        (body == serde_json::json!([])).then_some(())
    })
    .await;
    let counts = receivers.counts();
    assert_eq!(
        (counts.smtp.accepted, counts.smtp.duplicates),
        (1, 0),
        "{counts:?}"
    );
}

/// Every processor reports its flow per region on `/metrics`: records handled (the rate),
/// records delivered again (a failing provider makes the notification processor see
/// decisions twice) and its lag, which is back at 0 once everything is handled.
#[ntex::test]
async fn each_processor_reports_its_lag_rate_and_redeliveries_per_region() {
    let p = Pipeline::start_with(Options {
        registry: Some(registry_sim::Knobs::default()),
        receivers: Some(receivers::Knobs {
            smtp_fail_rate: 0.5,
            webhook_fail_rate: 0.5,
        }),
        ..Options::default()
    })
    .await;
    let series = |name: &str, processor: &str| {
        format!("{name}{{processor=\"{processor}\",region=\"mazowieckie\"}}")
    };
    let handled = |processor| series("processor_handled_total", processor);
    p.set_capacity("flow", 4).await;
    let mut registrations = Vec::new();
    for n in 0..12 {
        let (status, body) = p.submit(&citizen(7000 + n, "flow"), None).await;
        assert_eq!(status, 202, "{body}");
        registrations.push(body);
    }
    for r in &registrations[..4] {
        let (id, token) = (
            r["registration_id"].as_str().unwrap(),
            r["token"].as_str().unwrap(),
        );
        p.wait_status(id, token, "confirmed").await;
    }
    let metrics = testkit::eventually(
        "every processor's flow on /metrics",
        Duration::from_secs(60),
        || async {
            let m = e2e::chaos::services::scrape(&p.http, &p.processors).await;
            let get = |key: &str| m.get(key).copied().unwrap_or(0);
            // 12 submissions and 4 verdicts read by reservation; its 16+ decisions read by
            // verification and notification; a failing provider redelivers some of them.
            let moving = get(&handled("reservation")) >= 16
                && get(&handled("verification")) >= 16
                && get(&handled("notification")) >= 16
                && get(&series("processor_redeliveries_total", "notification")) >= 1;
            moving.then_some(m)
        },
    )
    .await;
    for processor in ["reservation", "verification", "notification"] {
        let pending = series("processor_pending", processor);
        assert!(metrics.contains_key(&pending), "{pending} is exported");
        assert!(
            metrics.contains_key(&series("processor_redeliveries_total", processor)),
            "{processor}'s redeliveries are exported"
        );
    }
    // Nothing is left to handle: every processor's lag is back at 0.
    testkit::eventually("every lag back at 0", Duration::from_secs(60), || async {
        let m = e2e::chaos::services::scrape(&p.http, &p.processors).await;
        ["reservation", "verification", "notification"]
            .iter()
            .all(|processor| m.get(&series("processor_pending", processor)) == Some(&0))
            .then_some(())
    })
    .await;
}

/// Every e-mail carries a `Message-ID` (RFC 5322 §3.6.4) derived from its notification id
/// and the sender's domain, so a provider's de-duplication can use it and a retry carries
/// the same one: the notification processor's mailer sends one notification to two SMTP
/// sinks (as a retry after a crash may reach another relay), and an e-mail parser we did not
/// write (`mail-parser`) reads the same id from both stored messages.
#[tokio::test]
async fn every_email_carries_a_message_id_derived_from_its_notification_id() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut stored = Vec::new();
    let notification_id = "3f1c0e5a9b7d4c2e8f6a1b3c5d7e9f01";
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let sink = receivers::Receivers::new(
            dir.path().to_owned(),
            receivers::Knobs::default(),
            "unused".into(),
        )
        .unwrap();
        let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = smtp.local_addr().unwrap().port();
        tokio::spawn(sink.clone().serve(smtp, http, shutdown.clone()));
        let mailer = processors::notification::transport::Mailer::new(
            "127.0.0.1",
            port,
            "Rejestracja <no-reply@rejestracja.example>",
            Duration::from_secs(10),
            1,
        )
        .unwrap();
        let message = processors::notification::decide::Message {
            subject: "Twoja rejestracja".into(),
            text: "Miejsce jest zarezerwowane.".into(),
            html: "<p>Miejsce jest zarezerwowane.</p>".into(),
        };
        mailer
            .send(
                "citizen1@example.pl",
                &message,
                notification_id,
                "mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f",
            )
            .await
            .expect("the sink stores it");
        let files: Vec<_> = std::fs::read_dir(sink.mail_dir())
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(files.len(), 1);
        stored.push((dir, files.into_iter().next().unwrap()));
    }
    shutdown.cancel();
    let ids: Vec<String> = stored
        .iter()
        .map(|(_, raw)| {
            let parsed = mail_parser::MessageParser::default()
                .parse(raw)
                .expect("a parsable message");
            assert_eq!(
                parsed.header_values("Message-ID").count(),
                1,
                "exactly one Message-ID: {}",
                String::from_utf8_lossy(raw)
            );
            parsed
                .message_id()
                .unwrap_or_else(|| panic!("no Message-ID in {}", String::from_utf8_lossy(raw)))
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids[0],
        format!("{notification_id}@rejestracja.example"),
        "derived from the notification id and the sender's domain"
    );
    assert_eq!(ids[0], ids[1], "a retry carries the same Message-ID");
}
