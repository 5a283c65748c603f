//! The reservation rule, pure: given the state folded from past decisions, when an intake
//! event arrives, then these decisions. No I/O, no clock; the consumer loop in
//! [`super::run`] feeds it and writes what it returns.
//!
//! Invariants this module keeps by construction:
//! - a slot never holds more active reservations than its capacity (a place is granted only
//!   while `active < capacity`; lowering capacity revokes nothing);
//! - a registration gets exactly one first decision (reserved, waitlisted or rejected) and at
//!   most one verification outcome, whatever number of times its events are seen;
//! - slots are granted in the order the intake stream accepted the submissions: a newcomer
//!   never takes a place while someone waits, and a released place goes to the earliest
//!   waiting registration;
//! - no place stays free while someone waits: every release and every capacity increase
//!   promotes from the waiting list in the same step.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use streams::events::{
    CancellationRequested, CapacitySet, CloseReason, Event, RecoveryLinkIssued, RecoveryRequested,
    RegistrationCancelled, RegistrationConfirmed, RegistrationSubmitted, RegistrationWaitlisted,
    RejectReason, ReleaseReason, ReviewRequeued, ReviewRequired, SlotRejected, SlotReleased,
    SlotReserved, VerificationFailed, VerificationInconclusive, VerificationPassed,
    VerificationRequeued, WaitlistClosed, WaitlistPromoted,
};
use streams::model::{RegistrationId, SlotKey};

/// The rule's settings. Part of the decisions, not of the log: a replica started with other
/// settings folds the same past, and decides the future with its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// How many registrations may wait for one slot; `None`: as many as its capacity.
    pub waitlist_per_slot: Option<u32>,
}

/// One slot's books: its capacity, the registrations holding it and those waiting for it,
/// each keyed by the intake sequence of their submission (their place in line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    /// `None` until an operator sets a capacity: submissions for it are rejected.
    pub capacity: Option<u32>,
    /// Active reservations by the intake sequence of the submission that won them.
    pub holders: BTreeMap<u64, RegistrationId>,
    /// Registrations waiting for a place, in acceptance order.
    pub waiting: BTreeMap<u64, RegistrationId>,
    /// The waiting list closed (date passed or window closed): nobody joins it any more.
    pub closed: bool,
}

impl Slot {
    /// Active reservations.
    pub fn active(&self) -> u32 {
        self.holders.len() as u32
    }

    /// Registrations waiting.
    pub fn waiting(&self) -> u32 {
        self.waiting.len() as u32
    }
}

/// Where a registration stands, as far as reservation is concerned. `seq` is always the
/// intake sequence of its submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Waits in line for a place.
    Waiting {
        /// Its place in line.
        seq: u64,
    },
    /// Holds a place; verification pending.
    Reserved {
        /// Its place in line.
        seq: u64,
    },
    /// Holds a place; the registry could not answer, an operator decides.
    Review {
        /// Its place in line.
        seq: u64,
    },
    /// Holds its place and is verified (terminal unless cancelled).
    Confirmed {
        /// Its place in line.
        seq: u64,
    },
    /// Got no place, or was refused (terminal).
    Rejected,
    /// Cancelled (terminal).
    Cancelled,
}

impl Standing {
    /// The place in line of a registration that holds a place.
    fn holding(self) -> Option<u64> {
        match self {
            Standing::Reserved { seq } | Standing::Review { seq } | Standing::Confirmed { seq } => {
                Some(seq)
            }
            _ => None,
        }
    }
}

/// What a registration is known as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of its submission, named in every decision about it.
    pub submission_seq: u64,
    /// The citizen's key, carried into terminal decisions so the citizen's claim is released.
    pub citizen_key: String,
    /// Its standing.
    pub standing: Standing,
}

