//! The reservation rule, given / when / then, with no broker; and a property test that
//! random interleavings never break the invariants.

use chrono::NaiveDate;
use proptest::prelude::*;
use streams::events::*;
use streams::model::{Location, Region, RegistrationId, SlotKey};

use super::decide::{Input, Policy, State};

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

fn passed(n: u32) -> Event {
    Event::VerificationPassed(VerificationPassed {
        registration_id: id(n),
        reviewer: None,
    })
}

fn refused(n: u32, reason: RegistryRefusal) -> Event {
    Event::VerificationFailed(VerificationFailed {
        registration_id: id(n),
        reason,
        reviewer: None,
    })
}

fn inconclusive(n: u32) -> Event {
    Event::VerificationInconclusive(VerificationInconclusive {
        registration_id: id(n),
        attempts: 8,
        last_error: "the registry could not be reached".into(),
        error_code: "registry_unreachable".into(),
    })
}

fn requeue(n: u32) -> Event {
    Event::ReviewRequeued(ReviewRequeued {
        registration_id: id(n),
        reviewer: Reviewer {
            operator: "op".into(),
            note: "back".into(),
        },
    })
}

fn close(slot: &SlotKey) -> Event {
    Event::WaitlistClosed(WaitlistClosed {
        slot: slot.clone(),
        reason: CloseReason::DatePassed,
        window_closes_at: None,
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
    given_with(Policy::default(), events)
}

fn given_with(policy: Policy, events: Vec<Event>) -> Scenario {
    let mut s = Scenario {
        state: State::new(policy),
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
fn a_full_slot_waitlists_up_to_its_bound_then_rejects_and_an_unknown_slot_rejects() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a)]);
    // The default bound is the slot's capacity: one may wait.
    let then = s.when(submitted(2, &a));
    assert!(
        matches!(&then[..], [Event::RegistrationWaitlisted(w)] if w.position == 1 && w.waiting == 1 && w.intake_seq == 3),
        "{then:?}"
    );
    let then = s.when(submitted(3, &a));
    assert!(matches!(&then[..], [Event::SlotRejected(r)] if r.reason == RejectReason::SlotFull));
    let then = s.when(submitted(4, &slot("nowhere")));
    assert!(matches!(&then[..], [Event::SlotRejected(r)] if r.reason == RejectReason::UnknownSlot));
}

#[test]
fn the_waiting_list_bound_comes_from_the_policy() {
    let a = slot("a");
    let mut s = given_with(
        Policy {
            waitlist_per_slot: Some(0),
        },
        vec![capacity(&a, 1), submitted(1, &a)],
    );
    assert!(
        matches!(&s.when(submitted(2, &a))[..], [Event::SlotRejected(r)] if r.reason == RejectReason::SlotFull)
    );
    let mut s = given_with(
        Policy {
            waitlist_per_slot: Some(3),
        },
        vec![capacity(&a, 1), submitted(1, &a)],
    );
    for (n, position) in [(2, 1), (3, 2), (4, 3)] {
        assert!(
            matches!(&s.when(submitted(n, &a))[..], [Event::RegistrationWaitlisted(w)] if w.position == position)
        );
    }
    assert!(
        matches!(&s.when(submitted(5, &a))[..], [Event::SlotRejected(r)] if r.reason == RejectReason::SlotFull)
    );
}

#[test]
fn a_released_place_goes_to_the_earliest_waiting_registration() {
    let a = slot("a");
    let mut s = given(vec![
        capacity(&a, 2),
        submitted(1, &a),
        submitted(2, &a),
        submitted(3, &a), // waits, seq 4
        submitted(4, &a), // waits, seq 5
    ]);
    let then = s.when(cancel(2));
    assert!(
        matches!(&then[..], [Event::SlotReleased(_), Event::RegistrationCancelled(_), Event::WaitlistPromoted(p)]
            if p.registration_id == id(3) && p.submission_seq == 4 && p.intake_seq == 6 && p.reserved == 2 && p.waiting == 1),
        "{then:?}"
    );
    let then = s.when(refused(1, RegistryRefusal::Deceased));
    assert!(
        matches!(&then[..], [Event::SlotReleased(_), Event::SlotRejected(r), Event::WaitlistPromoted(p)]
            if r.reason == RejectReason::Deceased && p.registration_id == id(4) && p.waiting == 0),
        "{then:?}"
    );
    assert_eq!(s.state.slots[&a].active(), 2);
    // Nobody waits any more: the next freed place stays free for the next newcomer.
    let then = s.when(cancel(3));
    assert!(matches!(
        &then[..],
        [Event::SlotReleased(_), Event::RegistrationCancelled(_)]
    ));
    assert!(matches!(
        &s.when(submitted(5, &a))[..],
        [Event::SlotReserved(_)]
    ));
}

