//! The notification processor: every decision a citizen should hear of becomes a message
//! on each channel their contact data allow (e-mail over SMTP, a signed webhook to a
//! text-message gateway), delivered once per (registration, decision, channel).
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`decide`] | the pure rules: what is told, on which channel, under which id, in which words |
//! | [`transport`] | e-mail over SMTP and the signed webhook, each failure retryable or not |
//! | [`run`](mod@run) | the consumer wiring: one durable consumer per region, deliveries recorded, failures retried then dead-lettered |

pub mod decide;
mod run;
pub mod transport;

pub use run::{DEVELOPMENT_WEBHOOK_SECRET, NotificationConfig, run};
