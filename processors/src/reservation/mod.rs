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
//! - **Snapshots.** The region's state is stored every [`SNAPSHOT_EVERY`] decisions (see
//!   [`snapshot`]) by a copy of it kept off the decider ([`shadow`]), so deciding never
//!   pauses for one; a replica taking a region over starts from the newest good one and folds
//!   only the decisions after it ([`rebuild`]).
//! - **Group commit.** Everything the consumer has buffered (up to [`MAX_INPUTS_PER_BATCH`]
//!   events) is decided and written in one durable write, or in as many atomic batches as
//!   its decisions need (at most 1,000 messages each), each fenced on the one before. A
//!   batch ends between two events' decisions; only one event's step larger than a batch (a
//!   capacity raised over a long line, a long line closed) is split, and a replica resuming
//!   after a crash between its batches decides that event again to finish it
//!   ([`decide::State::unfinished_step`]).
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`decide`] | the rule, pure: given the state folded from past decisions, when an intake event arrives, then these decisions |
//! | [`run`](mod@run) | the consumer wiring: a worker per region, holding its lease, rebuilding, writing fenced batches |
//! | [`rebuild`] | a region's state from the log, from the newest good snapshot; writing snapshots |
//! | [`snapshot`] | the snapshot's format and its checks against the log |
//! | [`shadow`] | the copy of a region's state, on a thread of its own, that takes the snapshots |
//! | [`closing`] | time as an event: closing waiting lists whose date passed or whose window closed |
//! | [`reviews`] | the bucket of registrations in manual review, a view the edge reads |

pub mod closing;
pub mod decide;
pub mod rebuild;
pub mod reviews;
mod run;
pub mod shadow;
pub mod snapshot;

pub use run::{ReservationConfig, SNAPSHOT_EVERY, run};

/// Most intake events decided per group. Most yield one to three decisions, so a group
/// usually fits one atomic batch (at most 1,000 messages); a larger group is written in
/// several.
pub const MAX_INPUTS_PER_BATCH: usize = 400;

#[cfg(test)]
mod tests;