#[test]
fn raising_capacity_promotes_as_many_as_it_adds() {
    let a = slot("a");
    let mut s = given_with(
        Policy {
            waitlist_per_slot: Some(5),
        },
        vec![
            capacity(&a, 1),
            submitted(1, &a),
            submitted(2, &a),
            submitted(3, &a),
            submitted(4, &a),
        ],
    );
    let then = s.when(capacity(&a, 3));
    let promoted: Vec<_> = then
        .iter()
        .map(|e| match e {
            Event::WaitlistPromoted(p) => p.registration_id.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(promoted, [id(2), id(3)]);
    assert_eq!(s.state.slots[&a].waiting(), 1);
}

#[test]
fn a_waiting_registration_that_cancels_leaves_the_line_and_frees_no_place() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a), submitted(2, &a)]);
    let then = s.when(cancel(2));
    assert!(
        matches!(&then[..], [Event::RegistrationCancelled(c)] if c.waiting == Some(0)),
        "{then:?}"
    );
    assert_eq!(s.state.slots[&a].active(), 1);
    assert_eq!(s.state.slots[&a].waiting(), 0);
}

#[test]
fn a_closed_waiting_list_rejects_those_waiting_and_takes_nobody_new() {
    let a = slot("a");
    let mut s = given_with(
        Policy {
            waitlist_per_slot: Some(5),
        },
        vec![
            capacity(&a, 1),
            submitted(1, &a),
            submitted(2, &a),
            submitted(3, &a),
        ],
    );
    let then = s.when(close(&a));
    let rejected: Vec<_> = then
        .iter()
        .map(|e| match e {
            Event::SlotRejected(r) if r.reason == RejectReason::WaitlistClosed => {
                (r.registration_id.clone(), r.waiting)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(rejected, [(id(2), Some(1)), (id(3), Some(0))]);
    assert!(
        matches!(&s.when(submitted(4, &a))[..], [Event::SlotRejected(r)] if r.reason == RejectReason::WaitlistClosed)
    );
    // Closing twice decides nothing.
    assert_eq!(s.when(close(&a)), vec![]);
}

#[test]
fn verification_confirms_or_rejects_once_and_manual_review_holds_the_place() {
    let a = slot("a");
    let mut s = given(vec![
        capacity(&a, 3),
        submitted(1, &a),
        submitted(2, &a),
        submitted(3, &a),
    ]);
    assert!(matches!(
        &s.when(passed(1))[..],
        [Event::RegistrationConfirmed(_)]
    ));
    // A second verdict (a redelivery, a late answer) changes nothing.
    assert_eq!(s.when(refused(1, RegistryRefusal::NotFound)), vec![]);
    assert_eq!(s.when(passed(1)), vec![]);
    let then = s.when(refused(2, RegistryRefusal::DataMismatch));
    assert!(
        matches!(&then[..], [Event::SlotReleased(r), Event::SlotRejected(j)]
        if r.reason == ReleaseReason::VerificationFailed && j.reason == RejectReason::DataMismatch),
        "{then:?}"
    );
    assert_eq!(s.when(passed(2)), vec![]);
    // The registry could not answer: review; the place stays held.
    assert!(matches!(&s.when(inconclusive(3))[..], [Event::ReviewRequired(r)] if r.attempts == 8));
    assert_eq!(s.when(inconclusive(3)), vec![]);
    assert_eq!(s.state.slots[&a].active(), 2);
    // An operator puts it back in the queue, then the registry answers.
    assert!(
        matches!(&s.when(requeue(3))[..], [Event::VerificationRequeued(r)] if r.submission_seq == 4)
    );
    assert_eq!(s.when(requeue(3)), vec![], "not in review any more");
    assert!(matches!(
        &s.when(inconclusive(3))[..],
        [Event::ReviewRequired(_)]
    ));
    // An operator approves.
    assert!(matches!(
        &s.when(passed(3))[..],
        [Event::RegistrationConfirmed(_)]
    ));
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
    // No waiting list, so each refusal is visible.
    let no_line = Policy {
        waitlist_per_slot: Some(0),
    };
    let mut s = given_with(
        no_line,
        vec![
            capacity(&a, 2),
            submitted(1, &a),
            submitted(2, &a),
            capacity(&a, 1),
        ],
    );
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
fn state_folded_from_the_decisions_equals_the_live_state() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 2)]);
    let mut log = Vec::new();
    for e in [
        submitted(1, &a),
        submitted(2, &a),
        submitted(3, &a),
        cancel(1),
        submitted(4, &a),
        submitted(5, &a),
        inconclusive(2),
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
    Pass(u32),
    Refuse(u32),
    Inconclusive(u32),
    Requeue(u32),
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..40, 0usize..3).prop_map(|(c, s)| Op::Submit(c, s)),
        2 => (0u32..40).prop_map(Op::Cancel),
        1 => (0usize..3, 0u32..6).prop_map(|(s, c)| Op::Capacity(s, c)),
        2 => (0usize..200).prop_map(Op::Redeliver),
        2 => (0u32..40).prop_map(Op::Pass),
        1 => (0u32..40).prop_map(Op::Refuse),
        1 => (0u32..40).prop_map(Op::Inconclusive),
        1 => (0u32..40).prop_map(Op::Requeue),
        1 => (0usize..30).prop_map(Op::Close),
    ]
}

