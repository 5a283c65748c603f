//! The webhook receiver: signed deliveries, refusals, the failure knob.

use receivers::{Knobs, NotificationCounts, Simulator as _};
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;

use crate::{SECRET, now, start};

/// Request headers, name and value.
type Headers = Vec<(&'static str, String)>;

const BODY: &str = r#"{"notification_id":"w-1","registration_id":"r-1","decision":"confirmed","slot":"2025-03-01T09:00:00Z"}"#;

#[tokio::test]
async fn a_signed_delivery_is_appended_once_and_a_repeat_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;

    let reply = sim.post_signed("w-1", "r-1", BODY).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.json(),
        serde_json::json!({"status": "accepted", "notification_id": "w-1"})
    );
    let deliveries = sim.deliveries();
    assert_eq!(deliveries.len(), 1);
    let line = &deliveries[0];
    assert_eq!(line["notification_id"], "w-1");
    assert_eq!(line["registration_id"], "r-1");
    assert_eq!(
        line["body"],
        serde_json::from_str::<serde_json::Value>(BODY).unwrap()
    );
    let received_at = line["received_at"].as_str().unwrap();
    let received_at = chrono::DateTime::parse_from_rfc3339(received_at).unwrap();
    assert!(
        (received_at.timestamp() - now()).abs() <= 5,
        "{received_at}"
    );
    let mut fields: Vec<&String> = line.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["body", "notification_id", "received_at", "registration_id"]
    );

    // A retry, even with another body and a fresh signature: acknowledged, not appended.
    let reply = sim.post_signed("w-1", "r-1", r#"{"again":true}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["status"], "duplicate");
    assert_eq!(sim.deliveries().len(), 1);

    let counts = sim.counts().await;
    assert_eq!((counts.webhook.accepted, counts.webhook.duplicates), (1, 1));
    assert_eq!(
        counts.webhook.for_id("w-1"),
        NotificationCounts {
            attempts: 2,
            stored: true
        }
    );
    assert_eq!(counts.smtp.deliveries(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_get_401_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let ts = now();
    let signed = |secret: &str, timestamp: i64, body: &str| {
        receivers::sign(secret.as_bytes(), timestamp, "w-1", "r-1", body.as_bytes())
    };
    let ids = || {
        vec![
            ("X-Notification-Id", "w-1".to_owned()),
            ("X-Registration-Id", "r-1".to_owned()),
        ]
    };
    let with = |extra: &[(&'static str, String)]| {
        let mut headers = ids();
        headers.extend_from_slice(extra);
        headers
    };
    let cases: Vec<(&str, Headers, &str)> = vec![
        (
            "signed with another secret",
            with(&[
                ("X-Signature-Timestamp", ts.to_string()),
                ("X-Signature", signed("not-the-secret", ts, BODY)),
            ]),
            BODY,
        ),
        (
            "body changed after signing",
            with(&[
                ("X-Signature-Timestamp", ts.to_string()),
                ("X-Signature", signed(SECRET, ts, BODY)),
            ]),
            r#"{"decision":"rejected"}"#,
        ),
        (
            "timestamp changed after signing",
            with(&[
                ("X-Signature-Timestamp", (ts + 1).to_string()),
                ("X-Signature", signed(SECRET, ts, BODY)),
            ]),
            BODY,
        ),
        (
            "no sha256= prefix",
            with(&[
                ("X-Signature-Timestamp", ts.to_string()),
                ("X-Signature", signed(SECRET, ts, BODY)[7..].to_owned()),
            ]),
            BODY,
        ),
        (
            "no signature",
            with(&[("X-Signature-Timestamp", ts.to_string())]),
            BODY,
        ),
        (
            "no timestamp",
            with(&[("X-Signature", signed(SECRET, ts, BODY))]),
            BODY,
        ),
        (
            "a timestamp that is not unix seconds",
            with(&[
                ("X-Signature-Timestamp", "yesterday".to_owned()),
                ("X-Signature", signed(SECRET, ts, BODY)),
            ]),
            BODY,
        ),
    ];
    let refusals = cases.len();
    for (case, headers, body) in cases {
        let reply = sim.post_webhook(&headers, body).await;
        reply.assert_unauthorized(case);
    }
    // Correctly signed, but too old or too far ahead (the window is 300 s; 310 leaves room
    // for a test on a busy machine whose clock moved on since `ts` was taken).
    for timestamp in [ts - 310, ts + 310, 0] {
        let reply = sim.post_signed_at("w-1", "r-1", timestamp, BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{timestamp}: {}",
            reply.body
        );
        assert!(reply.is_json_error());
        assert!(
            reply.body.contains("X-Signature-Timestamp"),
            "{}",
            reply.body
        );
    }
    // Within the window, either way.
    let reply = sim.post_signed_at("w-1", "r-1", ts - 240, BODY).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = sim.post_signed_at("w-2", "r-1", ts + 240, BODY).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    assert_eq!(sim.deliveries().len(), 2);
    let counts = sim.counts().await;
    assert_eq!(counts.webhook.refused as usize, refusals + 3);
    assert_eq!(counts.webhook.accepted, 2);
    assert_eq!(
        counts.webhook.for_id("w-1").attempts as usize,
        refusals + 3 + 1
    );
    sim.stop().await;
}

#[tokio::test]
async fn missing_ids_and_bodies_that_are_not_json_get_400() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let ts = now();
    // Each signed over its ids as sent (empty when absent), so only the ids are wrong.
    let signing = |notification_id: &str, registration_id: &str| {
        let signature = receivers::sign(
            SECRET.as_bytes(),
            ts,
            notification_id,
            registration_id,
            BODY.as_bytes(),
        );
        vec![
            ("X-Signature-Timestamp", ts.to_string()),
            ("X-Signature", signature),
        ]
    };
    let mut no_notification = signing("", "r-1");
    no_notification.push(("X-Registration-Id", "r-1".to_owned()));
    let mut no_registration = signing("w-1", "");
    no_registration.push(("X-Notification-Id", "w-1".to_owned()));
    let mut path_id = signing("../w-1", "r-1");
    path_id.push(("X-Notification-Id", "../w-1".to_owned()));
    path_id.push(("X-Registration-Id", "r-1".to_owned()));
    for (case, headers, mentions) in [
        ("no notification id", no_notification, "X-Notification-Id"),
        ("no registration id", no_registration, "X-Registration-Id"),
        (
            "a notification id that is a path",
            path_id,
            "X-Notification-Id",
        ),
    ] {
        let reply = sim.post_webhook(&headers, BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{case}: {}",
            reply.body
        );
        assert!(reply.is_json_error(), "{case}");
        assert!(reply.body.contains(mentions), "{case}: {}", reply.body);
    }
    for body in ["not json", "{\"cut\": ", ""] {
        let reply = sim.post_signed("w-3", "r-1", body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body:?}: {}",
            reply.body
        );
        assert!(reply.body.contains("not JSON"), "{}", reply.body);
    }
    // Over the body limit, however well signed.
    let big = format!("[{}0]", "0,".repeat(receivers::MAX_WEBHOOK_BODY_BYTES / 2));
    let reply = sim.post_signed("w-4", "r-1", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.is_json_error());
    assert!(sim.deliveries().is_empty());
    let counts = sim.counts().await;
    assert_eq!(counts.webhook.refused, 7);
    assert_eq!(
        counts.webhook.for_id("w-3"),
        NotificationCounts {
            attempts: 3,
            stored: false
        }
    );
    sim.stop().await;
}

#[tokio::test]
async fn webhook_fail_rate_one_answers_503_with_retry_after_until_set_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    sim.receivers
        .set_knobs(Knobs {
            webhook_fail_rate: 1.0,
            ..Knobs::default()
        })
        .unwrap();
    for _ in 0..3 {
        let reply = sim.post_signed("w-1", "r-1", BODY).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.body
        );
        assert_eq!(reply.headers.get(RETRY_AFTER).unwrap(), "1");
        assert!(reply.is_json_error());
    }
    assert!(sim.deliveries().is_empty());
    // The SMTP sink is not affected.
    sim.send(crate::email(Some("n-1"), Some("r-1"), "mail still flows"))
        .await
        .unwrap();

    sim.receivers.set_knobs(Knobs::default()).unwrap();
    let reply = sim.post_signed("w-1", "r-1", BODY).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(sim.deliveries().len(), 1);
    let counts = sim.counts().await;
    assert_eq!(
        (counts.webhook.failed_by_knob, counts.webhook.accepted),
        (3, 1)
    );
    assert_eq!(counts.webhook.for_id("w-1").attempts, 4);
    assert_eq!(counts.smtp.accepted, 1);
    sim.stop().await;
}

