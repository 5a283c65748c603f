//! The waiting-room controller: one replica at a time (a lease, as the reservation processor
//! holds a region) advances each open room's serving place at its admission rate
//! ([`streams::waiting_room::Serving::step`]), every [`TICK`].
//!
//! The serving place is a watermark in the replicated bucket, written with a revision check:
//! a standby that takes over reads it and carries on from it, so a controller's death skips
//! nobody and admits nobody twice (a ticket's one use is fenced by the edge, not here). Two
//! controllers at once (a paused holder whose lease expired) cost a refused update, not a
//! wrong watermark.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use streams::lease;
use streams::model::Region;
use streams::subjects;
use streams::waiting_room::{self, Rooms, Serving};
use tokio_util::sync::CancellationToken;

/// How often the serving places move.
pub const TICK: Duration = Duration::from_millis(100);

/// Runs the controller (standing by while another replica holds the lease) until `shutdown`.
pub async fn run(client: async_nats::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let holder = format!("waiting-room-{}", uuid::Uuid::now_v7());
    run_as(client, &holder, shutdown).await
}

/// [`run`], naming this replica `holder` in the lease.
pub async fn run_as(
    client: async_nats::Client,
    holder: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(client);
    let Some(bucket) = waiting_room::open(&js, &shutdown).await else {
        return Ok(());
    };
    let Some(leases) = lease::open(&js, &shutdown).await else {
        return Ok(());
    };
    let rooms = Rooms::default();
    tokio::spawn(rooms.clone().follow(bucket.clone(), shutdown.clone()));
    while let Some(lease) =
        lease::acquire(&leases, subjects::ROOM_CONTROLLER_LEASE, holder, &shutdown).await
    {
        control(&bucket, &rooms, lease.active()).await;
        lease.release().await;
    }
    Ok(())
}

/// Moves every open room's serving place each [`TICK`] until `active` fires.
async fn control(bucket: &kv::Store, rooms: &Rooms, active: &CancellationToken) {
    // What this controller last wrote, per region, with the revision it got.
    let mut mine: HashMap<Region, (Serving, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = active.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !rooms.known() {
            continue;
        }
        let now = chrono::Utc::now().timestamp_millis();
        for (region, room) in rooms.all() {
            let Some(config) = room.config.clone().filter(|c| c.enabled) else {
                mine.remove(&region);
                continue;
            };
            // The newest state: this controller's own, unless the bucket holds a later one
            // (another controller wrote since, or this one just took over).
            let (state, revision) = match mine.get(&region) {
                Some((state, revision)) if *revision >= room.serving_revision => {
                    (state.clone(), *revision)
                }
                _ => (
                    room.serving
                        .clone()
                        .unwrap_or_else(|| Serving::start(now, &room.total)),
                    room.serving_revision,
                ),
            };
            let next = state.step(&config, &room.total, now);
            let value = serde_json::to_vec(&next).expect("serving places serialize");
            let key = subjects::room_serving(&region);
            let written = if revision == 0 {
                bucket
                    .create(&key, value.into())
                    .await
                    .map_err(|e| e.to_string())
            } else {
                bucket
                    .update(&key, value.into(), revision)
                    .await
                    .map_err(|e| e.to_string())
            };
            match written {
                Ok(revision) => {
                    mine.insert(region, (next, revision));
                }
                Err(err) => {
                    // Read it back from the bucket next time.
                    tracing::warn!(%region, error = %err, "A serving place was not written; reading it again.");
                    mine.remove(&region);
                }
            }
        }
    }
}