/// Everything the rule needs, folded from the decisions log (and capacities from intake).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The rule's settings.
    pub policy: Policy,
    /// Books per slot.
    pub slots: HashMap<SlotKey, Slot>,
    /// Every registration that got a decision.
    pub registrations: HashMap<RegistrationId, Known>,
    /// The highest intake sequence any decision answered: where to resume reading intake.
    pub checkpoint: u64,
    /// When the region's window closes, as of the last operator's window read (in log
    /// order): a closing based on an earlier window is stale ([`WaitlistClosed`]).
    pub window_closes_at: Option<DateTime<Utc>>,
}

/// An intake event at its stream sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The intake stream sequence: the order of acceptance.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

impl State {
    /// An empty state deciding with `policy`.
    pub fn new(policy: Policy) -> Self {
        State {
            policy,
            ..State::default()
        }
    }

    /// Decides on one intake event, applying each decision to the state as it is taken, and
    /// returns the decisions in order. Events that need no decision (a repeated submission,
    /// an operator's window, a verdict for a registration that already has one) return none.
    pub fn handle(&mut self, input: &Input) -> Vec<Event> {
        let mut out = Decisions {
            state: self,
            events: Vec::new(),
        };
        out.decide(input);
        out.events
    }

    /// Folds one decision (taken by [`State::handle`] or read back from the log) into the
    /// state.
    pub fn apply(&mut self, decision: &Event) {
        match decision {
            Event::SlotReserved(d) => self.admit(
                &d.registration_id,
                &d.slot,
                &d.citizen_key,
                d.intake_seq,
                Admitted::Holder,
            ),
            Event::RegistrationWaitlisted(d) => self.admit(
                &d.registration_id,
                &d.slot,
                &d.citizen_key,
                d.intake_seq,
                Admitted::InLine,
            ),
            Event::WaitlistPromoted(d) => {
                let slot = self.slot(&d.slot);
                slot.waiting.remove(&d.submission_seq);
                slot.holders
                    .insert(d.submission_seq, d.registration_id.clone());
                self.restand(
                    &d.registration_id,
                    Standing::Reserved {
                        seq: d.submission_seq,
                    },
                );
                self.advance(d.intake_seq);
            }
            Event::SlotRejected(d) => {
                self.leave(&d.registration_id);
                if self.registrations.contains_key(&d.registration_id) {
                    self.restand(&d.registration_id, Standing::Rejected);
                } else {
                    // Its first decision: the submission is the event it answers.
                    self.know(
                        &d.registration_id,
                        &d.slot,
                        &d.citizen_key,
                        d.intake_seq,
                        Standing::Rejected,
                    );
                }
                self.advance(d.intake_seq);
            }
            Event::SlotReleased(d) => {
                if let Some(seq) = self
                    .registrations
                    .get(&d.registration_id)
                    .and_then(|k| k.standing.holding())
                {
                    self.slot(&d.slot).holders.remove(&seq);
                }
                self.advance(d.intake_seq);
            }
            Event::ReviewRequired(d) => {
                if let Some(Standing::Reserved { seq }) = self.standing(&d.registration_id) {
                    self.restand(&d.registration_id, Standing::Review { seq });
                }
                self.advance(d.intake_seq);
            }
            Event::VerificationRequeued(d) => {
                if let Some(Standing::Review { seq }) = self.standing(&d.registration_id) {
                    self.restand(&d.registration_id, Standing::Reserved { seq });
                }
                self.advance(d.intake_seq);
            }
            Event::RegistrationConfirmed(d) => {
                if let Some(Standing::Reserved { seq } | Standing::Review { seq }) =
                    self.standing(&d.registration_id)
                {
                    self.restand(&d.registration_id, Standing::Confirmed { seq });
                }
                self.advance(d.intake_seq);
            }
            Event::RecoveryLinkIssued(d) => self.advance(d.intake_seq),
            Event::RegistrationCancelled(d) => {
                self.leave(&d.registration_id);
                self.restand(&d.registration_id, Standing::Cancelled);
                self.advance(d.intake_seq);
            }
            _ => {}
        }
    }

