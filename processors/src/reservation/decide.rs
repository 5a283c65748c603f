//! The reservation rule, pure: given the state folded from past decisions, when an intake
//! event arrives, then these decisions. No I/O, no clock; the consumer loop in
//! [`super::run`] feeds it and writes what it returns.
//!
//! Invariants this module keeps by construction:
//! - a slot never holds more active reservations than its capacity (a reservation is granted
//!   only while `active < capacity`; lowering capacity revokes nothing);
//! - a registration gets exactly one first decision (reserved or rejected), whatever number
//!   of times its submission is seen;
//! - slots are granted in the order the intake stream accepted the submissions, because the
//!   caller feeds events in stream order and nothing here reorders them.

use std::collections::{BTreeMap, HashMap};

use streams::events::{
    CancellationRequested, Event, RegistrationCancelled, RegistrationConfirmed, RejectReason,
    ReleaseReason, SlotRejected, SlotReleased, SlotReserved,
};
use streams::model::{RegistrationId, SlotKey};

/// One slot's books: its capacity and the registrations holding it, in the order they were
/// granted (keyed by the intake sequence of their submission). An ordered map rather than a
/// counter, so a waiting list can be added beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    /// `None` until an operator sets a capacity: submissions for it are rejected.
    pub capacity: Option<u32>,
    /// Active reservations by the intake sequence of the submission that won them.
    pub holders: BTreeMap<u64, RegistrationId>,
}

impl Slot {
    /// Active reservations.
    pub fn active(&self) -> u32 {
        self.holders.len() as u32
    }
}

/// Where a registration stands, as far as reservation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Holds a slot; `verified` once the registry confirmed the citizen.
    Reserved {
        /// The submission's intake sequence (its place in line).
        seq: u64,
    },
    /// Holds a slot and is verified.
    Confirmed {
        /// The submission's intake sequence.
        seq: u64,
    },
    /// Got no slot (terminal).
    Rejected,
    /// Cancelled (terminal).
    Cancelled,
}

/// What a registration is known as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its slot.
    pub slot: SlotKey,
    /// The citizen's key, carried into terminal decisions so the citizen's claim is released.
    pub citizen_key: String,
    /// Its standing.
    pub standing: Standing,
}