/// The signature as `docs/notifications-receivers.md` defines it, computed here without the
/// crate's own `sign`: HMAC-SHA256 over the timestamp, the notification id, the registration
/// id and the raw body, each followed by a line feed but the body.
fn documented_signature(
    timestamp: i64,
    notification_id: &str,
    registration_id: &str,
    body: &str,
) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}\n{notification_id}\n{registration_id}\n{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The ids are signed with the body: a delivery whose notification id or registration id was
/// changed in transit (to pass it off as another notification, or as another registration's)
/// is refused with `401` and nothing is stored.
#[tokio::test]
async fn a_delivery_whose_ids_were_changed_in_transit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let ts = now();
    let signature = documented_signature(ts, "w-1", "r-1", BODY);
    let headers = |notification_id: &str, registration_id: &str| {
        vec![
            ("X-Notification-Id", notification_id.to_owned()),
            ("X-Registration-Id", registration_id.to_owned()),
            ("X-Signature-Timestamp", ts.to_string()),
            ("X-Signature", signature.clone()),
        ]
    };
    for (case, notification_id, registration_id) in [
        ("another notification id", "w-2", "r-1"),
        ("another registration id", "w-1", "r-2"),
        // The ids may hold dots: moving one from one id to the other changes the signed text.
        ("a dot moved between the ids", "w-1.r", "1"),
    ] {
        let reply = sim
            .post_webhook(&headers(notification_id, registration_id), BODY)
            .await;
        reply.assert_unauthorized(case);
    }
    assert!(sim.deliveries().is_empty());
    let reply = sim.post_webhook(&headers("w-1", "r-1"), BODY).await;
    assert_eq!(reply.status, StatusCode::OK, "as signed: {}", reply.body);
    assert_eq!(sim.deliveries().len(), 1);
    sim.stop().await;
}