    /// Applies an operator's capacity read back from intake during recovery.
    pub fn set_capacity(&mut self, slot: &SlotKey, capacity: u32) {
        self.slot(slot).capacity = Some(capacity);
    }

    /// Whether `closed` still holds in log order: a closing for a closed window counts only
    /// if no operator's window read before it closes later than the one the closer saw (an
    /// extension the closer was behind). A passed date always counts.
    pub fn closing_is_current(&self, closed: &WaitlistClosed) -> bool {
        match (
            closed.reason,
            closed.window_closes_at,
            self.window_closes_at,
        ) {
            (CloseReason::WindowClosed, Some(seen), Some(known)) => known <= seen,
            _ => true,
        }
    }

    /// Applies a closed waiting list read back from intake during recovery.
    pub fn close_waitlist(&mut self, slot: &SlotKey) {
        self.slot(slot).closed = true;
    }

    /// Whether `id` is in manual review (an operator's verdict counts only then).
    pub fn in_review(&self, id: &RegistrationId) -> bool {
        matches!(self.standing(id), Some(Standing::Review { .. }))
    }

    /// The registrations in manual review.
    pub fn in_review_ids(&self) -> impl Iterator<Item = &RegistrationId> {
        self.registrations
            .iter()
            .filter(|(_, k)| matches!(k.standing, Standing::Review { .. }))
            .map(|(id, _)| id)
    }

    /// Whether the last step was cut short: some slot has a free place while someone waits
    /// for one, or someone still waits in a closed line. Every whole step leaves neither
    /// (releases and raised capacities promote, closings reject, in the step that makes them
    /// due), so this holds only after a crash between two of the atomic batches of one step
    /// too large for one (a capacity raised over a long line, a long line closed). All of a
    /// step's decisions answer the same intake event, the checkpoint: deciding it again
    /// finishes the step (see `super::run`).
    pub fn unfinished_step(&self) -> bool {
        self.slots
            .values()
            .any(|s| !s.waiting.is_empty() && (s.closed || s.active() < s.capacity.unwrap_or(0)))
    }

    /// The slots whose waiting list is open and not empty: what a clock may have to close.
    pub fn open_waitlists(&self) -> impl Iterator<Item = &SlotKey> {
        self.slots
            .iter()
            .filter(|(_, s)| !s.closed && !s.waiting.is_empty())
            .map(|(k, _)| k)
    }

    fn slot(&mut self, slot: &SlotKey) -> &mut Slot {
        self.slots.entry(slot.clone()).or_default()
    }

    fn standing(&self, id: &RegistrationId) -> Option<Standing> {
        self.registrations.get(id).map(|k| k.standing)
    }

    /// Records a first decision that gives a place or a place in line to the submission at
    /// `seq`: the registration, its entry in the slot's books, the checkpoint.
    fn admit(
        &mut self,
        id: &RegistrationId,
        slot: &SlotKey,
        citizen_key: &str,
        seq: u64,
        admitted: Admitted,
    ) {
        let books = self.slot(slot);
        let standing = match admitted {
            Admitted::Holder => {
                books.holders.insert(seq, id.clone());
                Standing::Reserved { seq }
            }
            Admitted::InLine => {
                books.waiting.insert(seq, id.clone());
                Standing::Waiting { seq }
            }
        };
        self.know(id, slot, citizen_key, seq, standing);
        self.advance(seq);
    }

    fn know(
        &mut self,
        id: &RegistrationId,
        slot: &SlotKey,
        citizen_key: &str,
        submission_seq: u64,
        standing: Standing,
    ) {
        self.registrations.insert(
            id.clone(),
            Known {
                slot: slot.clone(),
                submission_seq,
                citizen_key: citizen_key.to_owned(),
                standing,
            },
        );
    }

    fn restand(&mut self, id: &RegistrationId, standing: Standing) {
        if let Some(known) = self.registrations.get_mut(id) {
            known.standing = standing;
        }
    }

