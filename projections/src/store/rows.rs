//! The rows the store hands out: what the read API serves and what a dead letter holds.

use serde::{Deserialize, Serialize};
use streams::model::Status;

/// One slot's availability (`GET /v1/availability`), as the store lists them: ordered by
/// region, location and date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    /// The region token.
    pub region: String,
    /// The location token.
    pub location: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// Places in the slot (0 until an operator set a capacity).
    pub capacity: u64,
    /// Places not reserved (never below 0, even when a capacity was lowered under what is
    /// reserved).
    pub remaining: u64,
    /// Registrations waiting in line for a place.
    pub waiting: u64,
}

/// A registration as the projections have it, from its last decision: no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Its status (never `received`: a registration's row starts with its first decision).
    pub status: Status,
    /// Why, when rejected.
    pub reason: Option<String>,
    /// Its place in line while `waitlisted` (1 = next), counted from those waiting ahead.
    pub position: Option<u64>,
    /// The region token.
    pub region: String,
    /// The location token.
    pub location: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// When the last decision about it was made (RFC 3339).
    pub updated_at: String,
}

/// A registration waiting for an operator's decision (manual review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The registration.
    pub registration_id: String,
    /// The region token.
    pub region: String,
    /// The location token.
    pub location: String,
    /// The day, `YYYY-MM-DD`.
    pub date: String,
    /// When it went to manual review (RFC 3339).
    pub updated_at: String,
}

/// A message that could not be delivered (a dead letter), until a later delivery under its
/// notification id removes it: written by `NotificationFailed`, listed to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The notification id: the record's key and the provider's idempotency key.
    pub notification_id: String,
    /// The registration the message was about.
    pub registration_id: String,
    /// `email` or `webhook`.
    pub channel: String,
    /// Which message.
    pub template: String,
    /// The decisions-stream sequence of the decision the message tells of.
    pub decision_seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// What failed, as a short code (`smtp_550`, …); none in a projection built before codes
    /// existed.
    pub error_code: Option<String>,
    /// The fixed sentence of `error_code`, never the provider's own words.
    pub last_error: Option<String>,
    /// When the last attempt failed (RFC 3339).
    pub at: String,
}
