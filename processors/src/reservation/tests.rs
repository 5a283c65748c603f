//! The reservation rule, given / when / then, with no broker; and a property test that
//! random interleavings never break the invariants.

use chrono::NaiveDate;
use proptest::prelude::*;
use streams::events::*;
use streams::model::{Location, Region, RegistrationId, SlotKey};

use super::decide::{Input, State};

fn slot(location: &str) -> SlotKey {
    SlotKey {
        region: Region::parse("mazowieckie").unwrap(),
        location: Location::parse(location).unwrap(),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).unwrap(),
    }
}

fn id(n: u32) -> RegistrationId {
    RegistrationId::parse(&format!("mazowieckie.{n:032x}")).unwrap()
}

fn submitted(n: u32, slot: &SlotKey) -> Event {
    Event::RegistrationSubmitted(RegistrationSubmitted {
        registration_id: id(n),
        slot: slot.clone(),
        citizen_key: format!("{n:032x}"),
        request_hash: String::new(),
        language: "en".into(),
        personal: Sealed {
            key_id: "k1".into(),
            nonce: String::new(),
            ciphertext: String::new(),
        },
    })
}

fn capacity(slot: &SlotKey, capacity: u32) -> Event {
    Event::CapacitySet(CapacitySet {
        slot: slot.clone(),
        capacity,
    })
}

fn cancel(n: u32) -> Event {
    Event::CancellationRequested(CancellationRequested {
        registration_id: id(n),
    })
}

/// given past intake events (in order, sequences 1..), when one more arrives, then these
/// decisions.
struct Scenario {
    state: State,
    seq: u64,
}

fn given(events: Vec<Event>) -> Scenario {
    let mut s = Scenario {
        state: State::default(),
        seq: 0,
    };
    for e in events {
        s.when(e);
    }
    s
}

impl Scenario {
    fn when(&mut self, event: Event) -> Vec<Event> {
        self.seq += 1;
        self.state.handle(&Input {
            seq: self.seq,
            event,
        })
    }
}

#[test]
fn a_submission_for_a_slot_with_room_is_reserved() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 2)]);
    let then = s.when(submitted(1, &a));
    assert_eq!(
        then,
        vec![Event::SlotReserved(SlotReserved {
            registration_id: id(1),
            citizen_key: format!("{:032x}", 1),
            slot: a,
            intake_seq: 2,
            reserved: 1,
            capacity: 2,
        })]
    );
}

#[test]
fn a_full_slot_rejects_and_an_unknown_slot_rejects() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a)]);
    let then = s.when(submitted(2, &a));
    assert!(matches!(&then[..], [Event::SlotRejected(r)] if r.reason == RejectReason::SlotFull));
    let then = s.when(submitted(3, &slot("nowhere")));
    assert!(matches!(&then[..], [Event::SlotRejected(r)] if r.reason == RejectReason::UnknownSlot));
}

#[test]
fn a_repeated_submission_gets_no_second_decision() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 5), submitted(1, &a)]);
    assert_eq!(s.when(submitted(1, &a)), vec![]);
    assert_eq!(s.state.slots[&a].active(), 1);
}

#[test]
fn a_cancellation_releases_the_slot_for_the_next_submission() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a)]);
    let then = s.when(cancel(1));
    assert!(
        matches!(&then[..], [Event::SlotReleased(r), Event::RegistrationCancelled(_)]
        if r.reason == ReleaseReason::Cancelled && r.reserved == 0)
    );
    // idempotent: a second cancellation decides nothing
    assert_eq!(s.when(cancel(1)), vec![]);
    let then = s.when(submitted(2, &a));
    assert!(matches!(&then[..], [Event::SlotReserved(_)]));
}

#[test]
fn lowering_capacity_revokes_nothing_and_grants_nothing() {
    let a = slot("a");
    let mut s = given(vec![
        capacity(&a, 2),
        submitted(1, &a),
        submitted(2, &a),
        capacity(&a, 1),
    ]);
    assert_eq!(s.state.slots[&a].active(), 2);
    assert!(matches!(
        &s.when(submitted(3, &a))[..],
        [Event::SlotRejected(_)]
    ));
    s.when(cancel(1));
    // still at capacity (1 active, capacity 1)
    assert!(matches!(
        &s.when(submitted(4, &a))[..],
        [Event::SlotRejected(_)]
    ));
    s.when(capacity(&a, 3));
    assert!(matches!(
        &s.when(submitted(5, &a))[..],
        [Event::SlotReserved(_)]
    ));
}

#[test]
fn verification_confirms_or_releases() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 2), submitted(1, &a), submitted(2, &a)]);
    let then = s.when(Event::VerificationPassed(VerificationPassed {
        registration_id: id(1),
    }));
    assert!(matches!(&then[..], [Event::RegistrationConfirmed(_)]));
    let then = s.when(Event::VerificationFailed(VerificationFailed {
        registration_id: id(2),
        reason: "unknown citizen".into(),
    }));
    assert!(
        matches!(&then[..], [Event::SlotReleased(r), Event::SlotRejected(j)]
        if r.reason == ReleaseReason::VerificationFailed && j.reason == RejectReason::VerificationFailed)
    );
    assert_eq!(s.state.slots[&a].active(), 1);
}

