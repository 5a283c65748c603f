//! # ingest: the citizens' and operators' write edge
//!
//! Stateless ntex service: it validates each request ([`validate`]), claims the citizen
//! ([`claims`]), appends the event to the intake stream through group commit
//! ([`streams::appender`]) and answers `202` only once JetStream durably acknowledged it.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`service`] | start-up: [`service::run`] takes its listener and shutdown signal |
//! | [`routes`] | the handlers of the HTTP contract |
//! | [`page`] | the citizens' page (`ingest/page/`), served at `/` |
//! | [`error`] | the one error type, which maps itself to status, code, field and `Retry-After` |
//! | [`validate`] | request bodies parsed into valid values, or a field error |
//! | [`claims`] | one registration per citizen, idempotency |
//! | [`recovery`] | lost-link recovery: answered at once, looked up and appended by a worker |
//! | [`windows`] | registration windows folded from the log |
//! | [`cli`] | the command line: every flag and its `REG_*` variable |
//! | [`settings`] | what the service consumes, built from the command line |
//! | [`metrics`] | Prometheus metrics |
#![forbid(unsafe_code)]

pub mod claims;
pub mod cli;
pub mod error;
pub mod metrics;
pub mod page;
pub mod recovery;
pub mod routes;
pub mod service;
pub mod settings;
pub mod validate;
pub mod waiting_room;
pub mod windows;
