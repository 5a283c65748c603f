//! A rebuild applies each region's part of a stream on its own, several at once
//! (`rebuild::project_in_parallel`): the result must be what applying the stream in one
//! order gives, table by table, checkpoints included, with no part's checkpoint left behind.

use async_nats::jetstream;
use chrono::NaiveDate;
use projections::rebuild::{self, Progress};
use projections::store::{Store, StoreOptions};
use projections::worker;
use streams::events::{
    CapacitySet, Envelope, Event, NotificationSent, RegistrationCancelled, RegistrationConfirmed,
    SlotReserved,
};
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::subjects::{self, IntakeKind};
use testkit::NatsServer;

const REGIONS: [&str; 3] = ["mazowieckie", "pomorskie", "opolskie"];

fn slot(region: &Region, location: u32) -> SlotKey {
    SlotKey {
        region: region.clone(),
        location: Location::parse(&format!("site-{location}")).unwrap(),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).unwrap(),
    }
}

async fn write(js: &jetstream::Context, subject: String, event: Event) {
    let envelope = Envelope::new("test", event);
    js.publish(subject, envelope.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The regions' traffic interleaved: capacities, reservations on two slots each, messages
/// sent, confirmations, a cancellation per region, and a capacity changed late.
async fn traffic(js: &jetstream::Context) {
    let regions: Vec<Region> = REGIONS.iter().map(|r| Region::parse(r).unwrap()).collect();
    for region in &regions {
        for location in 0..2 {
            write(
                js,
                subjects::intake(region, IntakeKind::Capacity),
                Event::CapacitySet(CapacitySet {
                    slot: slot(region, location),
                    capacity: 5,
                }),
            )
            .await;
        }
    }
    let mut ids = Vec::new();
    for n in 0..12u32 {
        for region in &regions {
            let slot = slot(region, n % 2);
            let id = RegistrationId::generate(region);
            write(
                js,
                subjects::reservation_decisions(region),
                Event::SlotReserved(SlotReserved {
                    registration_id: id.clone(),
                    citizen_key: format!("{n:064x}"),
                    slot: slot.clone(),
                    intake_seq: u64::from(n) + 100,
                    reserved: n / 2 + 1,
                    capacity: 5,
                }),
            )
            .await;
            write(
                js,
                subjects::notification_decisions(region),
                Event::NotificationSent(NotificationSent {
                    notification_id: format!("{id}.email"),
                    registration_id: id.clone(),
                    channel: "email".into(),
                    template: "reserved".into(),
                    decision_seq: u64::from(n),
                }),
            )
            .await;
            ids.push((id, slot));
        }
    }
    for (i, (id, slot)) in ids.iter().enumerate() {
        let event = if i % 10 == 0 {
            Event::RegistrationCancelled(RegistrationCancelled {
                registration_id: id.clone(),
                citizen_key: format!("{i:064x}"),
                slot: slot.clone(),
                intake_seq: 500 + i as u64,
                waiting: None,
                submission_seq: 0,
            })
        } else {
            Event::RegistrationConfirmed(RegistrationConfirmed {
                registration_id: id.clone(),
                slot: slot.clone(),
                intake_seq: 500 + i as u64,
                submission_seq: 0,
            })
        };
        write(js, subjects::reservation_decisions(&slot.region), event).await;
    }
    write(
        js,
        subjects::intake(&regions[1], IntakeKind::Capacity),
        Event::CapacitySet(CapacitySet {
            slot: slot(&regions[1], 0),
            capacity: 9,
        }),
    )
    .await;
}

#[tokio::test]
async fn a_rebuild_region_by_region_in_parallel_equals_the_stream_applied_in_order() {
    testkit::init_test_log();
    let nats = NatsServer::start();
    let js = jetstream::new(nats.connect().await);
    streams::config::ensure_streams(&js, streams::config::Replication(1))
        .await
        .unwrap();
    traffic(&js).await;
    let ends = worker::ends(&js).await.unwrap();

    let live = Store::open(&StoreOptions::new("mem://")).await.unwrap();
    let rebuilt = live.database("parallel").await.unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| seen.lock().unwrap().push(p);
    for (projected, (_, until)) in worker::projected_streams().into_iter().zip(&ends) {
        rebuild::project_until(&js, &live, projected.clone(), *until, &|_| {})
            .await
            .unwrap();
        rebuild::project_in_parallel(&js, &rebuilt, projected, *until, 3, &progress)
            .await
            .unwrap();
    }

    let comparison = rebuild::compare(
        &live.snapshot().await.unwrap(),
        &rebuilt.snapshot().await.unwrap(),
    );
    let (store, rebuilt) = (rebuilt.clone(), rebuilt.snapshot().await.unwrap());
    assert!(comparison.equal, "{comparison:#?}");
    assert_eq!(
        rebuilt.tables["registration"].len(),
        36,
        "every region's registrations are there"
    );
    let checkpoints: Vec<&String> = rebuilt.tables["checkpoint"].keys().collect();
    assert_eq!(
        checkpoints.len(),
        2,
        "only the streams' checkpoints: {checkpoints:?}"
    );
    // Progress only ever reports what every region has reached, ending at the target.
    let seen = seen.into_inner().unwrap();
    for (stream, until) in &ends {
        let reports: Vec<u64> = seen
            .iter()
            .filter(|p| p.stream == *stream)
            .map(|p| p.applied)
            .collect();
        assert!(reports.windows(2).all(|w| w[0] <= w[1]), "{reports:?}");
        assert_eq!(reports.last(), Some(until), "{stream}");
    }

    // A second parallel rebuild into the same database is refused: it is not fresh.
    let projected = worker::projected_streams()[1].clone();
    let refused = rebuild::project_in_parallel(&js, &store, projected, ends[1].1, 3, &|_| {});
    assert!(refused.await.is_err());
}
