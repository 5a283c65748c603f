//! Local stand-ins for the two transports the notification processor sends over: an SMTP
//! sink (real SMTP over TCP) and a receiver of signed webhooks (HTTP), both idempotent by
//! notification id, with failure knobs changeable at runtime and counters a pipeline test
//! reads. The wire contract is `docs/notifications-receivers.md`.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use receivers::{Knobs, Receivers};
//! use tokio_util::sync::CancellationToken;
//!
//! let receivers = Receivers::new("./data".into(), Knobs::default(), "secret".to_owned())?;
//! let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(receivers.clone().serve(smtp, http, shutdown.clone()));
//! // ... deliver mail and webhooks, then read receivers.counts() ...
//! shutdown.cancel();
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod counts;
mod knobs;
mod receivers;
pub mod smtp;
mod store;
mod webhook;
pub mod wire;

pub use counts::{Counts, NotificationCounts, TransportCounts};
pub use knobs::{Knobs, KnobsError};
pub use receivers::Receivers;
pub use store::MailStore;
pub use webhook::MAX_WEBHOOK_BODY_BYTES;
pub use wire::{sign, verify};

/// The knob accessors (`knobs`, `set_knobs`, `patch_knobs`) of [`Receivers`]: bring it into
/// scope to use them.
pub use simkit::Simulator;

/// The webhook secret for development and tests (`REG_WEBHOOK_SECRET` overrides it).
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = "dev-webhook-secret";
