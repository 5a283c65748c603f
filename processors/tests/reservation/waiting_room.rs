//! The waiting-room controller against a real nats-server: it admits a line no faster than its
//! rate, in order of place, and when the active controller is killed a standby carries the
//! serving place on from where it was: it never goes back (nobody admitted twice) and never
//! jumps a place it has not counted (nobody skipped). Paced by headroom, it admits more slowly
//! while a stage of the pipeline falls behind or stops, and speeds up again when it recovers.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use streams::config::{Replication, ensure_streams};
use streams::subjects;
use streams::waiting_room::{Admission, Counts, Pacing, RoomConfig, Serving, Ticket};
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
    open_room(&bucket, &region, &counts, Pacing::Fixed).await;

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

/// Headroom pacing against the real stages: a stage whose consumer falls behind (a verification
/// processor that reads nothing) and a region with no reservation processor each cut the pace
/// below the operator's rate, with the reason shown; once both recover it climbs back.
#[tokio::test]
async fn a_stalled_stage_slows_admissions_and_its_recovery_restores_the_rate() {
    let world = crate::helpers::World::start().await;
    let js = jetstream::new(world.client.clone());
    let bucket = js
        .get_key_value(subjects::WAITING_ROOM_BUCKET)
        .await
        .unwrap();
    let region = crate::helpers::region();
    let slot = crate::helpers::slot("hall-a");
    world.set_capacity(&slot, 100_000).await;
    let replica = world.replica();

    // A long line, paced by headroom under a cap of RATE.
    let now = chrono::Utc::now().timestamp_millis();
    let mut counts = Counts::default();
    for i in 0..20_000 {
        counts.issue(Ticket::issue(region.clone(), now - 40_000 + i * 2, None).place);
    }
    // Each admitted citizen submits at once, as the edge counts them: nobody admitted is
    // still to come (that signal holds the pace too; the rule's own tests show it).
    counts.used = counts.issued.clone();
    let config = open_room(&bucket, &region, &counts, Pacing::Headroom).await;
    let control = controller(&world.client, "controller-a");
    let latest = || async {
        let value = bucket.get(subjects::room_serving(&region)).await.ok()??;
        serde_json::from_slice::<Serving>(&value).ok()
    };

    // Every stage clear: from a slow start up to the operator's rate.
    let clear = testkit::eventually(
        "admissions at the rate",
        Duration::from_secs(60),
        || async {
            latest()
                .await
                .filter(|s| s.pace.is_some_and(|pace| pace >= f64::from(RATE)))
        },
    )
    .await;
    assert_eq!(clear.rate(&config), f64::from(RATE));
    assert_eq!(clear.limited_by, None);

    // A verification processor that reads nothing: its durable consumer exists (as the
    // processor creates it) and the reservation decisions pile up in it.
    let stream = js.get_stream(subjects::DECISIONS_STREAM).await.unwrap();
    let verification = subjects::verification_consumer(&region);
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(verification.clone()),
            filter_subject: subjects::reservation_decisions(&region),
            ..Default::default()
        })
        .await
        .unwrap();
    let submitted = world.submit_many(&slot, 3_000).await;
    world.wait_decided(&submitted[submitted.len() - 1..]).await;
    let behind = testkit::eventually(
        "the pace to fall below the rate",
        Duration::from_secs(30),
        || async { latest().await.filter(|s| s.rate(&config) < f64::from(RATE)) },
    )
    .await;
    let why = behind.limited_by.clone().unwrap_or_default();
    assert!(
        why.starts_with(&format!("{verification} has ")),
        "limited by {why:?}"
    );
    // Admissions follow the pace: over the next two seconds, at most its rate.
    let (from, at) = (behind.admitted, Instant::now());
    let later = testkit::eventually("two more seconds", Duration::from_secs(30), || async {
        latest()
            .await
            .filter(|_| at.elapsed() >= Duration::from_secs(2))
    })
    .await;
    let per_second = (later.admitted - from) / at.elapsed().as_secs_f64();
    assert!(
        per_second < f64::from(RATE) * 0.75,
        "{per_second:.0} admitted a second while limited"
    );

    // The verification backlog gone, the reservation processor stopped: its region has
    // nobody to decide, and the pace keeps falling.
    stream.delete_consumer(&verification).await.unwrap();
    replica.stop().await;
    let stopped = testkit::eventually(
        "the stopped reservation processor to be named",
        Duration::from_secs(30),
        || async {
            latest().await.filter(|s| {
                s.limited_by.as_deref()
                    == Some(&*format!(
                        "the reservation processor of {region} is not running"
                    ))
            })
        },
    )
    .await;
    let low = testkit::eventually(
        "the pace to fall further",
        Duration::from_secs(30),
        || async {
            latest()
                .await
                .filter(|s| s.rate(&config) < stopped.rate(&config))
        },
    )
    .await;

    // Started again, with nothing behind: back up to the operator's rate, and no further.
    let replica = world.replica();
    let recovered =
        testkit::eventually("the rate to come back", Duration::from_secs(60), || async {
            latest()
                .await
                .filter(|s| s.rate(&config) >= f64::from(RATE))
        })
        .await;
    assert!(recovered.admitted > low.admitted);
    assert_eq!(recovered.limited_by, None);
    assert_eq!(recovered.rate(&config), f64::from(RATE));
    control.task.abort();
    replica.stop().await;
}

/// Puts an edge's `counts` of `region`'s line in the bucket and turns its room on at [`RATE`],
/// paced by `pacing`.
async fn open_room(
    bucket: &jetstream::kv::Store,
    region: &streams::model::Region,
    counts: &Counts,
    pacing: Pacing,
) -> RoomConfig {
    bucket
        .put(
            subjects::room_counts(region, "edge-a"),
            serde_json::to_vec(counts).unwrap().into(),
        )
        .await
        .unwrap();
    let config = RoomConfig {
        enabled: true,
        rate: RATE,
        opens_ms: None,
        pacing,
    };
    bucket
        .put(
            subjects::room_config(region),
            serde_json::to_vec(&config).unwrap().into(),
        )
        .await
        .unwrap();
    config
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
