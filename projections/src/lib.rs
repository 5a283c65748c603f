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
//! | [`api`] | `GET /v1/availability`, `GET /v1/registrations/{id}`, health |
//! | [`metrics`] | Prometheus metrics |
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod metrics;
pub mod service;
pub mod smart;
pub mod store;
pub mod worker;
