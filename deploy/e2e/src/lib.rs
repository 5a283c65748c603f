//! End-to-end checks of the whole pipeline.
//!
//! - `tests/pipeline/`: the HTTP contract end to end, every service in one process.
//! - [`chaos`]: the chaos run (`deploy/chaos`, and a small one in the test suite): the
//!   services as separate processes, reservation replicas and nats-server killed while a
//!   load flows, every invariant checked from the log and the projection afterwards.
#![forbid(unsafe_code)]

pub mod chaos;
