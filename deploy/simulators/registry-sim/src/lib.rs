//! A stand-in for the government registry the verification processor asks about each
//! citizen: SOAP-style XML over real HTTP (the contract is `docs/registry.md`), slow, flaky,
//! rate-limited and, on demand, hostile, with knobs changeable at runtime and counters a
//! pipeline test reads.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use registry_sim::{Knobs, Registry, Simulator as _};
//! use tokio_util::sync::CancellationToken;
//!
//! let registry = Registry::new(Knobs::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = CancellationToken::new();
//! tokio::spawn(registry.clone().serve(listener, shutdown.clone()));
//! // ... POST /registry/v1/verify, then read registry.counts() ...
//! shutdown.cancel();
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod counts;
mod knobs;
mod server;
pub mod wire;

pub use counts::{Answered, Counts, IdCounts};
pub use knobs::{Knobs, KnobsError, MAX_DELAY_MS};
pub use server::{BARE_ERROR_BODY, Registry};
pub use wire::{HostileKind, RegistryResult, outcome_for};

/// The knob accessors (`knobs`, `set_knobs`, `patch_knobs`) of [`Registry`]: bring it into
/// scope to use them.
pub use simkit::Simulator;
