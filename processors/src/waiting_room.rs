//! The waiting-room controller: one replica at a time (a lease, as the reservation processor
//! holds a region) advances each open room's serving place at its admission rate
//! ([`streams::waiting_room::Serving::step`]), every [`TICK`].
//!
//! Under headroom pacing ([`Pacing::Headroom`]) the rate an operator set is a cap: every
//! [`PACE_INTERVAL`] the controller measures the pipeline behind each room
//! ([`waiting_room::measure`]: does a reservation processor hold the region's lease, how many
//! records wait at each stage's consumer, how busy are the edges) and adjusts the room's pace
//! ([`Serving::paced`]).
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
use streams::waiting_room::{self, PACE_INTERVAL, Pacing, Rooms, Serving};
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
        control(&js, &bucket, &leases, &rooms, lease.active()).await;
        lease.release().await;
    }
    Ok(())
}

/// Moves every open room's serving place each [`TICK`] until `active` fires.
async fn control(
    js: &jetstream::Context,
    bucket: &kv::Store,
    leases: &kv::Store,
    rooms: &Rooms,
    active: &CancellationToken,
) {
    // What this controller last wrote, per region, with the revision it got.
    let mut mine: HashMap<Region, (Serving, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measured_at = tokio::time::Instant::now() - PACE_INTERVAL;
    loop {
        tokio::select! {
            _ = active.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !rooms.known() {
            continue;
        }
        let now = chrono::Utc::now().timestamp_millis();
        let all = rooms.all();
        // The pipeline behind the paced rooms, once a PACE_INTERVAL.
        let mut pressures = HashMap::new();
        if measured_at.elapsed() >= PACE_INTERVAL {
            measured_at = tokio::time::Instant::now();
            let paced: Vec<Region> = all
                .iter()
                .filter(|(_, room)| {
                    room.config
                        .as_ref()
                        .is_some_and(|c| c.enabled && c.pacing == Pacing::Headroom)
                })
                .map(|(region, _)| region.clone())
                .collect();
            if !paced.is_empty() {
                match waiting_room::measure(js, leases, &paced).await {
                    Ok(measured) => pressures = measured,
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "The pipeline behind the waiting rooms could not be measured; their pace holds.")
                    }
                }
            }
        }
        for (region, room) in all {
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
            let state = match pressures.remove(&region) {
                Some(mut pressure) => {
                    pressure.busy = room.busiest(now);
                    pressure.recent = state.recent(&room.total, now);
                    state.paced(&config, &pressure, now)
                }
                None => state,
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
