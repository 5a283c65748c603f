//! The read API's HTTP contract against a real nats-server: what a citizen, a vaccine finder
//! or a crowd of readers gets from the projections, the state written straight into the log.

mod helpers;
mod replicas;

use futures::future::join_all;
use helpers::*;
use serde_json::{Value, json};

#[ntex::test]
async fn status_without_the_right_token_is_an_indistinguishable_404() {
    let p = ReadApi::start().await;
    p.set_capacity("tok", 2).await;
    let (id, token) = p.reserve(31, "tok", 1, 2).await;
    let (id, token) = (id.as_str(), token.as_str());
    p.wait_status(id, token, "reserved").await;
    let (_, other_token) = p.reserve(32, "tok", 2, 2).await;
    let unknown = "mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f";
    let answers = [
        p.status(id, None).await,
        p.status(id, Some("wrong")).await,
        p.status(id, Some(&other_token)).await,
        p.status(unknown, Some(token)).await,
        p.status("not-an-id", Some(token)).await,
    ];
    for (status, body) in &answers {
        assert_eq!(*status, 404);
        assert_eq!(body, &answers[0].1, "404s must not differ");
    }
}

#[ntex::test]
async fn availability_is_cacheable_with_an_etag() {
    let p = ReadApi::start().await;
    p.set_capacity("cache", 3).await;
    p.wait_remaining("cache", 3).await;
    let url = format!("{}/v1/availability?region=mazowieckie", p.url);
    let (status, headers, body) = p.send(p.http.get(&url), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("cache-control").unwrap(), "public, max-age=1");
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        body[0],
        json!({"region": "mazowieckie", "location": "cache", "date": slot_date(), "capacity": 3, "remaining": 3, "waiting": 0})
    );
    let (status, _, body) = p
        .send(
            p.http.get(&url).header("If-None-Match", etag.as_str()),
            None,
        )
        .await;
    assert_eq!(status, 304);
    assert_eq!(body, Value::Null);
    let (status, _, body) = p
        .send(
            p.http
                .get(format!("{}/v1/availability?date=tomorrow", p.url)),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "invalid_field", Some("date"));
}

