//! # projections: the read side
//!
//! Workers fold the intake and decision streams into SurrealDB; the read API serves
//! availability from a moka cache and each registration's status.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`service`] | start-up: [`service::run`] takes its listener and shutdown signal |
//! | [`worker`] | one ordered consumer per stream, batches applied with their checkpoint |
//! | [`store`] | the SurrealDB schema, batched idempotent writes, reads |
//! | [`rebuild`] | every projection rebuilt from the log beside the live one, and compared |
//! | [`api`] | `GET /v1/availability`, `GET /v1/registrations/{id}`, health |
//! | [`cors`] | cross-origin reads for the citizens' page |
//! | [`metrics`] | Prometheus metrics |
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod cors;
pub mod metrics;
pub mod rebuild;
pub mod service;
pub mod smart;
pub mod store;
pub mod worker;
