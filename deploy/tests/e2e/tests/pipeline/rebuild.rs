//! Rebuilding every projection from the log beside the live ones, while citizens keep
//! registering: the rebuild equals the live projections at one cut of the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

async fn admin(p: &Pipeline, request: ntex::client::ClientRequest) -> (u16, Value) {
    let (status, _, body) = p.send(request.bearer_auth(ADMIN), None).await;
    (status, body)
}

#[ntex::test]
async fn a_rebuild_during_ingestion_equals_the_live_projections() {
    let p = Pipeline::start_with(Options {
        waitlist_per_slot: Some(4),
        registry: Some(registry_sim::Knobs::default()),
        ..Options::default()
    })
    .await;
    // A realistic mix on two slots: places, a waiting line, the line's bound (slot_full),
    // registry refusals (data mismatch, deceased) whose places go to the next in line.
    p.set_capacity("rebuild-a", 5).await;
    p.set_capacity("rebuild-b", 3).await;
    let a: Vec<u32> = [97, 198].into_iter().chain(2000..2008).collect();
    let b: Vec<u32> = (3000..3009).collect();
    let mut registrations = submit_all(&p, &a, "rebuild-a").await;
    registrations.extend(submit_all(&p, &b, "rebuild-b").await);
    let records = settled(&p, &registrations, Duration::from_secs(60)).await;

    // Cancellations (their places go to those waiting) and a capacity raise (more promoted).
    let mut cancelled = 0;
    for (n, id, token) in &registrations {
        if records[n]["status"] == "confirmed" && cancelled < 3 {
            let (status, body) = p.cancel(id, token).await;
            assert_eq!(status, 202, "{body}");
            p.wait_status(id, token, "cancelled").await;
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, 3);
    p.set_capacity("rebuild-b", 5).await;
    let records = settled(&p, &registrations, Duration::from_secs(60)).await;
    let mut seen: Vec<String> = records
        .values()
        .map(|r| match r["reason"].as_str() {
            Some(reason) => format!("{}/{reason}", r["status"].as_str().unwrap()),
            None => r["status"].as_str().unwrap().to_owned(),
        })
        .collect();
    seen.sort();
    seen.dedup();
    for want in [
        "cancelled",
        "confirmed",
        "waitlisted",
        "rejected/data_mismatch",
        "rejected/deceased",
        "rejected/slot_full",
    ] {
        assert!(seen.iter().any(|s| s == want), "no {want} among {seen:?}");
    }

    // Citizens keep registering while the rebuild runs.
    p.set_capacity("rebuild-c", 1_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicU32::new(0));
    let background = {
        let (stop, during) = (stop.clone(), during.clone());
        let (ingest, http) = (p.ingest.clone(), p.http.clone());
        ntex::rt::spawn(async move {
            let mut n = 5000;
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .post(format!("{ingest}/v1/registrations"))
                    .content_type("application/json")
                    .send_body(serde_json::to_vec(&citizen(n, "rebuild-c")).unwrap())
                    .await;
                if response.is_ok_and(|r| r.status() == 202) {
                    during.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        })
    };
    testkit::eventually(
        "registrations during the run",
        Duration::from_secs(30),
        || {
            let during = during.clone();
            async move { (during.load(Ordering::Relaxed) >= 5).then_some(()) }
        },
    )
    .await;

    let (status, started) = admin(&p, p.http.post(format!("{}/v1/admin/rebuilds", p.read))).await;
    assert_eq!(status, 202, "{started}");
    let id = started["rebuild_id"].as_str().unwrap().to_owned();
    // One at a time.
    let (status, body) = admin(&p, p.http.post(format!("{}/v1/admin/rebuilds", p.read))).await;
    assert!(status == 409 || body["rebuild_id"] != id, "{status} {body}");
    let report = testkit::eventually("the rebuild to end", Duration::from_secs(120), || async {
        let (status, body) =
            admin(&p, p.http.get(format!("{}/v1/admin/rebuilds/{id}", p.read))).await;
        assert_eq!(status, 200, "{body}");
        (body["state"] != "running").then_some(body)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = background.await;

    assert_eq!(report["state"], "done", "{report:#}");
    let comparison = &report["comparison"];
    assert_eq!(comparison["equal"], true, "{comparison:#}");
    // It compared real state at a real cut: every registration of the mix and some made
    // during the rebuild, every slot, both streams' checkpoints.
    let tables: std::collections::HashMap<&str, &Value> = comparison["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap(), t))
        .collect();
    let rows = tables["registration"]["live_rows"].as_u64().unwrap();
    assert!(rows > registrations.len() as u64, "{comparison:#}");
    assert_eq!(tables["slot"]["live_rows"], json!(3), "{comparison:#}");
    // Those still waiting are in line, in both.
    assert!(
        tables["line"]["live_rows"].as_u64().unwrap() >= 1,
        "{comparison:#}"
    );
    for table in tables.values() {
        assert_eq!(
            table["live_checksum"], table["rebuilt_checksum"],
            "{table:#}"
        );
        assert_eq!(table["differences"], 0);
    }
    for stream in [
        streams::subjects::INTAKE_STREAM,
        streams::subjects::DECISIONS_STREAM,
    ] {
        assert!(
            comparison["checkpoints"][stream].as_u64().unwrap() > 0,
            "{comparison:#}"
        );
    }
    let progress = report["progress"].as_array().unwrap();
    assert!(
        progress.iter().all(|p| p["applied"] == p["target"]),
        "{report:#}"
    );

    // Operators only.
    let (status, _, _) = p
        .send(p.http.post(format!("{}/v1/admin/rebuilds", p.read)), None)
        .await;
    assert_eq!(status, 401);
}