/// The test's own model of one slot, kept from the decisions alone.
#[derive(Default)]
struct Books {
    capacity: u32,
    active: std::collections::BTreeSet<RegistrationId>,
    waiting: std::collections::BTreeMap<u64, RegistrationId>,
}

proptest! {
    /// Random interleavings of submissions, cancellations, capacity changes, verification
    /// verdicts (passed, refused, inconclusive, requeued), closed waiting lists and
    /// redeliveries, checked on the decision log against a model kept by the test:
    /// - never more active reservations than capacity at any point;
    /// - exactly one first decision per registration, at most one verification outcome;
    /// - a place is granted only to the earliest registration waiting (first come, first
    ///   served), and after every step no place is free while someone waits;
    /// - a waiting list never grows beyond its bound;
    /// - folding the decision log rebuilds the live state.
    #[test]
    fn random_interleavings_keep_every_invariant(
        ops in proptest::collection::vec(op(), 1..250),
        bound in proptest::option::of(0u32..4),
    ) {
        let slots = [slot("a"), slot("b"), slot("c")];
        let policy = Policy { waitlist_per_slot: bound };
        let mut s = given_with(policy, vec![capacity(&slots[0], 2), capacity(&slots[1], 1)]);
        let mut intake: Vec<Event> = Vec::new();
        let mut log: Vec<Event> = Vec::new();
        let mut books: std::collections::HashMap<SlotKey, Books> = Default::default();
        books.entry(slots[0].clone()).or_default().capacity = 2;
        books.entry(slots[1].clone()).or_default().capacity = 1;
        let mut first: std::collections::HashMap<RegistrationId, usize> = Default::default();
        let mut outcomes: std::collections::HashMap<RegistrationId, usize> = Default::default();
        let mut submitted_slot: std::collections::HashMap<u32, usize> = Default::default();
        let mut closes = Vec::new();
        for op in ops {
            let event = match op {
                Op::Submit(c, i) => {
                    // one submission per citizen id: a citizen's repeats are redeliveries
                    let i = *submitted_slot.entry(c).or_insert(i);
                    submitted(c, &slots[i])
                }
                Op::Cancel(c) => cancel(c),
                Op::Capacity(i, c) => capacity(&slots[i], c),
                Op::Redeliver(k) if !intake.is_empty() => intake[k % intake.len()].clone(),
                Op::Redeliver(_) => continue,
                Op::Pass(c) => passed(c),
                Op::Refuse(c) => refused(c, RegistryRefusal::NotFound),
                Op::Inconclusive(c) => inconclusive(c),
                Op::Requeue(c) => requeue(c),
                // rare: a closed list ends most of the interesting interleavings
                Op::Close(i) if i < 3 => close(&slots[i]),
                Op::Close(_) => continue,
            };
            if let Event::CapacitySet(set) = &event {
                books.entry(set.slot.clone()).or_default().capacity = set.capacity;
            }
            if let Event::WaitlistClosed(c) = &event {
                closes.push(c.slot.clone());
            }
            intake.push(event.clone());
            let seq = s.seq + 1;
            let decisions = s.when(event);
            for d in &decisions {
                match d {
                    Event::SlotReserved(r) => {
                        *first.entry(r.registration_id.clone()).or_default() += 1;
                        let b = books.entry(r.slot.clone()).or_default();
                        prop_assert!(b.waiting.is_empty(), "a newcomer jumped the line");
                        prop_assert!(b.active.insert(r.registration_id.clone()), "reserved twice");
                        prop_assert!(b.active.len() as u32 <= b.capacity, "overbooked {}", r.slot);
                        prop_assert_eq!(r.reserved as usize, b.active.len());
                    }
                    Event::RegistrationWaitlisted(w) => {
                        *first.entry(w.registration_id.clone()).or_default() += 1;
                        let b = books.entry(w.slot.clone()).or_default();
                        b.waiting.insert(w.intake_seq, w.registration_id.clone());
                        prop_assert!(b.waiting.len() as u32 <= bound.unwrap_or(b.capacity), "line beyond its bound");
                        prop_assert_eq!(w.position as usize, b.waiting.len());
                    }
                    Event::WaitlistPromoted(p) => {
                        let b = books.entry(p.slot.clone()).or_default();
                        let earliest = b.waiting.pop_first();
                        prop_assert_eq!(earliest, Some((p.submission_seq, p.registration_id.clone())), "not the earliest waiting");
                        prop_assert!(b.active.insert(p.registration_id.clone()));
                        prop_assert!(b.active.len() as u32 <= b.capacity, "overbooked {}", p.slot);
                        prop_assert_eq!(p.intake_seq, seq);
                    }
                    Event::SlotRejected(r) => {
                        let b = books.entry(r.slot.clone()).or_default();
                        match r.reason {
                            RejectReason::SlotFull | RejectReason::UnknownSlot => {
                                *first.entry(r.registration_id.clone()).or_default() += 1;
                            }
                            RejectReason::WaitlistClosed => {
                                let before = b.waiting.len();
                                b.waiting.retain(|_, id| id != &r.registration_id);
                                if before == b.waiting.len() {
                                    // a newcomer to a closed list: its first decision
                                    *first.entry(r.registration_id.clone()).or_default() += 1;
                                }
                            }
                            _ => *outcomes.entry(r.registration_id.clone()).or_default() += 1,
                        }
                        if r.reason == RejectReason::SlotFull {
                            prop_assert!(b.active.len() as u32 >= b.capacity, "rejected while room was left");
                        }
                    }
                    Event::RegistrationConfirmed(c) => {
                        *outcomes.entry(c.registration_id.clone()).or_default() += 1;
                    }
                    Event::SlotReleased(r) => {
                        prop_assert!(books.entry(r.slot.clone()).or_default().active.remove(&r.registration_id), "released a place not held");
                    }
                    Event::RegistrationCancelled(c) => {
                        books.entry(c.slot.clone()).or_default().waiting.retain(|_, id| id != &c.registration_id);
                    }
                    _ => {}
                }
            }
            for (slot, b) in &books {
                prop_assert!(
                    b.waiting.is_empty() || b.active.len() as u32 >= b.capacity,
                    "a place of {} is free while {} wait", slot, b.waiting.len()
                );
            }
            log.extend(decisions);
        }
        for (id, n) in &first {
            prop_assert_eq!(*n, 1, "{} got {} first decisions", id, n);
        }
        for (id, n) in &outcomes {
            prop_assert!(*n <= 1, "{} got {} verification outcomes", id, n);
        }
        let mut rebuilt = State::new(policy);
        for d in &log { rebuilt.apply(d); }
        for (slot, b) in &books { rebuilt.set_capacity(slot, b.capacity); }
        for slot in &closes { rebuilt.close_waitlist(slot); }
        prop_assert_eq!(&rebuilt.registrations, &s.state.registrations);
        for (slot, live) in &s.state.slots {
            let r = rebuilt.slots.get(slot);
            prop_assert_eq!(r.map(|s| (&s.holders, &s.waiting)), Some((&live.holders, &live.waiting)));
        }
    }
}

