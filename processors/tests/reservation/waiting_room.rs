//! The waiting-room controller against a real nats-server: it admits a line no faster than its
//! rate, in order of place, and when the active controller is killed a standby carries the
//! serving place on from where it was: it never goes back (nobody admitted twice) and never
//! jumps a place it has not counted (nobody skipped).

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use streams::config::{Replication, ensure_streams};
use streams::subjects;
use streams::waiting_room::{Admission, Counts, RoomConfig, Serving, Ticket};
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

const RATE: u32 = 200;

#[tokio::test]
async fn the_controller_admits_in_order_at_its_rate_and_a_standby_carries_on_after_a_kill() {
    testkit::init_test_log();
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = jetstream::new(client.clone());
    ensure_streams(&js, Replication(1)).await.unwrap();
    let bucket = js
        .get_key_value(subjects::WAITING_ROOM_BUCKET)
        .await
        .unwrap();
    let region = streams::model::Region::parse(testkit::REGION).unwrap();

    // 3,000 citizens took tickets over the last 30 s, as an edge counted them.
    let now = chrono::Utc::now().timestamp_millis();
    let tickets: Vec<Ticket> = (0..3000)
        .map(|i| Ticket::issue(region.clone(), now - 30_000 + i * 10, None))
        .collect();
    let mut counts = Counts::default();
    tickets.iter().for_each(|t| counts.issue(t.place));
    bucket
        .put(
            subjects::room_counts(&region, "edge-a"),
            serde_json::to_vec(&counts).unwrap().into(),
        )
        .await
        .unwrap();
    let config = RoomConfig {
        enabled: true,
        rate: RATE,
        opens_ms: None,
    };
    bucket
        .put(
            subjects::room_config(&region),
            serde_json::to_vec(&config).unwrap().into(),
        )
        .await
        .unwrap();

    // Every serving place the bucket ever holds, in order.
    let mut watch = bucket.watch(subjects::room_serving(&region)).await.unwrap();
    let seen = tokio::spawn(async move {
        let mut all = Vec::new();
        // Until the test deletes the key.
        while let Some(Ok(entry)) = watch.next().await {
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                break;
            }
            all.push(serde_json::from_slice::<Serving>(&entry.value).expect("a serving place"));
        }
        all
    });

    let started = Instant::now();
    let first = controller(&client, "controller-a");
    let standby = controller(&client, "controller-b");
    let latest = || async {
        let value = bucket.get(subjects::room_serving(&region)).await.ok()??;
        serde_json::from_slice::<Serving>(&value).ok()
    };
    let before_kill = testkit::eventually(
        "a few hundred admitted",
        Duration::from_secs(30),
        || async { latest().await.filter(|s| s.admitted >= 300.0) },
    )
    .await;
    // Never faster than the rate (slowness can only admit fewer).
    let elapsed = started.elapsed().as_secs_f64() + 1.0;
    assert!(
        before_kill.admitted <= f64::from(RATE) * elapsed,
        "{} admitted in {elapsed:.1} s at {RATE}/s",
        before_kill.admitted
    );
    // Killed: no release, its lease expires, the standby takes over.
    let (active, other) = if holder(&js).await.as_deref() == Some(first.holder.as_str()) {
        (first, standby)
    } else {
        (standby, first)
    };
    active.task.abort();
    let after = testkit::eventually(
        "the standby to carry on",
        Duration::from_secs(30),
        || async {
            latest()
                .await
                .filter(|s| s.admitted >= before_kill.admitted + 300.0)
        },
    )
    .await;
    assert!(after.serving > before_kill.serving);
    assert_eq!(
        holder(&js).await.as_deref(),
        Some(other.holder.as_str()),
        "the standby holds the lease"
    );

    // Admitted are exactly the earliest places: a prefix of the line.
    let mut by_place = tickets.clone();
    by_place.sort_by_key(|t| t.place);
    let admitted = by_place
        .iter()
        .take_while(|t| after.admits(t.place) == Admission::Admitted)
        .count();
    assert!(
        by_place[admitted..]
            .iter()
            .all(|t| after.admits(t.place) == Admission::Waiting),
        "nobody behind a waiting ticket is admitted"
    );
    assert!(
        (admitted as f64 - after.admitted).abs() < 150.0,
        "{admitted} vs {}",
        after.admitted
    );

    other.task.abort();
    bucket
        .delete(subjects::room_serving(&region))
        .await
        .unwrap();
    // The serving place never went back, across the takeover.
    let all = tokio::time::timeout(Duration::from_secs(10), seen)
        .await
        .expect("the watch ends with the delete")
        .unwrap();
    assert!(all.len() > 10, "{} serving places seen", all.len());
    assert!(
        all.windows(2).all(|w| w[0].serving <= w[1].serving),
        "the serving place went back"
    );
}

struct Controller {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    holder: String,
}

/// A controller named `holder`.
fn controller(client: &async_nats::Client, holder: &str) -> Controller {
    let (client, name) = (client.clone(), holder.to_owned());
    let task = tokio::spawn(async move {
        processors::waiting_room::run_as(client, &name, CancellationToken::new()).await
    });
    Controller {
        task,
        holder: holder.to_owned(),
    }
}

/// Who holds the controller's lease.
async fn holder(js: &jetstream::Context) -> Option<String> {
    let leases = js.get_key_value(subjects::LEASES_BUCKET).await.ok()?;
    let value = leases.get(subjects::ROOM_CONTROLLER_LEASE).await.ok()??;
    Some(String::from_utf8_lossy(&value).into_owned())
}
