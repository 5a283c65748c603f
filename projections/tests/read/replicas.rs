//! The read side on a real SurrealDB server: two read-API replicas (the projections binary,
//! twice, each its own process with its own cache) serving one server's tables, one of them
//! writing at a time.

use std::time::Duration;

use futures::future::join_all;
use serde_json::Value;
use testkit::{NatsServer, SurrealServer};

use crate::helpers::*;

/// The read API's cache period the replicas are started with (`REG_CACHE_TTL_MS`).
const TTL: Duration = Duration::from_millis(1000);

/// Which of `replicas` applies the streams (`projection_writer` 1), once exactly one does.
async fn the_writer(replicas: &[&ReadApi]) -> usize {
    testkit::eventually(
        "exactly one replica to write",
        Duration::from_secs(30),
        || async {
            let mut writers = Vec::new();
            for (i, replica) in replicas.iter().enumerate() {
                if replica.metric("projection_writer").await == 1 {
                    writers.push(i);
                }
            }
            (writers.len() == 1).then(|| writers[0])
        },
    )
    .await
}

/// The server and two replicas on it (the servers are started off the test's thread: they
/// wait for readiness by polling).
async fn two_replicas() -> (NatsServer, SurrealServer, ReadApi, ReadApi) {
    let (nats, surreal) =
        tokio::task::spawn_blocking(|| (NatsServer::start(), SurrealServer::start()))
            .await
            .expect("the servers start");
    let a = ReadApi::replica(&nats, &surreal).await;
    let b = ReadApi::replica(&nats, &surreal).await;
    (nats, surreal, a, b)
}

#[ntex::test]
async fn two_replicas_on_one_server_serve_the_same_state_each_from_its_own_cache() {
    let (_nats, _surreal, a, b) = two_replicas().await;
    the_writer(&[&a, &b]).await;
    a.set_capacity("hall", 20).await;
    let mut registrations = Vec::new();
    for n in 1..=5 {
        registrations.push(a.reserve(n, "hall", n, 20).await);
    }
    // Both serve what the one writer applied: the slot and every status.
    for replica in [&a, &b] {
        replica.wait_remaining("hall", 15).await;
        for (id, token) in &registrations {
            replica.wait_status(id.as_str(), token, "reserved").await;
        }
    }

    // Each replica reads the slot table from the server on its own, twice a period, whoever
    // asks: 50 readers of a key at once on each cost no database read of their own.
    a.set_capacity("crowd", 9).await;
    for replica in [&a, &b] {
        replica.wait_remaining("crowd", 9).await;
        let loads = || replica.metric("read_availability_loads_total");
        let started = std::time::Instant::now();
        let before = loads().await;
        let url = format!(
            "{}/v1/availability?region=mazowieckie&location=crowd",
            replica.url
        );
        let answers = join_all((0..50).map(|_| replica.send(replica.http.get(&url), None))).await;
        assert!(
            answers
                .iter()
                .all(|(status, _, body)| *status == 200 && body[0]["remaining"] == 9)
        );
        let after = loads().await;
        assert!(
            after - before <= loads_at_most(started.elapsed()),
            "50 readers, {} loads in {:?}",
            after - before,
            started.elapsed()
        );
    }

    // Staleness: once the writer has applied a change, each replica serves it after at most
    // one cache period, however its cache was filled. (The pause is the bound under test,
    // not a wait for an event.)
    for replica in [&a, &b] {
        replica.wait_remaining("crowd", 9).await;
    }
    let intake = format!(
        "projection_checkpoint{{stream=\"{}\"}}",
        streams::subjects::INTAKE_STREAM
    );
    let writer = [&a, &b][the_writer(&[&a, &b]).await];
    let before = writer.metric(&intake).await;
    a.set_capacity("crowd", 12).await;
    testkit::eventually(
        "the writer to apply the change",
        Duration::from_secs(30),
        || async { (writer.metric(&intake).await > before).then_some(()) },
    )
    .await;
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    for replica in [&a, &b] {
        assert_eq!(
            replica.remaining("crowd").await,
            Some(12),
            "{}",
            replica.url
        );
    }
}

#[ntex::test]
async fn when_the_writing_replica_is_killed_under_load_the_other_carries_on_from_the_checkpoint() {
    let (_nats, _surreal, a, b) = two_replicas().await;
    let mut replicas = [a, b];
    let writer = the_writer(&[&replicas[0], &replicas[1]]).await;
    let standby = 1 - writer;
    replicas[standby].set_capacity("hall", 500).await;
    // Registrations keep arriving; the writer is SIGKILLed halfway, in the middle of applying
    // them (batches of whatever has arrived, no linger).
    let mut registrations = Vec::new();
    for n in 1..=300 {
        registrations.push(replicas[standby].reserve(n, "hall", n, 500).await);
        if n == 150 {
            replicas[writer].kill();
        }
    }
    let survivor = &replicas[standby];
    assert_eq!(the_writer(&[survivor]).await, 0, "the standby took over");
    // Everything, before and after the kill, is applied once: availability and statuses.
    survivor.wait_remaining("hall", 200).await;
    for (id, token) in registrations.iter().step_by(13) {
        survivor.wait_status(id.as_str(), token, "reserved").await;
    }
    // And a rebuild from the log finds the live tables equal to it.
    let admin = |post: bool, path: String| async move {
        let url = format!("{}{path}", survivor.url);
        let request = if post {
            survivor.http.post(url)
        } else {
            survivor.http.get(url)
        };
        let (status, _, body) = survivor.send(request.bearer_auth(ADMIN_TOKEN), None).await;
        (status, body)
    };
    let (status, started) = admin(true, "/v1/admin/rebuilds".into()).await;
    assert_eq!(status, 202, "{started}");
    let id = started["rebuild_id"].as_str().unwrap().to_owned();
    let report: Value =
        testkit::eventually("the rebuild to end", Duration::from_secs(120), || async {
            let (status, body) = admin(false, format!("/v1/admin/rebuilds/{id}")).await;
            assert_eq!(status, 200, "{body}");
            (body["state"] != "running").then_some(body)
        })
        .await;
    assert_eq!(report["state"], "done", "{report:#}");
    assert_eq!(report["comparison"]["equal"], true, "{report:#}");
}