#[test]
fn a_recovery_request_issues_a_link_for_a_known_registration_only() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a)]);
    let recover = |n| {
        Event::RecoveryRequested(RecoveryRequested {
            registration_id: id(n),
        })
    };
    let then = s.when(recover(1));
    assert!(
        matches!(&then[..], [Event::RecoveryLinkIssued(r)] if r.submission_seq == 2 && r.intake_seq == 3),
        "{then:?}"
    );
    assert_eq!(s.when(recover(9)), vec![], "nobody to send it to");
    assert_eq!(s.state.checkpoint, 3);
}

/// The fold a rebuild does, from `base` (a snapshot's state, or an empty one): the decisions,
/// then the settings (capacities, closed lists) after `base`'s checkpoint and up to the
/// resulting one, as `rebuild::rebuild` reads them back from intake.
fn fold(mut base: State, decisions: &[Event], settings: &[(u64, Event)]) -> State {
    let after = base.checkpoint;
    for d in decisions {
        base.apply(d);
    }
    for (seq, event) in settings {
        if *seq <= after || *seq > base.checkpoint {
            continue;
        }
        match event {
            Event::CapacitySet(set) => base.set_capacity(&set.slot, set.capacity),
            Event::WaitlistClosed(closed) => base.close_waitlist(&closed.slot),
            _ => {}
        }
    }
    base
}

