//! The admin endpoints: knobs, counts, health.

use receivers::{Counts, Knobs, NotificationCounts, Simulator as _, TransportCounts};
use reqwest::StatusCode;

use crate::{email, start};

#[tokio::test]
async fn knobs_put_takes_partial_objects_and_refuses_bad_ones_changing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;
    let reply = sim.get("/healthz").await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "ok"));
    let reply = sim.get("/_sim/knobs").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        serde_json::json!({"smtp_fail_rate": 0.0, "webhook_fail_rate": 0.0})
    );

    let reply = sim.put_knobs(r#"{"smtp_fail_rate": 0.5}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.json(),
        serde_json::json!({"smtp_fail_rate": 0.5, "webhook_fail_rate": 0.0})
    );
    let reply = sim.put_knobs(r#"{"webhook_fail_rate": 0.25}"#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let expected = Knobs {
        smtp_fail_rate: 0.5,
        webhook_fail_rate: 0.25,
    };
    assert_eq!(sim.receivers.knobs(), expected);

    for (bad, mentions) in [
        (r#"{"smtp_fail_rate": 1.5}"#, "smtp_fail_rate"),
        (r#"{"webhook_fail_rate": -0.1}"#, "webhook_fail_rate"),
        // One good field does not go in beside a bad one.
        (
            r#"{"smtp_fail_rate": 0.1, "webhook_fail_rate": 2}"#,
            "webhook_fail_rate",
        ),
        (
            r#"{"smtp_fail_rate": 0.1, "fail_rate": 0.1}"#,
            "unknown field",
        ),
        (r#"{"smtp_fail_rate": "often"}"#, "invalid knobs"),
        ("[0.1]", "JSON object"),
        ("not json", "invalid knobs"),
        ("", "invalid knobs"),
    ] {
        let reply = sim.put_knobs(bad).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
        assert!(reply.is_json_error(), "{bad}");
        assert!(reply.body.contains(mentions), "{bad}: {}", reply.body);
    }
    let reply = sim.get("/_sim/knobs").await;
    assert_eq!(
        serde_json::from_str::<Knobs>(&reply.body).unwrap(),
        expected
    );
    assert_eq!(sim.receivers.knobs(), expected);

    // In-process changes are validated too, and show over HTTP.
    assert!(
        sim.receivers
            .set_knobs(Knobs {
                smtp_fail_rate: 7.0,
                ..Knobs::default()
            })
            .is_err()
    );
    sim.receivers.set_knobs(Knobs::default()).unwrap();
    let reply = sim.get("/_sim/knobs").await;
    assert_eq!(
        serde_json::from_str::<Knobs>(&reply.body).unwrap(),
        Knobs::default()
    );
    sim.stop().await;
}

#[tokio::test]
async fn counts_are_exact_after_a_known_sequence_over_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), Knobs::default()).await;

    // SMTP: n-1 accepted then duplicated; n-2 failed by the knob then accepted; one refused
    // without ids.
    sim.send(email(Some("n-1"), Some("r-1"), "a"))
        .await
        .unwrap();
    sim.send(email(Some("n-1"), Some("r-1"), "a"))
        .await
        .unwrap();
    sim.put_knobs(r#"{"smtp_fail_rate": 1}"#).await;
    sim.send(email(Some("n-2"), Some("r-2"), "b"))
        .await
        .unwrap_err();
    sim.put_knobs(r#"{"smtp_fail_rate": 0}"#).await;
    sim.send(email(Some("n-2"), Some("r-2"), "b"))
        .await
        .unwrap();
    sim.send(email(None, None, "c")).await.unwrap_err();

    // Webhook: w-1 accepted; w-2 failed by the knob, refused (bad signature), accepted,
    // duplicated; one refused without a notification id.
    assert_eq!(sim.post_signed("w-1", "r-1", "{}").await.status, 200);
    sim.put_knobs(r#"{"webhook_fail_rate": 1}"#).await;
    assert_eq!(sim.post_signed("w-2", "r-2", "{}").await.status, 503);
    sim.put_knobs(r#"{"webhook_fail_rate": 0}"#).await;
    let forged = [
        ("X-Notification-Id", "w-2".to_owned()),
        ("X-Registration-Id", "r-2".to_owned()),
        ("X-Signature-Timestamp", crate::now().to_string()),
        ("X-Signature", format!("sha256={}", "0".repeat(64))),
    ];
    assert_eq!(sim.post_webhook(&forged, "{}").await.status, 401);
    assert_eq!(sim.post_signed("w-2", "r-2", "{}").await.status, 200);
    assert_eq!(sim.post_signed("w-2", "r-2", "{}").await.status, 200);
    let ts = crate::now();
    let unnamed = [
        ("X-Registration-Id", "r-3".to_owned()),
        ("X-Signature-Timestamp", ts.to_string()),
        (
            "X-Signature",
            receivers::sign(crate::SECRET.as_bytes(), ts, "", "r-3", b"{}"),
        ),
    ];
    assert_eq!(sim.post_webhook(&unnamed, "{}").await.status, 400);

    let ids = |entries: &[(&str, u64, bool)]| {
        entries
            .iter()
            .map(|(id, attempts, stored)| {
                (
                    (*id).to_owned(),
                    NotificationCounts {
                        attempts: *attempts,
                        stored: *stored,
                    },
                )
            })
            .collect()
    };
    let expected = Counts {
        smtp: TransportCounts {
            accepted: 2,
            duplicates: 1,
            refused: 1,
            failed_by_knob: 1,
            by_notification_id: ids(&[("n-1", 2, true), ("n-2", 2, true)]),
        },
        webhook: TransportCounts {
            accepted: 2,
            duplicates: 1,
            refused: 2,
            failed_by_knob: 1,
            by_notification_id: ids(&[("w-1", 1, true), ("w-2", 4, true)]),
        },
    };
    assert_eq!(sim.counts().await, expected);
    assert_eq!(sim.eml_files(), ["n-1.eml", "n-2.eml"]);
    assert_eq!(sim.deliveries().len(), 2);
    sim.stop().await;
}
