//! # streams: the contract of the registration pipeline
//!
//! Every service depends on this crate and on none of each other; they meet only through the
//! events defined here, on the subjects defined here, in the streams configured here.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`model`] | domain values: [`model::Region`], [`model::SlotKey`], [`model::RegistrationId`], [`model::Status`] |
//! | [`calendar`] | each region's time zone: when a slot's day is over |
//! | [`national_id`] | national id rules (PESEL) used by the edge and by the load generator |
//! | [`events`] | the event envelope and the past-tense events, with type and version |
//! | [`subjects`] | every subject, stream, bucket and consumer name, and the event types each subject carries |
//! | [`claims`] | the per-citizen claim record (one active registration per citizen) |
//! | [`accounts`] | one NATS identity per service and the permissions each needs |
//! | [`config`] | stream configurations and [`config::ensure_streams`] |
//! | [`consume`] | the one consumer loop every reader runs: supervision, groups, stalls on what it cannot decode |
//! | [`crypto`] | registration tokens, citizen keys and sealing of personal data |
//! | [`seals`] | each registration's own data key: reading it to open personal data, erasing it |
//! | [`lease`] | one active replica per piece of work, the others on standby |
//! | [`waiting_room`] | the opening minute's waiting room: signed tickets, places in line, the serving place and its pacing |
//! | [`regions`] | serving one region or every region present in the intake stream |
//! | [`appender`] | group commit: many events per durable JetStream write (atomic batches) |
//! | [`pack`] | packed records: many small records of one writer in one message, for records keyed by an id of their own |
//! | [`outside`] | failures of outside systems as events record them: a bounded code and a fixed sentence |
//! | [`http`] | the JSON error body, capped body reads, health and metrics responses |
//! | [`replay`] | reading a stream in order: recovery, projections, replays |
//! | [`runtime`] | connecting, telemetry, shutdown and metrics plumbing shared by every binary |
//! | [`scratch`] | a per-thread buffer for what is serialised only to be hashed, sealed or copied once |
//! | [`settings`] | the argument groups every service flattens into its command line (NATS, secrets, addresses, time zones, logs), secrets that never print |
#![forbid(unsafe_code)]

pub mod accounts;
pub mod appender;
pub mod calendar;
pub mod claims;
pub mod config;
pub mod consume;
pub mod crypto;
pub mod events;
pub mod http;
pub mod lease;
pub mod model;
pub mod national_id;
pub mod outside;
pub mod pack;
pub mod regions;
pub mod replay;
pub mod runtime;
pub mod scratch;
pub mod seals;
pub mod settings;
pub mod subjects;
pub mod waiting_room;
