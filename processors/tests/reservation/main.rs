//! The reservation processor (and the claims releaser beside it) against a real nats-server:
//! concurrency, competing replicas, fencing, restarts.

mod claims;
mod helpers;
mod national;
mod reviews;
mod service;
mod snapshots;
mod waiting_room;

use futures::future::join_all;
use helpers::*;
use streams::events::{Event, RejectReason};

#[tokio::test]
async fn sixty_concurrent_submissions_for_ten_slots_grant_exactly_ten_in_arrival_order() {
    let world = World::start().await;
    let hot = slot("hot");
    world.set_capacity(&hot, 10).await;
    // Three replicas race for the same region: fencing must leave one history.
    let replicas = [world.replica(), world.replica(), world.replica()];
    let submissions = join_all((0..60).map(|_| world.submit(&hot))).await;

    let log = world.wait_for_first_decisions(60).await;
    let firsts = first_decisions(&log);
    assert_eq!(firsts.len(), 60);
    assert!(
        firsts.values().all(|d| d.len() == 1),
        "a registration got two decisions"
    );
    let reserved: Vec<_> = submissions
        .iter()
        .filter(|(id, _)| matches!(firsts[id][0], Event::SlotReserved(_)))
        .collect();
    assert_eq!(reserved.len(), 10, "exactly the capacity is granted");
    assert_eq!(max_active(&log)[&hot], 10, "never above capacity");
    // First come, first served: the ten winners are the ten earliest intake sequences.
    let mut seqs: Vec<u64> = submissions.iter().map(|(_, s)| *s).collect();
    seqs.sort_unstable();
    let mut winners: Vec<u64> = reserved.iter().map(|(_, s)| *s).collect();
    winners.sort_unstable();
    assert_eq!(winners, seqs[..10]);
    for (id, _) in &submissions {
        if let Event::SlotRejected(r) = &firsts[id][0] {
            assert_eq!(r.reason, RejectReason::SlotFull);
        }
    }
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test]
async fn a_cancellation_gives_the_place_to_the_one_waiting_and_a_restart_decides_nothing_twice() {
    let world = World::start().await;
    let small = slot("small");
    world.set_capacity(&small, 1).await;
    let replica = world.replica();
    let (first, _) = world.submit(&small).await;
    let (second, _) = world.submit(&small).await;
    world.wait_for_first_decisions(2).await;
    world.cancel(&first).await;
    let (third, _) = world.submit(&small).await;
    let log = world.wait_for_first_decisions(3).await;
    let firsts = first_decisions(&log);
    assert!(matches!(firsts[&first][0], Event::SlotReserved(_)));
    assert!(matches!(
        firsts[&second][0],
        Event::RegistrationWaitlisted(_)
    ));
    assert!(
        log.iter()
            .any(|(_, e)| matches!(e, Event::WaitlistPromoted(p) if p.registration_id == second)),
        "the released place goes to the one waiting"
    );
    assert!(
        matches!(firsts[&third][0], Event::RegistrationWaitlisted(_)),
        "a newcomer queues behind nobody's freed place"
    );
    replica.stop().await;

    // A new replica rebuilds from the log; re-delivered submissions decide nothing new.
    let before = world.decisions().await.len();
    world
        .append(
            streams::subjects::IntakeKind::Submitted,
            &region(),
            submitted(&first, &small),
        )
        .await;
    let (fourth, _) = world.submit(&small).await;
    let replica = world.replica();
    let log = world.wait_for_first_decisions(4).await;
    assert_eq!(log.len(), before + 1, "only the new submission was decided");
    assert!(
        matches!(&first_decisions(&log)[&fourth][0], Event::SlotRejected(r) if r.reason == RejectReason::SlotFull),
        "the line (as long as the capacity, 1) is full"
    );
    replica.stop().await;
}

