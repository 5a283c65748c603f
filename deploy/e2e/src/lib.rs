//! End-to-end checks of the whole pipeline.
//!
//! - `tests/pipeline/`: the HTTP contract end to end, every service in one process.
//! - [`chaos`]: the chaos run (`deploy/chaos`, and a small one in the test suite): the
//!   services as separate processes, reservation replicas and nats-server killed while a
//!   load flows, every invariant checked from the log and the projection afterwards.
//! - [`contention`]: the contention benchmark (`deploy/bench-contention`), this project's
//!   reservation design against the seed's Redis `WATCH`/`MULTI` design.
//! - [`ceilings`]: JetStream's and the disk's durable write ceilings (`deploy/bench`), the
//!   figures every throughput claim is set beside.
//! - [`edge`]: the ingest edge end to end against a bare ntex handler (`deploy/bench edge`).
//! - [`serve`]: how both tools start the services as their own child processes.
#![forbid(unsafe_code)]

pub mod ceilings;
pub mod chaos;
pub mod contention;
pub mod edge;
pub mod serve;
