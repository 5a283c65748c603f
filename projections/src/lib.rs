//! # projections: the read side
//!
//! Workers fold the intake and decision streams into SurrealDB; the read API serves
//! availability from a moka cache and each registration's status.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`service`] | start-up: [`service::run`] takes its listener and shutdown signal |
//! | [`cli`], [`settings`] | the command line (every flag and its `REG_*` variable), and what the service consumes, built from it |
//! | [`worker`] | one ordered consumer per stream, batches applied with their checkpoint |
//! | [`store`] | SurrealDB: the schema, the pure mapping from events to writes, a batch and its checkpoint in one transaction, typed reads |
//! | [`rebuild`] | every projection rebuilt from the log beside the live one, and compared |
//! | [`slots`] | the availability table the read API answers from: loaded whole once, then by the slots changed |
//! | [`api`] | the read API's routes: availability (cached), status, operators' lists, rebuilds, health |
//! | [`error`] | [`error::ReadError`]: every error of the read API's own routes, in the contract's shape |
//! | [`smart`] | SMART Scheduling Links: availability as FHIR files for vaccine finders |
//! | [`cors`] | cross-origin reads for the citizens' page |
//! | [`metrics`] | Prometheus metrics |
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod cors;
pub mod error;
pub mod metrics;
pub mod rebuild;
pub mod service;
pub mod settings;
pub mod slots;
pub mod smart;
pub mod store;
pub mod worker;
