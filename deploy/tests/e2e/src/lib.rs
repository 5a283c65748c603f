//! End-to-end checks of the whole pipeline, and how tools start the services.
//!
//! - `tests/pipeline/`: the HTTP contract end to end, every service in one process (the
//!   verification tests serve the registry simulator in-process too).
//! - [`chaos`]: the chaos run (`deploy/chaos`, and a small one in the test suite): the
//!   services as separate processes, reservation replicas and nats-server killed while a
//!   load flows, every invariant checked from the log and the projection afterwards.
//! - [`failover`]: the failover run (`deploy/failover`, and a small one in the test suite):
//!   the same services and checks on a three-node JetStream cluster, the intake stream's
//!   leader node SIGKILLed and restarted under load, every `503` set beside the times the
//!   stream had no leader.
//! - [`serve`]: how the tools start the services as their own child processes.
//!
//! The benchmarks live in `deploy/benchmarks/` (package `bench`), outside the test suite:
//! `deploy/test` never builds them.
#![forbid(unsafe_code)]

pub mod chaos;
pub mod failover;
pub mod serve;
