//! # processors: the consumers that decide
//!
//! One module per processor, each split into a pure step and its consumer wiring:
//!
//! | module | decides | reads | writes |
//! | --- | --- | --- | --- |
//! | [`reservation`] | reserved / rejected / released / confirmed / cancelled | `REG_INTAKE` | `reg.decision.<region>.reservation` |
//! | [`claims`] | releases a citizen's claim when their registration ends | reservation decisions | claim records (`reg.claim.<citizen key>`, intake stream) |
//!
//! Verification (government registry) and notification processors join here later; they
//! append to intake (verification verdicts) and to the decisions stream (notifications).
//! So far [`verification`] holds the registry's wire codec ([`verification::xml`]).
#![forbid(unsafe_code)]

pub mod claims;
pub mod cli;
pub mod metrics;
pub mod notification;
pub mod reservation;
pub mod retry;
pub mod service;
pub mod submission;
pub mod verification;
