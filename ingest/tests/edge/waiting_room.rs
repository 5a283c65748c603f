//! The waiting room at the edge, against a real nats-server: a region whose room is on takes
//! only admitted tickets, each once; forged, early and expired tickets are refused and leave
//! nothing in the log. The controller's part (the serving place) is written here as the
//! controller writes it, into the real bucket (the controller itself is tested in
//! `processors`).

use std::time::Duration;

use serde_json::{Value, json};
use streams::subjects;
use streams::waiting_room::{Counts, Place, Serving, TICKET_HEADER, Ticket};

use crate::helpers::*;

impl Edge {
    async fn take_ticket(&self) -> Value {
        let request = self
            .http
            .post(format!("{}/v1/queue", self.url))
            .content_type("application/json");
        let answer = self
            .send(
                request,
                Some(json!({"region": region()}).to_string().into_bytes()),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.json());
        answer.json()
    }

    async fn ticket_status(&self, ticket: &str) -> Answer {
        self.send(
            self.http.get(format!("{}/v1/queue/{ticket}", self.url)),
            None,
        )
        .await
    }

    async fn submit_with(&self, body: &Value, ticket: &str) -> (u16, Value) {
        let request = self
            .http
            .post(format!("{}/v1/registrations", self.url))
            .content_type("application/json")
            .header(TICKET_HEADER, ticket);
        let answer = self
            .send(request, Some(serde_json::to_vec(body).unwrap()))
            .await;
        (answer.status, answer.json())
    }

    /// Writes the region's serving place as the controller would.
    async fn serve(&self, serving: Place, expired: Place) {
        let bucket = async_nats::jetstream::new(self.nats.connect().await)
            .get_key_value(subjects::WAITING_ROOM_BUCKET)
            .await
            .unwrap();
        let state = Serving {
            serving,
            expired,
            ..Serving::start(chrono::Utc::now().timestamp_millis(), &Counts::default())
        };
        bucket
            .put(
                subjects::room_serving(&region()),
                serde_json::to_vec(&state).unwrap().into(),
            )
            .await
            .unwrap();
    }

    async fn state_of(&self, ticket: &str, want: &str) -> Value {
        testkit::eventually(
            &format!("the ticket to be {want}"),
            Duration::from_secs(10),
            || async {
                let answer = self.ticket_status(ticket).await;
                let body = answer.json();
                (body["state"] == want).then_some(body)
            },
        )
        .await
    }
}

/// A refusal about the ticket: `status`, `code`, and the ticket header as its field.
fn refused(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_error(body, code, Some(TICKET_HEADER));
}

fn place_of(edge: &Edge, ticket: &str) -> Place {
    Ticket::decode(ticket, &edge.keys).unwrap().place
}

