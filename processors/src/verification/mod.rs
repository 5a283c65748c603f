//! The verification processor: every registration that holds a place is checked against the
//! government registry (SOAP-style XML over HTTP, slow, flaky and rate-limited), and the
//! verdict is appended to intake for the reservation processor to turn into the
//! registration's one outcome: `confirmed`, `rejected` with the registry's reason, or
//! `manual_review` when the registry gives no usable answer within the bounds.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`xml`] | the registry's wire codec: requests, and strict, size-capped, namespace-checked answers |
//! | [`registry`] | the HTTP client and its typed errors (retryable or not) |
//! | [`breaker`] | the circuit breaker that stops calling a registry that is down |
//! | [`decide`] | the pure rules: what to verify, what a verdict becomes, when to retry or give up |
//! | [`run`](mod@run) | the consumer wiring: one durable consumer per region, acked only once the verdict is stored |

pub mod breaker;
pub mod decide;
pub mod registry;
mod run;
pub mod xml;

pub use run::{VerificationConfig, run};