#[tokio::test]
async fn decisions_survive_a_nats_server_restart() {
    let mut world = World::start().await;
    let s = slot("restart");
    world.set_capacity(&s, 5).await;
    let replica = world.replica();
    for _ in 0..3 {
        world.submit(&s).await;
    }
    world.wait_for_first_decisions(3).await;
    world.nats.restart();
    // The appender and the replica reconnect on their own.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = testkit::eventually(
            "an append after the restart",
            std::time::Duration::from_secs(30),
            || async {
                let id = streams::model::RegistrationId::generate(&s.region);
                world
                    .appender
                    .append(streams::appender::Outgoing::event(
                        streams::subjects::intake(
                            &s.region,
                            streams::subjects::IntakeKind::Submitted,
                        ),
                        &streams::events::Envelope::new("t", submitted(&id, &s)),
                    ))
                    .await
                    .ok()
                    .map(|_| id)
            },
        )
        .await;
        ids.push(id);
    }
    let log = world.wait_for_first_decisions(7).await;
    let firsts = first_decisions(&log);
    assert!(firsts.values().all(|d| d.len() == 1));
    assert_eq!(max_active(&log)[&s], 5);
    let reserved = firsts
        .values()
        .filter(|d| matches!(d[0], Event::SlotReserved(_)))
        .count();
    assert_eq!(reserved, 5);
    replica.stop().await;
}