    /// Takes a waiting registration out of its line (a no-op for any other standing).
    fn leave(&mut self, id: &RegistrationId) {
        if let Some(Known {
            slot,
            standing: Standing::Waiting { seq },
            ..
        }) = self.registrations.get(id)
        {
            let (slot, seq) = (slot.clone(), *seq);
            self.slot(&slot).waiting.remove(&seq);
        }
    }

    fn advance(&mut self, seq: u64) {
        self.checkpoint = self.checkpoint.max(seq);
    }

    /// How many may wait for `slot` under the policy.
    fn waitlist_bound(&self, slot: &Slot) -> u32 {
        self.policy
            .waitlist_per_slot
            .unwrap_or(slot.capacity.unwrap_or(0))
    }
}

/// Where a first decision puts a registration.
#[derive(Debug, Clone, Copy)]
enum Admitted {
    /// Among the slot's holders.
    Holder,
    /// In the slot's line.
    InLine,
}

/// The decisions of one step, each applied to the state as it is taken, so the next one
/// sees its effect (a release, then the promotion it makes possible).
struct Decisions<'a> {
    state: &'a mut State,
    events: Vec<Event>,
}

impl Decisions<'_> {
    fn take(&mut self, decision: Event) {
        self.state.apply(&decision);
        self.events.push(decision);
    }

    /// Sends the intake event to the step that answers its kind.
    fn decide(&mut self, input: &Input) {
        let seq = input.seq;
        match &input.event {
            Event::RegistrationSubmitted(sub) => self.place_newcomer(sub, seq),
            Event::CancellationRequested(CancellationRequested { registration_id }) => {
                self.cancel(registration_id, seq)
            }
            // Nobody is vaccinated anonymously: erasing a registration's personal data ends
            // it, as a cancellation would (an ended one stays as it ended).
            Event::ErasureRequested(erasure) => self.cancel(&erasure.registration_id, seq),
            Event::VerificationPassed(v) => self.confirm(v, seq),
            Event::VerificationFailed(v) => self.refuse_after_verification(v, seq),
            Event::VerificationInconclusive(v) => self.send_to_review(v, seq),
            Event::RecoveryRequested(r) => self.issue_recovery_link(r, seq),
            Event::ReviewRequeued(r) => self.requeue_for_verification(r, seq),
            Event::CapacitySet(CapacitySet { slot, capacity }) => {
                self.state.set_capacity(slot, *capacity);
                self.promote(slot, seq);
            }
            Event::WindowSet(window) => self.state.window_closes_at = Some(window.closes_at),
            Event::WaitlistClosed(closed) if !self.state.closing_is_current(closed) => {}
            Event::WaitlistClosed(WaitlistClosed { slot, .. }) => self.close_line(slot, seq),
            // Windows concern the edge only; decisions never arrive on intake (ignore rather
            // than crash on a stray message).
            _ => {}
        }
    }

    /// A submission's first decision: a place while one is free, else a place in line while
    /// the line is open and short enough, else a rejection saying why.
    fn place_newcomer(&mut self, sub: &RegistrationSubmitted, seq: u64) {
        if self.state.registrations.contains_key(&sub.registration_id) {
            return; // a redelivery or a retried append: decided already
        }
        let reject = |reason| {
            Event::SlotRejected(SlotRejected {
                registration_id: sub.registration_id.clone(),
                citizen_key: sub.citizen_key.clone(),
                slot: sub.slot.clone(),
                intake_seq: seq,
                reason,
                waiting: None,
                submission_seq: seq,
            })
        };
        let slot = self.state.slots.get(&sub.slot);
        let decision = match slot.and_then(|s| s.capacity.map(|c| (s, c))) {
            None => reject(RejectReason::UnknownSlot),
            // Nobody waits (a place is never free while someone does), so the
            // newcomer is next in line.
            Some((s, capacity)) if s.active() < capacity => Event::SlotReserved(SlotReserved {
                registration_id: sub.registration_id.clone(),
                citizen_key: sub.citizen_key.clone(),
                slot: sub.slot.clone(),
                intake_seq: seq,
                reserved: s.active() + 1,
                capacity,
            }),
            Some((s, _)) if s.closed => reject(RejectReason::WaitlistClosed),
            Some((s, _)) if s.waiting() < self.state.waitlist_bound(s) => {
                Event::RegistrationWaitlisted(RegistrationWaitlisted {
                    registration_id: sub.registration_id.clone(),
                    citizen_key: sub.citizen_key.clone(),
                    slot: sub.slot.clone(),
                    intake_seq: seq,
                    position: s.waiting() + 1,
                    waiting: s.waiting() + 1,
                })
            }
            Some(_) => reject(RejectReason::SlotFull),
        };
        self.take(decision);
    }

    /// A citizen's cancellation: out of the line, or the place released and given to the
    /// next in line. A registration already ended takes none.
    fn cancel(&mut self, registration_id: &RegistrationId, seq: u64) {
        let Some(known) = self.state.registrations.get(registration_id).cloned() else {
            return;
        };
        match known.standing {
            Standing::Waiting { .. } => {
                let waiting = self.state.slots[&known.slot].waiting() - 1;
                self.take(cancelled(registration_id, &known, seq, Some(waiting)));
            }
            Standing::Reserved { .. } | Standing::Review { .. } | Standing::Confirmed { .. } => {
                self.release(registration_id, &known.slot, seq, ReleaseReason::Cancelled);
                self.take(cancelled(registration_id, &known, seq, None));
                self.promote(&known.slot, seq);
            }
            Standing::Rejected | Standing::Cancelled => {}
        }
    }

    /// A passed verification confirms a registration that awaits its verdict.
    fn confirm(&mut self, v: &VerificationPassed, seq: u64) {
        if let Some(Known {
            slot,
            submission_seq,
            standing,
            ..
        }) = self.state.registrations.get(&v.registration_id)
            && awaits_verdict(*standing, v.reviewer.is_some())
        {
            let (slot, submission_seq) = (slot.clone(), *submission_seq);
            self.take(Event::RegistrationConfirmed(RegistrationConfirmed {
                registration_id: v.registration_id.clone(),
                slot,
                intake_seq: seq,
                submission_seq,
            }));
        }
    }

    /// A failed verification releases the place, rejects with the registry's (or the
    /// operator's) reason and gives the place to the next in line.
    fn refuse_after_verification(&mut self, v: &VerificationFailed, seq: u64) {
        if let Some(known) = self.state.registrations.get(&v.registration_id).cloned()
            && awaits_verdict(known.standing, v.reviewer.is_some())
        {
            let id = &v.registration_id;
            self.release(id, &known.slot, seq, ReleaseReason::VerificationFailed);
            self.take(Event::SlotRejected(SlotRejected {
                registration_id: id.clone(),
                citizen_key: known.citizen_key.clone(),
                slot: known.slot.clone(),
                intake_seq: seq,
                reason: v.reason.into(),
                waiting: None,
                submission_seq: known.submission_seq,
            }));
            self.promote(&known.slot, seq);
        }
    }

    /// An inconclusive verification puts a reserved registration in manual review; it keeps
    /// its place.
    fn send_to_review(&mut self, v: &VerificationInconclusive, seq: u64) {
        if let Some(Known {
            slot,
            submission_seq,
            standing: Standing::Reserved { .. },
            ..
        }) = self.state.registrations.get(&v.registration_id)
        {
            let (slot, submission_seq) = (slot.clone(), *submission_seq);
            // An old verdict's words came from the registry: not carried on.
            let (error_code, last_error) = streams::outside::shown(&v.error_code, &v.last_error);
            self.take(Event::ReviewRequired(ReviewRequired {
                registration_id: v.registration_id.clone(),
                slot,
                intake_seq: seq,
                attempts: v.attempts,
                last_error,
                error_code,
                submission_seq,
            }));
        }
    }

    /// A lost-link recovery for a known registration: a decision the notifier turns into a
    /// fresh status link.
    fn issue_recovery_link(&mut self, r: &RecoveryRequested, seq: u64) {
        if let Some(known) = self.state.registrations.get(&r.registration_id) {
            let (slot, submission_seq) = (known.slot.clone(), known.submission_seq);
            self.take(Event::RecoveryLinkIssued(RecoveryLinkIssued {
                registration_id: r.registration_id.clone(),
                slot,
                intake_seq: seq,
                submission_seq,
            }));
        }
    }

    /// An operator's requeue sends a registration in manual review back to the registry.
    fn requeue_for_verification(&mut self, r: &ReviewRequeued, seq: u64) {
        if let Some(Known {
            slot,
            standing: Standing::Review {
                seq: submission_seq,
            },
            ..
        }) = self.state.registrations.get(&r.registration_id)
        {
            let (slot, submission_seq) = (slot.clone(), *submission_seq);
            self.take(Event::VerificationRequeued(VerificationRequeued {
                registration_id: r.registration_id.clone(),
                slot,
                intake_seq: seq,
                submission_seq,
            }));
        }
    }

    /// Closes a slot's line and rejects everyone still in it, earliest first.
    fn close_line(&mut self, slot: &SlotKey, seq: u64) {
        self.state.close_waitlist(slot);
        let waiting: Vec<RegistrationId> = self
            .state
            .slots
            .get(slot)
            .map(|s| s.waiting.values().cloned().collect())
            .unwrap_or_default();
        let n = waiting.len();
        for (i, id) in waiting.iter().enumerate() {
            let known = &self.state.registrations[id];
            let (citizen_key, submission_seq) = (known.citizen_key.clone(), known.submission_seq);
            self.take(Event::SlotRejected(SlotRejected {
                registration_id: id.clone(),
                citizen_key,
                slot: slot.clone(),
                intake_seq: seq,
                reason: RejectReason::WaitlistClosed,
                waiting: Some((n - 1 - i) as u32),
                submission_seq,
            }));
        }
    }

    fn release(&mut self, id: &RegistrationId, slot: &SlotKey, seq: u64, reason: ReleaseReason) {
        let s = self.state.slots.get(slot);
        let active = s.map_or(0, Slot::active);
        let capacity = s.and_then(|s| s.capacity).unwrap_or(0);
        self.take(Event::SlotReleased(SlotReleased {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: seq,
            reason,
            reserved: active.saturating_sub(1),
            capacity,
        }));
    }

    /// Gives every free place of `slot` to the earliest waiting registrations.
    fn promote(&mut self, slot: &SlotKey, seq: u64) {
        loop {
            let Some(s) = self.state.slots.get(slot) else {
                return;
            };
            let capacity = s.capacity.unwrap_or(0);
            let Some((&submission_seq, id)) = s.waiting.first_key_value() else {
                return;
            };
            if s.active() >= capacity {
                return;
            }
            let decision = Event::WaitlistPromoted(WaitlistPromoted {
                registration_id: id.clone(),
                slot: slot.clone(),
                intake_seq: seq,
                submission_seq,
                reserved: s.active() + 1,
                capacity,
                waiting: s.waiting() - 1,
            });
            self.take(decision);
        }
    }
}

/// Whether a registration standing so takes a verdict: the registry's while it holds a
/// place unconfirmed (reserved, or in review when the answer comes late), an operator's only
/// while it is in manual review (an operator never overrides a pending registry check).
fn awaits_verdict(standing: Standing, from_an_operator: bool) -> bool {
    match standing {
        Standing::Review { .. } => true,
        Standing::Reserved { .. } => !from_an_operator,
        _ => false,
    }
}

fn cancelled(id: &RegistrationId, known: &Known, seq: u64, waiting: Option<u32>) -> Event {
    Event::RegistrationCancelled(RegistrationCancelled {
        registration_id: id.clone(),
        citizen_key: known.citizen_key.clone(),
        slot: known.slot.clone(),
        intake_seq: seq,
        waiting,
        submission_seq: known.submission_seq,
    })
}
