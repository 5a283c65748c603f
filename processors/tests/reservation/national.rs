//! National shapes: steps of many thousands of decisions, more than one atomic batch holds.

use std::collections::HashMap;

use processors::reservation::decide::{Input, Policy};
use streams::appender::{Outgoing, publish_atomic};
use streams::events::*;
use streams::model::RegistrationId;
use streams::subjects::{self, IntakeKind, RegionFilter};

use crate::helpers::*;

/// How many times each registration was promoted and rejected as `waitlist_closed`.
fn tally(log: &[(u64, Event)]) -> (HashMap<RegistrationId, u32>, HashMap<RegistrationId, u32>) {
    let (mut promoted, mut closed) = (HashMap::new(), HashMap::new());
    for (_, e) in log {
        match e {
            Event::WaitlistPromoted(p) => {
                *promoted.entry(p.registration_id.clone()).or_default() += 1
            }
            Event::SlotRejected(r) if r.reason == RejectReason::WaitlistClosed => {
                *closed.entry(r.registration_id.clone()).or_default() += 1
            }
            _ => {}
        }
    }
    (promoted, closed)
}

/// Writes `decisions` as the region's decider would, one atomic batch fenced on `fence`: a
/// decider that got this far and died.
async fn write_as_the_decider(world: &World, fence: u64, decisions: &[Event]) {
    let mut batch: Vec<Outgoing> = decisions
        .iter()
        .map(|d| {
            Outgoing::event(
                subjects::reservation_decisions(&region()),
                &Envelope::new("test", d.clone()),
            )
        })
        .collect();
    batch[0].headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        fence.to_string().as_str(),
    );
    let js = async_nats::jetstream::new(world.client.clone());
    publish_atomic(&js, &world.client, batch).await.unwrap();
}

fn long_lines(n: u32) -> Policy {
    Policy {
        waitlist_per_slot: Some(n),
    }
}

/// A capacity raised over 10,000 waiting and a line of 10,000 closed: each one step of
/// 10,000 decisions, written in ten atomic batches; the region decides on afterwards.
#[tokio::test]
async fn a_step_of_ten_thousand_promotions_and_one_of_ten_thousand_closings_are_decided() {
    const N: usize = 10_000;
    let world = World::start().await;
    let (raised, closing, later) = (slot("raised"), slot("closing"), slot("later"));
    for s in [&raised, &closing] {
        world.set_capacity(s, 0).await;
    }
    world.set_capacity(&later, 1).await;
    let replica = world.replica_deciding(RegionFilter::One(region()), 0, long_lines(N as u32));
    let waiting = world.submit_many(&raised, N).await;
    let closed = world.submit_many(&closing, N).await;
    world.wait_for_decision_count(2 * N as u64).await;

    world.set_capacity(&raised, N as u32).await;
    world
        .append(
            IntakeKind::Waitlist,
            &region(),
            Event::WaitlistClosed(WaitlistClosed {
                slot: closing.clone(),
                reason: CloseReason::WindowClosed,
                window_closes_at: None,
            }),
        )
        .await;
    let (late, _) = world.submit(&later).await;
    let log = world.wait_decided(std::slice::from_ref(&late)).await;
    assert!(
        matches!(first_decisions(&log)[&late][..], [Event::SlotReserved(_)]),
        "the region decides on after both steps"
    );
    let (promoted, rejected) = tally(&log);
    assert_eq!(promoted.len(), N);
    assert!(
        waiting.iter().all(|id| promoted.get(id) == Some(&1)),
        "each promoted once"
    );
    assert_eq!(rejected.len(), N);
    assert!(
        closed.iter().all(|id| rejected.get(id) == Some(&1)),
        "each told once"
    );
    assert_eq!(
        max_active(&log)[&raised],
        N as u32,
        "never more than the capacity"
    );
    let (expected, log) = world.wait_all_decided_with(long_lines(N as u32)).await;
    assert_eq!(log, expected, "the log is one run of the rule");
    replica.stop().await;
}

/// A replica that wrote the first batch of a 2,500-decision step and died: the next one
/// finishes the step from where the log stops, promoting nobody twice and nobody skipped.
#[tokio::test]
async fn a_crash_between_two_batches_of_one_step_resumes_where_the_log_stops() {
    const N: usize = 2_500;
    let world = World::start().await;
    let s = slot("raised");
    world.set_capacity(&s, 0).await;
    let replica = world.replica_deciding(RegionFilter::One(region()), 0, long_lines(N as u32));
    let waiting = world.submit_many(&s, N).await;
    world.wait_for_decision_count(N as u64).await;
    replica.stop().await;

    // The decider that read the raise wrote its first batch only.
    let raise = Event::CapacitySet(CapacitySet {
        slot: s.clone(),
        capacity: N as u32,
    });
    let seq = world
        .append(IntakeKind::Capacity, &region(), raise.clone())
        .await;
    let rebuilt = world.rebuild(false).await;
    let mut state = rebuilt.state;
    let step = state.handle(&Input { seq, event: raise });
    assert_eq!(step.len(), N);
    write_as_the_decider(&world, rebuilt.fence, &step[..1_000]).await;

    let replica = world.replica_deciding(RegionFilter::One(region()), 0, long_lines(N as u32));
    let log = world.wait_for_decision_count(2 * N as u64).await;
    let (promoted, _) = tally(&log);
    assert!(
        waiting.iter().all(|id| promoted.get(id) == Some(&1)),
        "each promoted once"
    );
    let (expected, log) = world.wait_all_decided_with(long_lines(N as u32)).await;
    assert_eq!(log, expected, "the log is one run of the rule");
    replica.stop().await;
}

