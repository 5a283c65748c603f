//! # processors: the consumers that decide
//!
//! One module per processor, each split into a pure step and its consumer wiring:
//!
//! | module | decides | reads | writes |
//! | --- | --- | --- | --- |
//! | [`reservation`] | reserved / waitlisted / promoted / rejected / released / in review / confirmed / cancelled | `REG_INTAKE` | `reg.decision.<region>.reservation` |
//! | [`verification`] | the registry's verdict on each registration that holds a place | reservation decisions, sealed submissions | `reg.intake.<region>.verification` |
//! | [`notification`] | one message per decision and channel, recorded; dead letters | reservation decisions, sealed submissions | `reg.decision.<region>.notification` |
//! | [`claims`] | releases a citizen's claim when their registration ends | reservation decisions | claim records (`reg.claim.<citizen key>`, intake stream) |
//! | [`waiting_room`] | how far each waiting room admits (one controller at a time) | the waiting-room bucket | the rooms' serving places |
//!
//! [`submission`] reads a sealed submission by sequence, [`retry`] is the back-off of the two
//! processors that call outside systems, [`metrics`] names every metric they export;
//! [`cli`] is the command line, [`settings`] what the process consumes, built from it, and
//! [`service`] starts everything and serves health and metrics.
#![forbid(unsafe_code)]

pub mod claims;
pub mod cli;
pub mod metrics;
pub mod notification;
pub mod reservation;
pub mod retry;
pub mod service;
pub mod settings;
pub mod submission;
pub mod verification;
pub mod waiting_room;
