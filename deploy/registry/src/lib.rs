//! A stand-in for the government registry the verification processor asks about each
//! citizen: SOAP-style XML over real HTTP (the contract is `docs/registry.md`).

#![forbid(unsafe_code)]

pub mod wire;

pub use wire::{HostileKind, RegistryResult, outcome_for};