/// A closer behind an operator's extension appends a closing judged on the old window: the
/// rule, reading the extension first in log order, ignores it, live and after a rebuild.
#[tokio::test]
async fn a_closing_behind_an_operators_extension_closes_nothing() {
    let world = World::start().await;
    let s = slot("extended");
    world.set_capacity(&s, 1).await;
    let replica = world.replica_deciding(RegionFilter::One(region()), 7, long_lines(5));
    let (_holder, _) = world.submit(&s).await;
    let (waiting, _) = world.submit(&s).await;
    world.wait_decided(std::slice::from_ref(&waiting)).await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::seconds(1);
    let set_window = |closes_at| {
        Event::WindowSet(WindowSet {
            region: region(),
            opens_at: now - chrono::Duration::hours(2),
            closes_at,
        })
    };
    // The window the closer saw (closed), the operator's extension, then the stale closing.
    world
        .append(IntakeKind::Window, &region(), set_window(old))
        .await;
    world
        .append(
            IntakeKind::Window,
            &region(),
            set_window(now + chrono::Duration::hours(1)),
        )
        .await;
    world
        .append(
            IntakeKind::Waitlist,
            &region(),
            Event::WaitlistClosed(WaitlistClosed {
                slot: s.clone(),
                reason: CloseReason::WindowClosed,
                window_closes_at: Some(old),
            }),
        )
        .await;
    let (late, _) = world.submit(&s).await;
    let log = world.wait_decided(std::slice::from_ref(&late)).await;
    assert!(
        matches!(
            first_decisions(&log)[&late][..],
            [Event::RegistrationWaitlisted(_)]
        ),
        "the line is still open: {:?}",
        first_decisions(&log)[&late]
    );
    replica.stop().await;
    // A rebuild agrees: the line is open, both still wait.
    let rebuilt = world.rebuild(true).await;
    assert!(!rebuilt.state.slots[&s].closed);
    assert_eq!(rebuilt.state.slots[&s].waiting(), 2);
    let rebuilt = world.rebuild(false).await;
    assert!(!rebuilt.state.slots[&s].closed);
}

/// Verdicts come packed, many in one intake message ([`streams::pack`]), so one message's
/// decisions can be cut between two batches too: a replica wrote the confirmation of the
/// first verdict of a pack and died. The next one decides the pack again: the second
/// registration is confirmed, the first not twice. Before packs were decided again, it
/// resumed after the pack and the second stayed reserved for ever.
#[tokio::test]
async fn a_crash_inside_a_pack_of_verdicts_confirms_the_rest_of_the_pack() {
    let world = World::start().await;
    let s = slot("packed");
    world.set_capacity(&s, 2).await;
    let replica = world.replica();
    let (a, _) = world.submit(&s).await;
    let (b, _) = world.submit(&s).await;
    world.wait_decided(&[a.clone(), b.clone()]).await;
    replica.stop().await;

    let passed = |id: &RegistrationId| {
        Event::VerificationPassed(VerificationPassed {
            registration_id: id.clone(),
            reviewer: None,
        })
    };
    let packer = streams::pack::Packer::start(world.client.clone(), Default::default());
    let subject = subjects::intake(&region(), IntakeKind::Verification);
    let (ea, eb) = (
        Envelope::new(a.to_string(), passed(&a)),
        Envelope::new(b.to_string(), passed(&b)),
    );
    let (sa, sb) = tokio::join!(
        packer.append(subject.clone(), &ea),
        packer.append(subject.clone(), &eb)
    );
    let seq = sa.unwrap();
    assert_eq!(sb.unwrap(), seq, "both verdicts in one pack");

    // The decider that read the pack wrote the first verdict's confirmation only.
    let rebuilt = world.rebuild(false).await;
    let mut state = rebuilt.state;
    let step = state.handle(&Input {
        seq,
        event: passed(&a),
    });
    assert!(matches!(step.as_slice(), [Event::RegistrationConfirmed(_)]));
    write_as_the_decider(&world, rebuilt.fence, &step).await;

    let replica = world.replica();
    let confirmed = |log: &[(u64, Event)], id: &RegistrationId| {
        log.iter()
            .filter(
                |(_, e)| matches!(e, Event::RegistrationConfirmed(c) if c.registration_id == *id),
            )
            .count()
    };
    let log = testkit::eventually(
        "the second verdict of the pack decided",
        std::time::Duration::from_secs(30),
        || async {
            let log = world.decisions().await;
            (confirmed(&log, &b) == 1).then_some(log)
        },
    )
    .await;
    assert_eq!(confirmed(&log, &a), 1, "the first is not confirmed twice");
    replica.stop().await;
}