fn header(checkpoint: u64) -> super::snapshot::Header {
    super::snapshot::Header {
        version: super::snapshot::FORMAT_VERSION,
        region: Region::parse("mazowieckie").unwrap(),
        decision_seq: 42,
        decision_digest: [7; 32],
        checkpoint,
    }
}

proptest! {
    /// Snapshots are a shortcut, never a change: for random interleavings, whenever the
    /// decider would store a snapshot (after a step whose last event was decided, its
    /// checkpoint then being that event's sequence), the live state equals the fold of the log
    /// up to there; encoded and decoded it is the same state; and that decoded state with the
    /// rest of the log folded on top equals the fold of the whole log.
    #[test]
    fn a_snapshot_and_the_tail_fold_to_the_full_fold(
        ops in proptest::collection::vec(op(), 1..200),
        bound in proptest::option::of(0u32..4),
    ) {
        use super::snapshot::{decode, encode};
        let slots = [slot("a"), slot("b"), slot("c")];
        let policy = Policy { waitlist_per_slot: bound };
        let mut s = given_with(policy, vec![]);
        let mut intake: Vec<Event> = Vec::new();
        let mut log: Vec<Event> = Vec::new();
        let mut settings: Vec<(u64, Event)> = Vec::new();
        let mut snapshots: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut submitted_slot: std::collections::HashMap<u32, usize> = Default::default();
        for event in [capacity(&slots[0], 2), capacity(&slots[1], 1)] {
            settings.push((s.seq + 1, event.clone()));
            log.extend(s.when(event));
        }
        for op in ops {
            let event = match op {
                Op::Submit(c, i) => {
                    let i = *submitted_slot.entry(c).or_insert(i);
                    submitted(c, &slots[i])
                }
                Op::Cancel(c) => cancel(c),
                Op::Capacity(i, c) => capacity(&slots[i], c),
                Op::Redeliver(k) if !intake.is_empty() => intake[k % intake.len()].clone(),
                Op::Redeliver(_) => continue,
                Op::Pass(c) => passed(c),
                Op::Refuse(c) => refused(c, RegistryRefusal::Deceased),
                Op::Inconclusive(c) => inconclusive(c),
                Op::Requeue(c) => requeue(c),
                Op::Close(i) if i < 3 => close(&slots[i]),
                Op::Close(_) => continue,
            };
            if matches!(event, Event::CapacitySet(_) | Event::WaitlistClosed(_)) {
                settings.push((s.seq + 1, event.clone()));
            }
            intake.push(event.clone());
            let decisions = s.when(event);
            log.extend(decisions);
            if s.state.checkpoint == s.seq {
                let prefix = fold(State::new(policy), &log, &settings);
                prop_assert_eq!(&prefix, &s.state, "the live state is not the fold of its log");
                let bytes = encode(&header(s.state.checkpoint), &s.state);
                let (read, state) = decode(&bytes).expect("a snapshot decodes");
                prop_assert_eq!(read, header(s.state.checkpoint));
                prop_assert_eq!(&State { policy, ..state }, &s.state);
                snapshots.push((log.len(), bytes));
            }
        }
        let full = fold(State::new(policy), &log, &settings);
        for (at, bytes) in &snapshots {
            let (_, state) = decode(bytes).unwrap();
            let resumed = fold(State { policy, ..state }, &log[*at..], &settings);
            prop_assert_eq!(&resumed, &full, "snapshot after {} decisions + tail != full fold", at);
        }
    }
}

