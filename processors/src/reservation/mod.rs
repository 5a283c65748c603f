//! The reservation processor: turns intake events into reserved / rejected / released
//! decisions, never overbooking.
//!
//! Design (see `docs/reservation.md`):
//! - **The decision log is the state and the checkpoint.** On start, a replica folds the
//!   region's decisions (`reg.decision.<region>.reservation`) into a [`decide::State`], reads
//!   the operators' capacities from intake up to the state's checkpoint, then reads intake
//!   from the checkpoint on with an ordered consumer. No consumer acks are involved, so a
//!   redelivery cannot produce a second decision: the state already knows the registration.
//! - **Fenced writes.** Each batch of decisions is one atomic JetStream batch whose first
//!   message per region carries `Nats-Expected-Last-Subject-Sequence` = the last decision
//!   this replica has seen for that region. If another replica (or an older incarnation that
//!   was paused) wrote in between, the whole batch is refused and this replica rebuilds its
//!   state from the log. Two writers can never both extend the same history.
//! - **Snapshots.** The decider stores its state every [`SNAPSHOT_EVERY`] decisions (see
//!   [`snapshot`]); a replica taking a region over starts from the newest good one and folds
//!   only the decisions after it ([`rebuild`]).
//! - **Group commit.** Everything the consumer has buffered (up to [`MAX_INPUTS_PER_BATCH`]
//!   events) is decided and written in one durable write.

pub mod closing;
pub mod decide;
pub mod rebuild;
mod run;
pub mod snapshot;

pub use run::{ReservationConfig, SNAPSHOT_EVERY, run};

/// Most intake events decided per write: each yields at most two decisions, and an atomic
/// batch holds at most 1,000 messages.
pub const MAX_INPUTS_PER_BATCH: usize = 400;

#[cfg(test)]
mod tests;