/// A body the helper could not read as one JSON value is NDJSON text; one line alone parses.
fn ndjson_lines(body: Value) -> Vec<Value> {
    let text = match body {
        Value::String(text) => text,
        Value::Null => String::new(),
        one => format!("{one}\n"),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// What the SMART Scheduling Links specification requires of a `Location`: `resourceType`,
/// `id`, `name`, `telecom` (a phone or a URL, each with a value) and an `address` with
/// `line`, `city`, `state` and `postalCode`.
fn assert_smart_location(location: &Value) {
    let filled = |v: &Value| v.as_str().is_some_and(|s| !s.trim().is_empty());
    assert_eq!(location["resourceType"], "Location", "{location}");
    assert!(filled(&location["id"]), "id: {location}");
    assert!(filled(&location["name"]), "name: {location}");
    let telecom = location["telecom"].as_array();
    assert!(
        telecom.is_some_and(|t| !t.is_empty()
            && t.iter().all(|c| ["phone", "url"]
                .contains(&c["system"].as_str().unwrap_or_default())
                && filled(&c["value"]))),
        "telecom: {location}"
    );
    let address = &location["address"];
    let lines = address["line"].as_array();
    assert!(
        lines.is_some_and(|l| !l.is_empty() && l.iter().all(filled)),
        "address.line: {location}"
    );
    for field in ["city", "state", "postalCode"] {
        assert!(filled(&address[field]), "address.{field}: {location}");
    }
}

#[ntex::test]
async fn vaccine_finders_poll_a_smart_scheduling_links_publication() {
    let p = ReadApi::start().await;
    p.set_capacity("smart", 3).await;
    p.wait_remaining("smart", 3).await;
    let manifest_url = format!("{}/$bulk-publish", p.url);
    let (status, headers, manifest) = p.send(p.http.get(&manifest_url), None).await;
    assert_eq!(status, 200);
    assert!(
        headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(headers.get("cache-control").unwrap(), "public, max-age=60");
    assert_eq!(manifest["request"], manifest_url.as_str());
    assert_eq!(manifest["error"], json!([]));
    let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
    let (status, _, body) = p
        .send(
            p.http
                .get(&manifest_url)
                .header("If-None-Match", etag.as_str()),
            None,
        )
        .await;
    assert_eq!((status, body), (304, Value::Null));

    let mut files = std::collections::HashMap::new();
    for output in manifest["output"].as_array().unwrap() {
        let url = output["url"].as_str().unwrap();
        let (status, headers, body) = p
            .send(
                p.http.get(url).header("Accept", "application/fhir+ndjson"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/fhir+ndjson"
        );
        let etag = headers.get("etag").unwrap().to_str().unwrap().to_owned();
        let (status, _, _) = p
            .send(p.http.get(url).header("If-None-Match", etag.as_str()), None)
            .await;
        assert_eq!(status, 304, "{url}");
        files.insert(
            output["type"].as_str().unwrap().to_owned(),
            ndjson_lines(body),
        );
    }
    let site = "mazowieckie.smart";
    assert!(files["Location"].iter().any(|l| l["id"] == site));
    for location in &files["Location"] {
        assert_smart_location(location);
    }
    assert!(
        files["Schedule"]
            .iter()
            .any(|s| s["id"] == site && s["actor"][0]["reference"] == format!("Location/{site}"))
    );
    let free: Vec<&Value> = files["Slot"]
        .iter()
        .filter(|s| s["schedule"]["reference"] == format!("Schedule/{site}"))
        .collect();
    assert_eq!(
        free.len(),
        1,
        "all three seats are free: one aggregated slot"
    );
    assert_eq!(free[0]["status"], "free");
    let extension = free[0]["extension"].as_array().unwrap();
    assert!(extension.contains(&json!({
        "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/slot-capacity",
        "valueInteger": 3
    })));
    assert!(extension.iter().any(|e| {
        e["valueUrl"].as_str().is_some_and(|u| {
            u.ends_with(&format!(
                "/?region=mazowieckie&location=smart&date={}",
                slot_date()
            ))
        })
    }));

    // One seat taken: the publication changes (a new tag, the old one no longer 304s) and
    // shows two free seats and one busy.
    p.reserve(41, "smart", 1, 3).await;
    p.wait_remaining("smart", 2).await;
    let slots_url = format!("{}/smart/slots.ndjson", p.url);
    let slots = testkit::eventually(
        "the publication to follow",
        std::time::Duration::from_secs(30),
        || async {
            let (status, _, body) = p
                .send(
                    p.http
                        .get(&slots_url)
                        .header("If-None-Match", etag.as_str()),
                    None,
                )
                .await;
            let slots = ndjson_lines(body);
            (status == 200 && slots.iter().any(|s| s["status"] == "busy")).then_some(slots)
        },
    )
    .await;
    let mine: Vec<(String, i64)> = slots
        .iter()
        .filter(|s| s["schedule"]["reference"] == format!("Schedule/{site}"))
        .map(|s| {
            let capacity = s["extension"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|e| e["valueInteger"].as_i64())
                .unwrap();
            (s["status"].as_str().unwrap().to_owned(), capacity)
        })
        .collect();
    assert_eq!(mine, [("free".to_owned(), 2), ("busy".to_owned(), 1)]);
}

#[ntex::test]
async fn readers_of_keys_nobody_asked_for_cause_at_most_one_database_read_per_period() {
    let p = ReadApi::start().await;
    p.set_capacity("crowd", 9).await;
    p.wait_remaining("crowd", 9).await;
    let loads = || p.metric("read_availability_loads_total");
    let started = std::time::Instant::now();
    let before = loads().await;
    // A key nobody asked for yet, requested by 50 readers at once: no load of the slot table
    // of their own (the replica reloads it on its own, twice a period).
    let url = format!(
        "{}/v1/availability?region=mazowieckie&location=crowd",
        p.url
    );
    let answers = join_all((0..50).map(|_| p.send(p.http.get(&url), None))).await;
    assert!(
        answers
            .iter()
            .all(|(status, _, body)| *status == 200 && body[0]["remaining"] == 9)
    );
    let after = loads().await;
    assert!(
        after - before <= loads_at_most(started.elapsed()),
        "50 concurrent readers, {} loads in {:?}",
        after - before,
        started.elapsed()
    );
    let started = std::time::Instant::now();
    // Forty different queries nobody asked before, at once: answered from the table in
    // memory, not one database read each (a period boundary may cost one more load).
    let queries: Vec<String> = (0..40)
        .map(|i| match i % 4 {
            0 if i == 0 => format!("location=crowd&date={}", slot_date()),
            0 => format!("location=crowd&date=2026-03-{:02}", i / 4 + 1),
            1 => format!("region=mazowieckie&location=nowhere-{i}"),
            2 => format!("date=2028-01-{:02}", i / 4 + 1),
            _ => format!("region=slaskie&location=x-{i}"),
        })
        .collect();
    let answers = join_all(
        queries
            .iter()
            .map(|q| p.send(p.http.get(format!("{}/v1/availability?{q}", p.url)), None)),
    )
    .await;
    assert!(answers.iter().all(|(status, _, _)| *status == 200));
    let first = &answers[0].2;
    assert_eq!(first[0]["remaining"], 9, "{first}");
    assert_eq!(answers[1].2, serde_json::json!([]));
    let cold = loads().await - after;
    assert!(
        cold <= loads_at_most(started.elapsed()),
        "40 new queries, {cold} database reads in {:?}",
        started.elapsed()
    );
    // Nobody asking, the table is still reloaded: readers never wait for a load.
    let quiet = loads().await;
    testkit::eventually(
        "the table reloaded with no reader",
        std::time::Duration::from_secs(30),
        || async { (loads().await >= quiet + 2).then_some(()) },
    )
    .await;
    // The read API exposes health (and Prometheus metrics, read above).
    let (status, _, _) = p.send(p.http.get(format!("{}/healthz", p.url)), None).await;
    assert_eq!(status, 200);
}