#[test]
fn a_corrupt_or_newer_snapshot_is_refused_never_misread() {
    use super::snapshot::{SnapshotError, decode, encode};
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1)]);
    for n in 1..=4 {
        s.when(submitted(n, &a));
    }
    s.when(cancel(1));
    let bytes = encode(&header(s.state.checkpoint), &s.state);
    assert_eq!(decode(&bytes).unwrap().1, State { ..s.state.clone() });
    // Every truncation is refused.
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "cut at {len} was accepted");
    }
    // Trailing bytes are refused.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode(&longer), Err(SnapshotError::Corrupt(_))));
    // A newer format is refused as such.
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&(super::snapshot::FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(decode(&newer), Err(SnapshotError::NewerFormat(_))));
    // Not a snapshot at all.
    assert!(matches!(decode(b"{\"json\":1}"), Err(SnapshotError::Magic)));
    // A flipped byte anywhere is refused or decodes to another state, never panics (the
    // object store's SHA-256 and the log check catch the rest).
    for i in 12..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x55;
        let _ = decode(&flipped);
    }
}

fn approved(n: u32) -> Event {
    Event::VerificationPassed(VerificationPassed {
        registration_id: id(n),
        reviewer: Some(Reviewer {
            operator: "op".into(),
            note: "checked by phone".into(),
        }),
    })
}

fn refused_by_operator(n: u32) -> Event {
    Event::VerificationFailed(VerificationFailed {
        registration_id: id(n),
        reason: RegistryRefusal::DataMismatch,
        reviewer: Some(Reviewer {
            operator: "op".into(),
            note: "papers do not match".into(),
        }),
    })
}

#[test]
fn an_operators_verdict_counts_only_while_the_registration_is_in_review() {
    let a = slot("a");
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a), submitted(2, &a)]);
    // 1 holds a place and waits for the registry; 2 waits in line.
    assert_eq!(s.when(approved(1)), vec![], "reserved, not in review");
    assert_eq!(
        s.when(refused_by_operator(1)),
        vec![],
        "reserved, not in review"
    );
    assert_eq!(s.when(approved(2)), vec![], "waiting, not in review");
    assert!(matches!(
        s.state.registrations[&id(1)].standing,
        super::decide::Standing::Reserved { .. }
    ));
    // In review, the operator decides.
    assert!(matches!(
        &s.when(inconclusive(1))[..],
        [Event::ReviewRequired(_)]
    ));
    assert!(matches!(
        &s.when(approved(1))[..],
        [Event::RegistrationConfirmed(_)]
    ));
    // Confirmed: neither an operator nor the registry changes it any more.
    assert_eq!(s.when(refused_by_operator(1)), vec![]);
    // The registry's own verdict still counts while reserved.
    let mut s = given(vec![capacity(&a, 1), submitted(1, &a)]);
    assert!(matches!(
        &s.when(passed(1))[..],
        [Event::RegistrationConfirmed(_)]
    ));
}