#[test]
fn state_folded_from_the_decisions_equals_the_live_state() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 2)]);
    let mut log = Vec::new();
    for e in [
        submitted(1, &a),
        submitted(2, &a),
        cancel(1),
        submitted(3, &a),
        submitted(4, &a),
    ] {
        log.extend(s.when(e));
    }
    let mut rebuilt = State::default();
    for d in &log {
        rebuilt.apply(d);
    }
    rebuilt.set_capacity(&a, 2);
    assert_eq!(rebuilt, s.state);
}

#[derive(Debug, Clone)]
enum Op {
    Submit(u32, usize),
    Cancel(u32),
    Capacity(usize, u32),
    Redeliver(usize),
    VerifyFail(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..40, 0usize..3).prop_map(|(c, s)| Op::Submit(c, s)),
        2 => (0u32..40).prop_map(Op::Cancel),
        1 => (0usize..3, 0u32..6).prop_map(|(s, c)| Op::Capacity(s, c)),
        2 => (0usize..200).prop_map(Op::Redeliver),
        1 => (0u32..40).prop_map(Op::VerifyFail),
    ]
}

proptest! {
    /// Random interleavings of submissions, cancellations, capacity changes, verification
    /// failures and redeliveries, checked on the decision log against a simple model:
    /// - never more active reservations than capacity at the time of each grant;
    /// - exactly one first decision per registration;
    /// - within a slot, grants follow intake order among those that were not refused for
    ///   lack of room at their turn (first come, first served);
    /// - folding the decision log rebuilds the live state.
    #[test]
    fn random_interleavings_keep_every_invariant(ops in proptest::collection::vec(op(), 1..200)) {
        let slots = [slot("a"), slot("b"), slot("c")];
        let mut s = given(vec![capacity(&slots[0], 2), capacity(&slots[1], 1)]);
        let mut intake: Vec<Event> = Vec::new();
        let mut log: Vec<Event> = Vec::new();
        let mut capacities = std::collections::HashMap::from([(slots[0].clone(), 2u32), (slots[1].clone(), 1u32)]);
        let mut active: std::collections::HashMap<SlotKey, std::collections::BTreeSet<RegistrationId>> = Default::default();
        let mut first_decisions: std::collections::HashMap<RegistrationId, usize> = Default::default();
        let mut submitted_slot: std::collections::HashMap<u32, usize> = Default::default();
        for op in ops {
            let event = match op {
                Op::Submit(c, i) => {
                    // one submission per citizen id: a citizen's repeats are redeliveries
                    let i = *submitted_slot.entry(c).or_insert(i);
                    submitted(c, &slots[i])
                }
                Op::Cancel(c) => cancel(c),
                Op::Capacity(i, c) => { capacities.insert(slots[i].clone(), c); capacity(&slots[i], c) }
                Op::Redeliver(k) if !intake.is_empty() => {
                    let e = intake[k % intake.len()].clone();
                    if let Event::CapacitySet(set) = &e { capacities.insert(set.slot.clone(), set.capacity); }
                    e
                }
                Op::Redeliver(_) => continue,
                Op::VerifyFail(c) => Event::VerificationFailed(VerificationFailed { registration_id: id(c), reason: "x".into() }),
            };
            intake.push(event.clone());
            let decisions = s.when(event);
            for d in &decisions {
                match d {
                    Event::SlotReserved(r) => {
                        *first_decisions.entry(r.registration_id.clone()).or_default() += 1;
                        let set = active.entry(r.slot.clone()).or_default();
                        prop_assert!(set.insert(r.registration_id.clone()), "reserved twice");
                        let cap = capacities.get(&r.slot).copied().unwrap_or(0);
                        prop_assert!(set.len() as u32 <= cap, "overbooked {}: {} > {}", r.slot, set.len(), cap);
                        prop_assert_eq!(r.reserved as usize, set.len());
                    }
                    Event::SlotRejected(r) if r.reason != RejectReason::VerificationFailed => {
                        *first_decisions.entry(r.registration_id.clone()).or_default() += 1;
                        if r.reason == RejectReason::SlotFull {
                            let held = active.get(&r.slot).map_or(0, |s| s.len()) as u32;
                            prop_assert!(held >= capacities.get(&r.slot).copied().unwrap_or(0), "rejected while room was left");
                        }
                    }
                    Event::SlotReleased(r) => {
                        prop_assert!(active.entry(r.slot.clone()).or_default().remove(&r.registration_id), "released a slot not held");
                    }
                    _ => {}
                }
            }
            log.extend(decisions);
        }
        for (id, n) in &first_decisions {
            prop_assert_eq!(*n, 1, "{} got {} first decisions", id, n);
        }
        let mut rebuilt = State::default();
        for d in &log { rebuilt.apply(d); }
        for (slot, c) in &capacities { rebuilt.set_capacity(slot, *c); }
        prop_assert_eq!(&rebuilt.registrations, &s.state.registrations);
        for (slot, live) in &s.state.slots {
            prop_assert_eq!(&rebuilt.slots.get(slot).map(|s| &s.holders), &Some(&live.holders));
        }
    }
}
