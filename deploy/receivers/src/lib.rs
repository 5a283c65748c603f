//! Local stand-ins for the two transports the notification processor sends over: an SMTP
//! sink (real SMTP over TCP) and a receiver of signed webhooks (HTTP), both idempotent by
//! notification id, with failure knobs changeable at runtime and counters a pipeline test
//! reads. The wire contract is `docs/notifications-receivers.md`.

#![forbid(unsafe_code)]

mod knobs;
pub mod wire;

pub use knobs::{Knobs, KnobsError};
pub use wire::{sign, verify};

/// The webhook secret for development and tests (`REG_WEBHOOK_SECRET` overrides it).
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = "dev-webhook-secret";