#[ntex::test]
async fn a_region_whose_room_is_on_admits_each_ticket_once_in_its_turn_and_refuses_the_rest() {
    let edge = Edge::start_with(|_| {}).await;
    edge.set_capacity("warszawa-narodowy", 100).await;
    // Off: no ticket needed, and taking one says so.
    let off = edge.take_ticket().await;
    assert_eq!(off["active"], false, "{off}");
    let (status, body) = edge.submit(&citizen(1, "warszawa-narodowy"), None).await;
    assert_eq!(status, 202, "{body}");

    let (status, body) = edge
        .admin_put(
            &format!("/v1/admin/queues/{}", region()),
            &json!({"enabled": true, "rate": 50}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["enabled"].clone(),
            body["rate"].clone(),
            body["pacing"].clone()
        ),
        (json!(true), json!(50), json!("headroom"))
    );
    let stored = edge.intake_messages().await;

    // On: a submission without a ticket, with a made-up one, or with one not yet admitted is
    // refused, and nothing reaches the log.
    let (status, body) = edge.submit(&citizen(2, "warszawa-narodowy"), None).await;
    refused(status, &body, 403, "ticket_required");
    let first = edge.take_ticket().await;
    assert_eq!(
        (first["active"].clone(), first["state"].clone()),
        (json!(true), json!("waiting"))
    );
    let ticket = first["ticket"].as_str().unwrap().to_owned();
    let waiting = edge.ticket_status(&ticket).await;
    assert_eq!(waiting.status, 200);
    assert!(
        waiting.headers.get("retry-after").is_some(),
        "a waiting ticket says when to ask again"
    );
    let (status, body) = edge
        .submit_with(&citizen(2, "warszawa-narodowy"), &ticket)
        .await;
    assert_eq!(status, 429, "{body}");
    assert_error(&body, "not_admitted", None);
    // An earlier place written into a real ticket: the signature no longer matches.
    let mut parts: Vec<String> = ticket.split('.').map(str::to_owned).collect();
    parts[3] = "0".into();
    let altered = parts.join(".");
    let (status, body) = edge
        .submit_with(&citizen(2, "warszawa-narodowy"), &altered)
        .await;
    refused(status, &body, 403, "ticket_invalid");
    let (status, body) = edge
        .submit_with(&citizen(2, "warszawa-narodowy"), "w1.garbage")
        .await;
    refused(status, &body, 403, "ticket_invalid");
    assert_eq!(edge.ticket_status(&altered).await.status, 403);
    // Another region's real ticket.
    let elsewhere = Ticket::issue(
        streams::model::Region::parse("slaskie").unwrap(),
        chrono::Utc::now().timestamp_millis() - 60_000,
        None,
    );
    let (status, body) = edge
        .submit_with(
            &citizen(2, "warszawa-narodowy"),
            &elsewhere.encode(&edge.keys),
        )
        .await;
    refused(status, &body, 403, "ticket_invalid");
    assert_eq!(
        edge.intake_messages().await,
        stored,
        "nothing refused was appended"
    );

    // The controller reaches the first ticket's place: it is admitted, once.
    let second = edge.take_ticket().await["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    edge.serve(place_of(&edge, &ticket), Place { ms: 0, tie: 0 })
        .await;
    edge.state_of(&ticket, "admitted").await;
    assert_eq!(edge.ticket_status(&second).await.json()["state"], "waiting");
    let (status, body) = edge
        .submit_with(&citizen(2, "warszawa-narodowy"), &ticket)
        .await;
    assert_eq!(status, 202, "{body}");
    // The same request again (a lost answer) is the same registration.
    let (status, again) = edge
        .submit_with(&citizen(2, "warszawa-narodowy"), &ticket)
        .await;
    assert_eq!(
        (status, &again["registration_id"]),
        (202, &body["registration_id"])
    );
    let after = edge.intake_messages().await;
    // Another citizen with the used ticket.
    let (status, body) = edge
        .submit_with(&citizen(3, "warszawa-narodowy"), &ticket)
        .await;
    refused(status, &body, 409, "ticket_used");
    assert_eq!(
        edge.intake_messages().await,
        after,
        "a second use stored nothing"
    );

    // Admitted long ago: expired, and its place passed on.
    edge.serve(place_of(&edge, &second), place_of(&edge, &second))
        .await;
    edge.state_of(&second, "expired").await;
    let (status, body) = edge
        .submit_with(&citizen(4, "warszawa-narodowy"), &second)
        .await;
    refused(status, &body, 403, "ticket_expired");

    // The controller learns how many tickets this edge issued and how many were used.
    let bucket = async_nats::jetstream::new(edge.nats.connect().await)
        .get_key_value(subjects::WAITING_ROOM_BUCKET)
        .await
        .unwrap();
    testkit::eventually(
        "the edge's counts in the bucket",
        Duration::from_secs(10),
        || async {
            let mut keys = bucket.keys().await.ok()?;
            let mut total = Counts::default();
            // With its counts, the edge reports its load, for the controller's pacing.
            let mut fresh = false;
            use futures::StreamExt as _;
            while let Some(Ok(key)) = keys.next().await {
                if key.starts_with("counts.") {
                    let value = bucket.get(&key).await.ok()??;
                    let report: Counts = serde_json::from_slice(&value).ok()?;
                    let age = chrono::Utc::now().timestamp_millis() - report.reported_ms;
                    fresh |= (0..10_000).contains(&age) && (0.0..=1.0).contains(&report.busy);
                    total.add(&report);
                }
            }
            let issued: u64 = total.issued.values().sum();
            let used: u64 = total.used.values().sum();
            (issued == 2 && used == 1 && fresh).then_some(())
        },
    )
    .await;

    // And so do the metrics.
    assert_eq!(
        edge.metric(&format!(
            r#"ingest_waiting_room_tickets_total{{region="{}"}}"#,
            region()
        ))
        .await,
        2
    );
    assert_eq!(
        edge.metric(&format!(
            r#"ingest_waiting_room{{figure="rate",region="{}"}}"#,
            region()
        ))
        .await,
        50
    );

    // Operators see the room; a stranger does not.
    let list = edge
        .send(
            edge.http
                .get(format!("{}/v1/admin/queues", edge.url))
                .bearer_auth(ingest::settings::DEVELOPMENT_ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(list.status, 200);
    let queues = list.json()["queues"].clone();
    assert_eq!(queues[0]["region"], json!(region()), "{queues}");
    assert_eq!(queues[0]["rate"], 50);
    // Nothing measured the pipeline here (no controller): a paced room starts at a tenth of
    // the operator's rate.
    assert_eq!(queues[0]["pacing"], "headroom");
    assert_eq!(queues[0]["admitting"], 5.0);
    assert_eq!(queues[0]["limited_by"], Value::Null);
    let stranger = edge
        .send(edge.http.get(format!("{}/v1/admin/queues", edge.url)), None)
        .await;
    assert_eq!(stranger.status, 401);

    // Off again: submissions go straight in.
    let (status, body) = edge
        .admin_put(
            &format!("/v1/admin/queues/{}", region()),
            &json!({"enabled": false, "rate": 50}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = edge.submit(&citizen(5, "warszawa-narodowy"), None).await;
    assert_eq!(status, 202, "{body}");
    // A ticket, even a bad one, is ignored while the room is off...
    let (status, body) = edge
        .submit_with(&citizen(6, "warszawa-narodowy"), "w1.garbage")
        .await;
    assert_eq!(status, 202, "{body}");
    // ...but a header no ticket could be (longer than any) is bad input whatever the room.
    let stored = edge.intake_messages().await;
    let (status, body) = edge
        .submit_with(&citizen(7, "warszawa-narodowy"), &"t".repeat(257))
        .await;
    refused(status, &body, 403, "ticket_invalid");
    assert_eq!(edge.intake_messages().await, stored, "nothing was appended");
}

#[ntex::test]
async fn bad_room_settings_and_tickets_for_unconfigured_regions_are_refused() {
    let edge = Edge::start_with(|_| {}).await;
    let path = format!("/v1/admin/queues/{}", region());
    for (body, field) in [
        (json!({"enabled": true}), "rate"),
        (json!({"enabled": true, "rate": 0}), "rate"),
        (json!({"enabled": "yes", "rate": 10}), "enabled"),
        (
            json!({"enabled": true, "rate": 10, "opens_at": "soon"}),
            "opens_at",
        ),
        (
            json!({"enabled": true, "rate": 10, "opens_at": null}),
            "opens_at",
        ),
        (json!({"enabled": true, "rate": 10, "extra": 1}), "extra"),
        (
            json!({"enabled": true, "rate": 10, "pacing": "fast"}),
            "pacing",
        ),
    ] {
        let (status, answer) = edge.admin_put(&path, &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let (status, _) = edge
        .admin_put(
            "/v1/admin/queues/Not-A-Region",
            &json!({"enabled": true, "rate": 10}),
        )
        .await;
    assert_eq!(status, 400);
    // A region nobody configured gets no ticket (and no state).
    let request = edge
        .http
        .post(format!("{}/v1/queue", edge.url))
        .content_type("application/json");
    let answer = edge
        .send(request, Some(br#"{"region":"opolskie"}"#.to_vec()))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.json());
}