/// Everything the rule needs, folded from the decisions log (and capacities from intake).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Books per slot.
    pub slots: HashMap<SlotKey, Slot>,
    /// Every registration that got a decision.
    pub registrations: HashMap<RegistrationId, Known>,
    /// The highest intake sequence any decision answered: where to resume reading intake.
    pub checkpoint: u64,
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
    /// Decides on one intake event and applies the decisions to the state. Events that need
    /// no decision (a repeated submission, an operator's window) return nothing.
    pub fn handle(&mut self, input: &Input) -> Vec<Event> {
        let decisions = self.decide(input);
        for decision in &decisions {
            self.apply(decision);
        }
        if let Event::CapacitySet(set) = &input.event {
            self.slots.entry(set.slot.clone()).or_default().capacity = Some(set.capacity);
        }
        decisions
    }

    /// The decisions for `input`, without changing the state.
    pub fn decide(&self, input: &Input) -> Vec<Event> {
        let seq = input.seq;
        match &input.event {
            Event::RegistrationSubmitted(sub) => {
                if self.registrations.contains_key(&sub.registration_id) {
                    return Vec::new(); // a redelivery or a retried append: decided already
                }
                let slot = self.slots.get(&sub.slot);
                let decision = match slot.and_then(|s| s.capacity.map(|c| (s, c))) {
                    None => Event::SlotRejected(SlotRejected {
                        registration_id: sub.registration_id.clone(),
                        citizen_key: sub.citizen_key.clone(),
                        slot: sub.slot.clone(),
                        intake_seq: seq,
                        reason: RejectReason::UnknownSlot,
                    }),
                    Some((s, capacity)) if s.active() < capacity => {
                        Event::SlotReserved(SlotReserved {
                            registration_id: sub.registration_id.clone(),
                            citizen_key: sub.citizen_key.clone(),
                            slot: sub.slot.clone(),
                            intake_seq: seq,
                            reserved: s.active() + 1,
                            capacity,
                        })
                    }
                    Some(_) => Event::SlotRejected(SlotRejected {
                        registration_id: sub.registration_id.clone(),
                        citizen_key: sub.citizen_key.clone(),
                        slot: sub.slot.clone(),
                        intake_seq: seq,
                        reason: RejectReason::SlotFull,
                    }),
                };
                vec![decision]
            }
            Event::CancellationRequested(CancellationRequested { registration_id }) => {
                let Some(known) = self.registrations.get(registration_id) else {
                    return Vec::new();
                };
                match known.standing {
                    Standing::Reserved { .. } | Standing::Confirmed { .. } => {
                        let (reserved, capacity) = self.after_release(&known.slot);
                        vec![
                            Event::SlotReleased(SlotReleased {
                                registration_id: registration_id.clone(),
                                slot: known.slot.clone(),
                                intake_seq: seq,
                                reason: ReleaseReason::Cancelled,
                                reserved,
                                capacity,
                            }),
                            Event::RegistrationCancelled(RegistrationCancelled {
                                registration_id: registration_id.clone(),
                                citizen_key: known.citizen_key.clone(),
                                slot: known.slot.clone(),
                                intake_seq: seq,
                            }),
                        ]
                    }
                    Standing::Rejected | Standing::Cancelled => Vec::new(),
                }
            }
            Event::VerificationPassed(v) => match self.registrations.get(&v.registration_id) {
                Some(Known {
                    slot,
                    standing: Standing::Reserved { .. },
                    ..
                }) => vec![Event::RegistrationConfirmed(RegistrationConfirmed {
                    registration_id: v.registration_id.clone(),
                    slot: slot.clone(),
                    intake_seq: seq,
                })],
                _ => Vec::new(),
            },
            Event::VerificationFailed(v) => match self.registrations.get(&v.registration_id) {
                Some(Known {
                    slot,
                    citizen_key,
                    standing: Standing::Reserved { .. } | Standing::Confirmed { .. },
                }) => {
                    let (reserved, capacity) = self.after_release(slot);
                    vec![
                        Event::SlotReleased(SlotReleased {
                            registration_id: v.registration_id.clone(),
                            slot: slot.clone(),
                            intake_seq: seq,
                            reason: ReleaseReason::VerificationFailed,
                            reserved,
                            capacity,
                        }),
                        Event::SlotRejected(SlotRejected {
                            registration_id: v.registration_id.clone(),
                            citizen_key: citizen_key.clone(),
                            slot: slot.clone(),
                            intake_seq: seq,
                            reason: RejectReason::VerificationFailed,
                        }),
                    ]
                }
                _ => Vec::new(),
            },
            // Capacity is applied by `handle`; windows concern the edge only.
            Event::CapacitySet(_) | Event::WindowSet(_) => Vec::new(),
            // Decisions never arrive on intake; ignore rather than crash on a stray message.
            _ => Vec::new(),
        }
    }

    fn after_release(&self, slot: &SlotKey) -> (u32, u32) {
        let s = self.slots.get(slot);
        let active = s.map_or(0, Slot::active);
        let capacity = s.and_then(|s| s.capacity).unwrap_or(0);
        (active.saturating_sub(1), capacity)
    }

    /// Folds one decision (from [`State::decide`] or read back from the log) into the state.
    pub fn apply(&mut self, decision: &Event) {
        match decision {
            Event::SlotReserved(d) => {
                let slot = self.slots.entry(d.slot.clone()).or_default();
                slot.holders.insert(d.intake_seq, d.registration_id.clone());
                self.registrations.insert(
                    d.registration_id.clone(),
                    Known {
                        slot: d.slot.clone(),
                        citizen_key: d.citizen_key.clone(),
                        standing: Standing::Reserved { seq: d.intake_seq },
                    },
                );
                self.checkpoint = self.checkpoint.max(d.intake_seq);
            }
            Event::SlotRejected(d) => {
                self.registrations
                    .entry(d.registration_id.clone())
                    .and_modify(|k| k.standing = Standing::Rejected)
                    .or_insert(Known {
                        slot: d.slot.clone(),
                        citizen_key: d.citizen_key.clone(),
                        standing: Standing::Rejected,
                    });
                self.checkpoint = self.checkpoint.max(d.intake_seq);
            }
            Event::SlotReleased(d) => {
                if let Some(Known {
                    standing: Standing::Reserved { seq } | Standing::Confirmed { seq },
                    ..
                }) = self.registrations.get(&d.registration_id)
                    && let Some(slot) = self.slots.get_mut(&d.slot)
                {
                    slot.holders.remove(seq);
                }
                self.checkpoint = self.checkpoint.max(d.intake_seq);
            }
            Event::RegistrationConfirmed(d) => {
                if let Some(known) = self.registrations.get_mut(&d.registration_id)
                    && let Standing::Reserved { seq } = known.standing
                {
                    known.standing = Standing::Confirmed { seq };
                }
                self.checkpoint = self.checkpoint.max(d.intake_seq);
            }
            Event::RegistrationCancelled(d) => {
                if let Some(known) = self.registrations.get_mut(&d.registration_id) {
                    known.standing = Standing::Cancelled;
                }
                self.checkpoint = self.checkpoint.max(d.intake_seq);
            }
            _ => {}
        }
    }

    /// Applies an operator's capacity read back from intake during recovery.
    pub fn set_capacity(&mut self, slot: &SlotKey, capacity: u32) {
        self.slots.entry(slot.clone()).or_default().capacity = Some(capacity);
    }
}