#[test]
fn a_step_cut_between_its_batches_is_recognised_and_finished_by_deciding_its_event_again() {
    let (a, b) = (slot("a"), slot("b"));
    let policy = Policy {
        waitlist_per_slot: Some(3_000),
    };
    let mut events = vec![capacity(&a, 0), capacity(&b, 0)];
    events.extend((1..=2_500).map(|n| submitted(n, &a)));
    events.extend((2_501..=5_000).map(|n| submitted(n, &b)));
    let mut s = given_with(policy, events);
    assert!(!s.state.unfinished_step());
    let before = s.state.clone();
    let raise = capacity(&a, 2_500);
    let promotions = s.when(raise.clone());
    assert_eq!(promotions.len(), 2_500);
    assert!(!s.state.unfinished_step(), "a whole step is finished");
    // A crash after the first batch of 1,000: the log holds those, and the capacity.
    let mut cut = before.clone();
    promotions[..1_000].iter().for_each(|d| cut.apply(d));
    cut.set_capacity(&a, 2_500);
    assert!(cut.unfinished_step());
    let seq = cut.checkpoint;
    assert_eq!(seq, s.seq, "the step's decisions all answer its event");
    let rest = cut.handle(&Input { seq, event: raise });
    assert_eq!(rest, promotions[1_000..].to_vec(), "the rest, none twice");
    assert!(!cut.unfinished_step());
    assert_eq!(cut, s.state);

    // The same for a long line closed.
    let closing = s.when(close(&b));
    assert_eq!(closing.len(), 2_500);
    let mut cut = s.state.clone();
    cut.slots.insert(b.clone(), before.slots[&b].clone());
    for n in 2_501..=5_000 {
        cut.registrations
            .insert(id(n), before.registrations[&id(n)].clone());
    }
    closing[..1_000].iter().for_each(|d| cut.apply(d));
    cut.close_waitlist(&b);
    assert!(cut.unfinished_step());
    let rest = cut.handle(&Input {
        seq: s.seq,
        event: close(&b),
    });
    assert_eq!(rest.len(), 1_500);
    assert!(!cut.unfinished_step());
    assert_eq!(cut.slots[&b], s.state.slots[&b]);
}

fn window(closes_at: &str) -> Event {
    let closes_at = chrono::DateTime::parse_from_rfc3339(closes_at)
        .unwrap()
        .with_timezone(&chrono::Utc);
    Event::WindowSet(WindowSet {
        region: Region::parse("mazowieckie").unwrap(),
        opens_at: closes_at - chrono::Duration::days(30),
        closes_at,
    })
}

fn window_closed(slot: &SlotKey, seen: &str) -> Event {
    Event::WaitlistClosed(WaitlistClosed {
        slot: slot.clone(),
        reason: CloseReason::WindowClosed,
        window_closes_at: Some(
            chrono::DateTime::parse_from_rfc3339(seen)
                .unwrap()
                .with_timezone(&chrono::Utc),
        ),
    })
}

#[test]
fn a_closing_judged_on_a_window_an_operator_had_extended_is_ignored() {
    let a = slot("a");
    let given_line = || {
        let policy = Policy {
            waitlist_per_slot: Some(5),
        };
        given_with(
            policy,
            vec![
                capacity(&a, 1),
                window("2027-02-20T20:00:00Z"),
                submitted(1, &a),
                submitted(2, &a),
            ],
        )
    };
    // The operator extended the window before the closer's closing reached the log.
    let mut s = given_line();
    assert_eq!(s.when(window("2027-02-27T20:00:00Z")), vec![]);
    assert_eq!(s.when(window_closed(&a, "2027-02-20T20:00:00Z")), vec![]);
    assert!(!s.state.slots[&a].closed, "the line stays open");
    assert!(matches!(
        &s.when(submitted(3, &a))[..],
        [Event::RegistrationWaitlisted(_)]
    ));
    // The same closing with no extension before it closes the line.
    let mut s = given_line();
    assert!(matches!(
        &s.when(window_closed(&a, "2027-02-20T20:00:00Z"))[..],
        [Event::SlotRejected(r)] if r.reason == RejectReason::WaitlistClosed
    ));
    // An extension after the closing opens nothing again.
    assert_eq!(s.when(window("2027-02-27T20:00:00Z")), vec![]);
    assert!(s.state.slots[&a].closed);
}