#[tokio::test]
async fn a_replica_whose_view_is_stale_is_fenced_and_rebuilds_instead_of_writing() {
    let world = World::start().await;
    let s = slot("fenced");
    world.set_capacity(&s, 2).await;
    let replica = world.replica();
    let (first, _) = world.submit(&s).await;
    world.wait_for_first_decisions(1).await;

    // Another writer (a paused replica waking up, say) extends the region's decision log
    // behind this replica's back: it reserves the last place for a registration of its own.
    let intruder = streams::model::RegistrationId::generate(&s.region);
    let envelope = streams::events::Envelope::new(
        "intruder",
        Event::SlotReserved(streams::events::SlotReserved {
            registration_id: intruder.clone(),
            citizen_key: "intruder".into(),
            slot: s.clone(),
            intake_seq: 0,
            reserved: 2,
            capacity: 2,
        }),
    );
    let js = async_nats::jetstream::new(world.client.clone());
    js.publish(
        streams::subjects::reservation_decisions(&s.region),
        envelope.encode().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // The replica's next write carries the sequence it last saw: refused, so it rebuilds,
    // learns of the intruder's reservation, and puts the newcomer in line instead of
    // overbooking.
    let (second, _) = world.submit(&s).await;
    let log = world.wait_for_first_decisions(3).await;
    let firsts = first_decisions(&log);
    assert!(matches!(firsts[&first][0], Event::SlotReserved(_)));
    assert!(matches!(
        firsts[&second][0],
        Event::RegistrationWaitlisted(_)
    ));
    assert_eq!(max_active(&log)[&s], 2);
    assert_eq!(replica.metrics.fenced.get(), 1, "exactly one fenced write");
    replica.stop().await;
}

#[tokio::test]
async fn one_replica_decides_while_the_others_stand_by_and_a_standby_takes_over() {
    let world = World::start().await;
    let s = slot("lease");
    world.set_capacity(&s, 100).await;
    let first = world.replica();
    world.submit(&s).await;
    world.wait_for_first_decisions(1).await;
    assert_eq!(
        first.metrics.active.get(),
        1,
        "the first replica took the lease"
    );

    let standby = world.replica();
    for _ in 0..5 {
        world.submit(&s).await;
    }
    world.wait_for_first_decisions(6).await;
    assert_eq!(
        standby.metrics.active.get(),
        0,
        "the second replica stands by"
    );
    assert_eq!(standby.metrics.inputs.get(), 0, "a standby reads nothing");

    // The active replica stops: it hands the lease over, and the standby goes on deciding
    // from where the log ends.
    first.stop().await;
    for _ in 0..5 {
        world.submit(&s).await;
    }
    let log = world.wait_for_first_decisions(11).await;
    assert_eq!(standby.metrics.active.get(), 1);
    assert!(first_decisions(&log).values().all(|d| d.len() == 1));
    assert_eq!(
        standby.metrics.fenced.get(),
        0,
        "a clean hand-over needs no fence"
    );
    standby.stop().await;
}

#[tokio::test]
async fn a_replica_whose_lease_moved_on_steps_down() {
    let world = World::start().await;
    let s = slot("stepdown");
    world.set_capacity(&s, 10).await;
    let replica = world.replica();
    world.submit(&s).await;
    world.wait_for_first_decisions(1).await;

    // Someone else owns the key now (as if this replica had been paused past the TTL and a
    // standby had taken over): the next renewal fails and the replica stops deciding.
    let js = async_nats::jetstream::new(world.client.clone());
    let leases = streams::lease::bucket(&js).await.unwrap();
    let key = streams::subjects::reservation_lease(&region());
    leases.put(&key, "another-replica".into()).await.unwrap();
    testkit::eventually(
        "the replica to step down",
        std::time::Duration::from_secs(10),
        || async { (replica.metrics.active.get() == 0).then_some(()) },
    )
    .await;

    // When that other holder is gone, the replica takes the lease back and decides again.
    leases.delete(&key).await.unwrap();
    let (next, _) = world.submit(&s).await;
    let log = world.wait_for_first_decisions(2).await;
    assert!(matches!(
        first_decisions(&log)[&next][0],
        Event::SlotReserved(_)
    ));
    assert_eq!(
        replica.metrics.leases.get(),
        2,
        "acquired, lost, acquired again"
    );
    replica.stop().await;
}

/// An operator adds a one-region replica beside the default `*` one (as the README says) while
/// both regions take submissions: every registration of both regions is decided exactly once.
/// A `*` replica that resumed every region after the highest submission any region had
/// decided would never decide the other region's submissions before it.
#[tokio::test]
async fn a_one_region_replica_beside_a_star_one_loses_nothing_in_either_region() {
    let world = World::start().await;
    let other = streams::model::Region::parse("slaskie").unwrap();
    let (here, there) = (slot("mixed"), slot_in(&other, "mixed"));
    world.set_capacity(&here, 1000).await;
    world.set_capacity(&there, 1000).await;
    let mut ids = Vec::new();
    let one = world.replica();
    for _ in 0..15 {
        ids.push(world.submit(&here).await.0);
        ids.push(world.submit(&there).await.0);
    }
    let mine: Vec<_> = ids
        .iter()
        .filter(|id| id.region() == region())
        .cloned()
        .collect();
    world.wait_decided(&mine).await;

    // The `*` replica starts after the one-region replica decided its region, and more
    // submissions arrive for both while the two run side by side.
    let star = world.replica_for(streams::subjects::RegionFilter::All);
    let more =
        join_all((0..40).map(|i| world.submit(if i % 2 == 0 { &here } else { &there }))).await;
    ids.extend(more.into_iter().map(|(id, _)| id));
    let log = world.wait_decided(&ids).await;
    let firsts = first_decisions(&log);
    assert!(firsts.values().all(|d| d.len() == 1), "one decision each");
    assert_eq!(
        one.metrics.active.get(),
        1,
        "the one-region replica keeps its region"
    );
    assert_eq!(
        star.metrics.active.get(),
        1,
        "the `*` replica decides only the other"
    );

    // The one-region replica stops: the `*` replica takes its region over.
    one.stop().await;
    let last = join_all((0..10).map(|_| world.submit(&here))).await;
    ids.extend(last.into_iter().map(|(id, _)| id));
    let log = world.wait_decided(&ids).await;
    let firsts = first_decisions(&log);
    assert_eq!(firsts.len(), ids.len());
    assert!(firsts.values().all(|d| d.len() == 1), "one decision each");
    assert!(
        firsts
            .values()
            .all(|d| matches!(d[0], Event::SlotReserved(_))),
        "capacity was ample: everyone got a place"
    );
    assert_eq!(star.metrics.active.get(), 2);
    star.stop().await;
}

/// A submission written by newer code (a version this code does not know) stops the region's
/// reader at that record: what came before is decided, nothing after it is, and the stall is
/// reported, rather than the record skipped and the later submissions decided.
#[tokio::test]
async fn an_undecodable_submission_stops_the_region_at_that_record() {
    let world = World::start().await;
    let s = slot("stall");
    world.set_capacity(&s, 10).await;
    let (before, _) = world.submit(&s).await;
    let bad = world
        .append_raw(
            streams::subjects::intake(&region(), streams::subjects::IntakeKind::Submitted),
            br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000000","occurred_at":"2027-02-01T08:00:00Z","correlation_id":"x","version":9,"type":"RegistrationSubmitted","data":{}}"#,
        )
        .await;
    let (after, _) = world.submit(&s).await;
    let replica = world.replica();
    let stall = replica.wait_for_stall().await;
    assert_eq!(stall.seq, bad, "stopped at the record it cannot decode");
    let firsts = first_decisions(&world.decisions().await);
    assert!(
        firsts.contains_key(&before),
        "the record before it was decided"
    );
    assert!(!firsts.contains_key(&after), "nothing after it was decided");
    let metrics = streams::runtime::render_metrics(&replica.metrics.registry);
    assert!(
        metrics.contains(r#"consumer_stalled{consumer="reservation.mazowieckie"} 1"#),
        "{metrics}"
    );
    replica.stop().await;
}

/// A subject carries only the event types its writer owns: a cancellation on the
/// verification subject (what the verification processor's identity may append to) stops
/// the region's reader there as a record it cannot decode would, and the confirmed citizen
/// is not cancelled (nor the place released); nothing after it is decided either.
#[tokio::test]
async fn a_cancellation_on_the_verification_subject_stops_the_region_and_cancels_nobody() {
    let world = World::start().await;
    let s = slot("owned");
    world.set_capacity(&s, 10).await;
    let (confirmed, _) = world.submit(&s).await;
    world
        .append(
            streams::subjects::IntakeKind::Verification,
            &region(),
            Event::VerificationPassed(streams::events::VerificationPassed {
                registration_id: confirmed.clone(),
                reviewer: None,
            }),
        )
        .await;
    let foreign = world
        .append(
            streams::subjects::IntakeKind::Verification,
            &region(),
            Event::CancellationRequested(streams::events::CancellationRequested {
                registration_id: confirmed.clone(),
            }),
        )
        .await;
    let (after, _) = world.submit(&s).await;
    let replica = world.replica();
    let stall = replica.wait_for_stall().await;
    assert_eq!(stall.seq, foreign, "stopped at the foreign record: {stall}");
    let log = world.decisions().await;
    let decided = first_decisions(&log);
    assert!(
        log.iter().any(
            |(_, e)| matches!(e, Event::RegistrationConfirmed(c) if c.registration_id == confirmed)
        ),
        "what came before it was decided: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|(_, e)| matches!(e, Event::RegistrationCancelled(_) | Event::SlotReleased(_))),
        "nobody cancelled: {log:?}"
    );
    assert!(
        !decided.contains_key(&after),
        "nothing after it was decided"
    );
    replica.stop().await;
}

/// Every event type that does not belong on an intake subject, on each one the reservation
/// processor reads, in a region of its own between two submissions: one `*` replica stops
/// every region at its foreign record, decides the submission before it (unless the record
/// is on the window subject, read before anything is decided) and nothing after it, and the
/// foreign record itself decides nothing: no region goes on to decide the later
/// submissions.
#[tokio::test]
async fn every_foreign_type_on_every_intake_subject_stops_its_region_there() {
    use streams::subjects::{IntakeKind, SubjectKind};
    let world = World::start().await;
    let js = async_nats::jetstream::new(world.client.clone());
    let samples = streams::events::samples();
    // (region, the foreign record's sequence, the submissions before and after it)
    let mut cases = Vec::new();
    for (k, kind) in IntakeKind::ALL.into_iter().enumerate() {
        let owned = SubjectKind::Intake(kind).event_types();
        for (n, sample) in samples.iter().enumerate() {
            if owned.contains(&sample.event.event_type()) {
                continue;
            }
            let r = streams::model::Region::parse(&format!("foreign-{k}-{n}")).unwrap();
            let s = slot_in(&r, "x");
            world.set_capacity(&s, 10).await;
            let (before, _) = world.submit(&s).await;
            let foreign = js
                .publish(streams::subjects::intake(&r, kind), sample.encode().into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence;
            let (after, _) = world.submit(&s).await;
            cases.push((r, foreign, before, after, kind, sample.event.event_type()));
        }
    }
    assert!(cases.len() > 150, "{} cases", cases.len());
    let replica = world.replica_for(streams::subjects::RegionFilter::All);
    testkit::eventually(
        "every region to stop at its foreign record",
        std::time::Duration::from_secs(60),
        || async {
            cases
                .iter()
                .all(|(r, foreign, ..)| {
                    replica
                        .metrics
                        .health
                        .stall_of(&format!("reservation.{r}"))
                        .is_some_and(|stall| stall.seq == *foreign)
                })
                .then_some(())
        },
    )
    .await;
    let log = world.decisions().await;
    let firsts = first_decisions(&log);
    let mut decided = 0;
    for (r, _, before, after, kind, event_type) in &cases {
        // A region's last window is read before anything is decided (it says whether the
        // region is open): a foreign record there stops the region before its first decision.
        if *kind == IntakeKind::Window {
            assert!(!firsts.contains_key(before), "{r}: {event_type}");
        } else {
            assert!(firsts.contains_key(before), "{r}: {event_type}");
            decided += 1;
        }
        assert!(!firsts.contains_key(after), "{r}: {event_type}");
    }
    // One decision per region that went that far (the first submission's): the foreign
    // records decided nothing.
    assert_eq!(log.len(), decided, "{log:?}");
    replica.stop().await;
}

/// A decision the replica cannot decode stops its recovery: a state that skipped a
/// reservation could overbook, so the record is never skipped to go on deciding from a state
/// that does not count it.
#[tokio::test]
async fn an_undecodable_decision_stops_recovery_instead_of_overbooking() {
    let world = World::start().await;
    let s = slot("recovery");
    world.set_capacity(&s, 1).await;
    world
        .append_raw(
            streams::subjects::reservation_decisions(&region()),
            br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000000","occurred_at":"2027-02-01T08:00:00Z","correlation_id":"x","version":1,"type":"SlotReservedTwice","data":{}}"#,
        )
        .await;
    let (waiting, _) = world.submit(&s).await;
    let replica = world.replica();
    replica.wait_for_stall().await;
    assert!(
        !first_decisions(&world.decisions().await).contains_key(&waiting),
        "nothing decided from a state that may be missing a reservation"
    );
    replica.stop().await;
}

#[tokio::test]
async fn when_the_window_closes_those_still_waiting_are_told_and_a_rebuild_agrees() {
    let world = World::start().await;
    let s = slot("closing");
    world.set_capacity(&s, 1).await;
    let replica = world.replica();
    let (holder, _) = world.submit(&s).await;
    let (waiting, _) = world.submit(&s).await;
    let log = world.wait_decided(&[holder.clone(), waiting.clone()]).await;
    assert!(matches!(
        first_decisions(&log)[&waiting][0],
        Event::RegistrationWaitlisted(_)
    ));
    // An operator's window that has already closed (the edge refuses newcomers from now on).
    let now = chrono::Utc::now();
    world
        .append(
            streams::subjects::IntakeKind::Window,
            &region(),
            Event::WindowSet(streams::events::WindowSet {
                region: region(),
                opens_at: now - chrono::Duration::hours(2),
                closes_at: now - chrono::Duration::seconds(1),
            }),
        )
        .await;
    let closed = |log: &[(u64, Event)]| {
        log.iter().any(|(_, e)| {
            matches!(e, Event::SlotRejected(r)
                if r.registration_id == waiting && r.reason == RejectReason::WaitlistClosed && r.waiting == Some(0))
        })
    };
    testkit::eventually(
        "the waiting registration to be told",
        std::time::Duration::from_secs(30),
        || async { closed(&world.decisions().await).then_some(()) },
    )
    .await;
    replica.stop().await;

    // A new replica rebuilds: the list stays closed (read back from intake), so a late
    // submission (appended directly, as a retried write might land) is refused for it.
    let before = world.decisions().await;
    let replica = world.replica();
    let (late, _) = world.submit(&s).await;
    let log = world.wait_decided(std::slice::from_ref(&late)).await;
    assert!(
        matches!(&first_decisions(&log)[&late][0], Event::SlotRejected(r) if r.reason == RejectReason::WaitlistClosed),
        "{:?}",
        first_decisions(&log)[&late]
    );
    assert_eq!(
        log.len(),
        before.len() + 1,
        "nothing else was decided again"
    );
    assert_eq!(
        log.iter()
            .filter(|(_, e)| matches!(e, Event::SlotRejected(r) if r.reason == RejectReason::WaitlistClosed && r.registration_id == waiting))
            .count(),
        1,
        "told once"
    );
    replica.stop().await;
}
