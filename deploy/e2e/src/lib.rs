//! End-to-end checks of the whole pipeline, and how tools start the services.
//!
//! - `tests/pipeline/`: the HTTP contract end to end, every service in one process (the
//!   verification tests serve the registry simulator in-process too).
//! - [`chaos`]: the chaos run (`deploy/chaos`, and a small one in the test suite): the
//!   services as separate processes, reservation replicas and nats-server killed while a
//!   load flows, every invariant checked from the log and the projection afterwards.
//! - [`serve`]: how the tools start the services as their own child processes.
//!
//! The benchmarks live in `deploy/benchmarks/` (package `bench`), outside the test suite:
//! `deploy/test` never builds them.
#![forbid(unsafe_code)]

pub mod chaos;
pub mod serve;
