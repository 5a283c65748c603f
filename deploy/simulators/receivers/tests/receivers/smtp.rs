//! The SMTP sink, with lettre and by hand.

use lettre::AsyncTransport as _;
use lettre::address::Envelope;
use receivers::smtp::{MAX_LINE_BYTES, MAX_MESSAGE_BYTES, MAX_RECIPIENTS};
use receivers::{Knobs, NotificationCounts};

use lettre::{AsyncSmtpTransport, Tokio1Executor};
use receivers::MailStore;

use crate::{email, start, start_keeping};

#[tokio::test]
async fn lettre_delivers_and_a_resend_of_the_same_notification_is_a_stored_once_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;

    let response = sim
        .send(email(Some("n-1"), Some("r-1"), "Your slot is confirmed."))
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    assert_eq!(sim.eml_files(), ["n-1.eml"]);
    let stored = sim.eml("n-1");
    assert!(stored.contains("X-Notification-Id: n-1\r\n"), "{stored}");
    assert!(stored.contains("X-Registration-Id: r-1\r\n"), "{stored}");
    assert!(
        stored.contains("Subject: Your vaccination slot\r\n"),
        "{stored}"
    );
    assert!(stored.contains("Your slot is confirmed."), "{stored}");

    // A retry after a lost acknowledgement: accepted, as an idempotent provider would, and
    // not stored again.
    let response = sim
        .send(email(Some("n-1"), Some("r-1"), "A different text."))
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    assert_eq!(sim.eml_files(), ["n-1.eml"]);
    assert_eq!(sim.eml("n-1"), stored, "the first message stays as it was");

    let counts = sim.counts().await;
    assert_eq!((counts.smtp.accepted, counts.smtp.duplicates), (1, 1));
    assert_eq!(counts.smtp.deliveries(), 2);
    assert_eq!(
        counts.smtp.for_id("n-1"),
        NotificationCounts {
            attempts: 2,
            stored: true
        }
    );
    assert_eq!(counts.webhook.deliveries(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn a_message_without_both_id_headers_is_refused_with_550_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    for (message, missing) in [
        (
            email(None, Some("r-1"), "no notification id"),
            "X-Notification-Id",
        ),
        (
            email(Some("n-2"), None, "no registration id"),
            "X-Registration-Id",
        ),
        (email(None, None, "no ids at all"), "X-Notification-Id"),
        (
            email(Some("../n-3"), Some("r-1"), "an id that is a path"),
            "X-Notification-Id",
        ),
    ] {
        let error = sim.send(message).await.unwrap_err();
        assert!(error.is_permanent(), "{error}");
        assert_eq!(error.status().unwrap().to_string(), "550", "{error}");
        assert!(error.to_string().contains(missing), "{error}");
    }
    assert!(sim.eml_files().is_empty(), "{:?}", sim.eml_files());
    let counts = sim.counts().await;
    assert_eq!(counts.smtp.refused, 4);
    assert_eq!(counts.smtp.deliveries(), 4);
    assert_eq!(
        counts.smtp.for_id("n-2"),
        NotificationCounts {
            attempts: 1,
            stored: false
        }
    );
    sim.stop().await;
}

#[tokio::test]
async fn smtp_fail_rate_one_answers_451_until_set_to_zero_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Knobs {
        smtp_fail_rate: 1.0,
        ..Knobs::default()
    };
    let sim = start(dir.path(), failing).await;
    for _ in 0..2 {
        let error = sim
            .send(email(Some("n-1"), Some("r-1"), "try me"))
            .await
            .unwrap_err();
        assert!(error.is_transient(), "{error}");
        assert_eq!(error.status().unwrap().to_string(), "451", "{error}");
        assert!(error.to_string().contains("temporary failure"), "{error}");
    }
    assert!(sim.eml_files().is_empty());

    let reply = sim.put_knobs(r#"{"smtp_fail_rate": 0}"#).await;
    assert_eq!(reply.status, reqwest::StatusCode::OK, "{}", reply.body);
    let response = sim
        .send(email(Some("n-1"), Some("r-1"), "try me"))
        .await
        .unwrap();
    assert_eq!(response.code().to_string(), "250");
    assert_eq!(sim.eml_files(), ["n-1.eml"]);

    let counts = sim.counts().await;
    assert_eq!((counts.smtp.failed_by_knob, counts.smtp.accepted), (2, 1));
    assert_eq!(
        counts.smtp.for_id("n-1"),
        NotificationCounts {
            attempts: 3,
            stored: true
        }
    );
    sim.stop().await;
}

#[tokio::test]
async fn the_sink_speaks_smtp_by_hand_and_refuses_commands_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let mut smtp = sim.raw_smtp().await;

    smtp.expect("MAIL FROM:<a@example.org>", 503).await;
    smtp.expect("EHLO", 501).await;
    let ehlo = smtp.expect("EHLO client.example", 250).await;
    for extension in ["8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"] {
        assert!(ehlo.iter().any(|line| line == extension), "{ehlo:?}");
    }
    assert!(
        ehlo.contains(&format!("SIZE {MAX_MESSAGE_BYTES}")),
        "{ehlo:?}"
    );
    smtp.expect("NOOP", 250).await;
    smtp.expect("VRFY jan", 252).await;
    smtp.expect("STARTTLS", 502).await;
    smtp.expect("AUTH PLAIN AGphbgBwYXNz", 502).await;
    smtp.expect("WHAT is this", 500).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 503).await;
    smtp.expect("DATA", 503).await;
    smtp.expect("MAIL FROM:a@example.org", 501).await;
    smtp.expect("MAIL FROM:<a@example.org> SIZE=2000000", 552)
        .await;
    smtp.expect("MAIL FROM:<a@example.org> SIZE=100 RET=HDRS", 555)
        .await;
    // The null reverse path, lowercase, with the parameters lettre may send.
    smtp.expect("mail from:<> BODY=8BITMIME SMTPUTF8", 250)
        .await;
    smtp.expect("MAIL FROM:<b@example.org>", 503).await;
    smtp.expect("DATA", 503).await;
    smtp.expect("RCPT TO:<>", 501).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 250).await;
    smtp.expect("RSET", 250).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 503).await;
    smtp.expect("HELO client.example", 250).await;
    smtp.expect("MAIL FROM:<a@example.org>", 250).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 250).await;
    smtp.expect("DATA extra", 501).await;
    smtp.expect("QUIT", 221).await;
    assert!(smtp.closed().await);
    assert_eq!(sim.counts().await.smtp.deliveries(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn dot_stuffing_is_undone_and_the_message_is_stored_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let mut smtp = sim.raw_smtp().await;
    smtp.expect("EHLO client.example", 250).await;
    smtp.expect("MAIL FROM:<a@example.org>", 250).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 250).await;
    smtp.expect("DATA", 354).await;
    smtp.write(
        b"X-Notification-Id: n-dots\r\nX-Registration-Id: r-1\r\n\r\n\
          ..a line that starts with a dot\r\n\
          ..\r\n\
          no dot.\r\n\
          .\r\n",
    )
    .await;
    let (code, lines) = smtp.reply().await;
    assert_eq!(code, 250, "{lines:?}");
    assert_eq!(
        sim.eml("n-dots"),
        "X-Notification-Id: n-dots\r\nX-Registration-Id: r-1\r\n\r\n\
         .a line that starts with a dot\r\n\
         .\r\n\
         no dot.\r\n"
    );
    // The session goes on: a second message on the same connection.
    smtp.expect("MAIL FROM:<a@example.org>", 250).await;
    smtp.expect("RCPT TO:<jan@example.pl>", 250).await;
    smtp.expect("DATA", 354).await;
    smtp.write(b"X-Notification-Id: n-two\r\nX-Registration-Id: r-1\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(smtp.reply().await.0, 250);
    smtp.expect("QUIT", 221).await;

    // lettre stuffs a body's dots itself: they arrive as written.
    let body = ".starts with a dot\n.\nends here";
    sim.send(crate::email(Some("n-lettre"), Some("r-1"), body))
        .await
        .unwrap();
    let stored = sim.eml("n-lettre");
    assert!(
        stored.ends_with("\r\n\r\n.starts with a dot\r\n.\r\nends here\r\n"),
        "{stored:?}"
    );
    assert_eq!(sim.eml_files(), ["n-dots.eml", "n-lettre.eml", "n-two.eml"]);
    sim.stop().await;
}

#[tokio::test]
async fn oversize_messages_long_lines_and_too_many_recipients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;

    // Over the size limit, through lettre: read to its end, then 552.
    let mut big = b"X-Notification-Id: n-big\r\nX-Registration-Id: r-1\r\n\r\n".to_vec();
    while big.len() <= MAX_MESSAGE_BYTES {
        big.extend_from_slice(&[b'x'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    let envelope = Envelope::new(
        Some("a@example.org".parse().unwrap()),
        vec!["jan@example.pl".parse().unwrap()],
    )
    .unwrap();
    let error = sim.mailer().send_raw(&envelope, &big).await.unwrap_err();
    assert_eq!(error.status().unwrap().to_string(), "552", "{error}");

    let mut smtp = sim.raw_smtp().await;
    smtp.expect("EHLO client.example", 250).await;
    // A command line over the limit.
    let long = format!("NOOP {}", "x".repeat(MAX_LINE_BYTES));
    smtp.expect(&long, 500).await;
    smtp.expect("MAIL FROM:<a@example.org>", 250).await;
    for n in 0..MAX_RECIPIENTS {
        smtp.expect(&format!("RCPT TO:<citizen{n}@example.pl>"), 250)
            .await;
    }
    smtp.expect("RCPT TO:<one-too-many@example.pl>", 452).await;
    // A message line over the limit: read to the end of the message, then refused.
    smtp.expect("DATA", 354).await;
    let line = "y".repeat(MAX_LINE_BYTES);
    smtp.write(
        format!("X-Notification-Id: n-long\r\nX-Registration-Id: r-1\r\n\r\n{line}\r\n.\r\n")
            .as_bytes(),
    )
    .await;
    let (code, lines) = smtp.reply().await;
    assert_eq!(code, 500, "{lines:?}");
    assert!(lines[0].contains("line too long"), "{lines:?}");
    smtp.expect("QUIT", 221).await;

    assert!(sim.eml_files().is_empty(), "{:?}", sim.eml_files());
    let counts = sim.counts().await;
    assert_eq!(counts.smtp.refused, 2);
    assert_eq!(counts.smtp.for_id("n-big").attempts, 1);
    assert_eq!(counts.smtp.for_id("n-long").attempts, 1);
    sim.stop().await;
}

#[tokio::test]
async fn stored_notifications_are_still_duplicates_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    sim.send(email(Some("n-1"), Some("r-1"), "first"))
        .await
        .unwrap();
    assert_eq!(
        sim.post_signed("w-1", "r-1", r#"{"n":1}"#).await.status,
        200
    );
    sim.stop().await;

    let sim = start(dir.path(), Knobs::default()).await;
    sim.send(email(Some("n-1"), Some("r-1"), "again"))
        .await
        .unwrap();
    let reply = sim.post_signed("w-1", "r-1", r#"{"n":2}"#).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "duplicate");
    assert_eq!(sim.eml_files(), ["n-1.eml"]);
    assert!(sim.eml("n-1").contains("first"));
    assert_eq!(sim.deliveries().len(), 1);
    let counts = sim.counts().await;
    assert_eq!((counts.smtp.accepted, counts.smtp.duplicates), (0, 1));
    assert_eq!((counts.webhook.accepted, counts.webhook.duplicates), (0, 1));
    assert!(counts.smtp.for_id("n-1").stored);
    sim.stop().await;
}

#[tokio::test]
async fn a_stop_tells_idle_sessions_421_and_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let mut smtp = sim.raw_smtp().await;
    smtp.expect("EHLO client.example", 250).await;
    sim.shutdown.cancel();
    let (code, lines) = smtp.reply().await;
    assert_eq!(code, 421, "{lines:?}");
    assert!(smtp.closed().await);
    sim.stop().await;
}

/// Given the sink keeping mail in one mbox, when lettre sends several messages over one
/// pooled session (as the notification processor does) and resends one after a restart,
/// then each is appended once, in full, no `.eml` file is made, and the resend is a
/// duplicate.
#[tokio::test]
async fn an_mbox_sink_stores_each_message_once_over_a_reused_session_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_keeping(dir.path(), Knobs::default(), MailStore::Mbox).await;
    let pooled = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sim.smtp_port)
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(1))
        .build();
    for n in 1..=3 {
        let id = format!("n-{n}");
        pooled
            .send(email(
                Some(&id),
                Some("r-1"),
                &format!("message {n}\nFrom the sink"),
            ))
            .await
            .unwrap();
    }
    drop(pooled);
    sim.stop().await;

    let sim = start_keeping(dir.path(), Knobs::default(), MailStore::Mbox).await;
    sim.send(email(Some("n-2"), Some("r-1"), "again"))
        .await
        .unwrap();
    let counts = sim.counts().await;
    assert_eq!((counts.smtp.accepted, counts.smtp.duplicates), (0, 1));
    let mbox = std::fs::read_to_string(sim.receivers.mbox_file().unwrap()).unwrap();
    for n in 1..=3 {
        assert_eq!(
            mbox.matches(&format!("X-Notification-Id: n-{n}\n")).count(),
            1,
            "{mbox}"
        );
        assert!(
            mbox.contains(&format!("message {n}\n>From the sink\n")),
            "{mbox}"
        );
    }
    assert!(!mbox.contains("again"));
    assert_eq!(sim.eml_files(), ["messages.mbox"]);
    sim.stop().await;
}
