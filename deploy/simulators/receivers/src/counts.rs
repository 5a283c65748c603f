//! What the receivers were sent and what they did with it: a pipeline test reads these to
//! show every citizen was told once, and that retries explain every extra attempt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Deliveries since the start, per transport (`GET /_sim/counts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// The SMTP sink: one delivery is one DATA transaction (a message sent in full).
    pub smtp: TransportCounts,
    /// The webhook receiver: one delivery is one `POST /webhook`.
    pub webhook: TransportCounts,
}

/// One transport's deliveries, by outcome and by notification id.
///
/// Every delivery has exactly one outcome, so [`TransportCounts::deliveries`] is the sum of
/// the four.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportCounts {
    /// Stored: the first delivery of a notification id.
    pub accepted: u64,
    /// Acknowledged but not stored again: the notification id was already stored.
    pub duplicates: u64,
    /// Refused for good: a missing or invalid id header, a bad signature, a stale timestamp,
    /// a body that is not JSON, a message over the size or line-length limit.
    pub refused: u64,
    /// Failed on purpose by the transport's fail-rate knob (SMTP `451`, webhook `503`).
    pub failed_by_knob: u64,
    /// Per notification id, for every delivery that named one (whatever its outcome).
    pub by_notification_id: BTreeMap<String, NotificationCounts>,
}

/// What one notification id got on one transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationCounts {
    /// Deliveries that named this id, whatever their outcome.
    pub attempts: u64,
    /// Whether a delivery of this id is stored (by this run, or found in the data directory
    /// when the receivers started).
    pub stored: bool,
}

impl TransportCounts {
    /// Every delivery: the sum of the four outcomes.
    pub fn deliveries(&self) -> u64 {
        self.accepted + self.duplicates + self.refused + self.failed_by_knob
    }

    /// The counts of one notification id (zeros for an id never seen).
    pub fn for_id(&self, notification_id: &str) -> NotificationCounts {
        self.by_notification_id
            .get(notification_id)
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn record(&mut self, notification_id: Option<&str>, outcome: Outcome) {
        match outcome {
            Outcome::Accepted => self.accepted += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::FailedByKnob => self.failed_by_knob += 1,
        }
        if let Some(id) = notification_id {
            let entry = self.by_notification_id.entry(id.to_owned()).or_default();
            entry.attempts += 1;
            if matches!(outcome, Outcome::Accepted | Outcome::Duplicate) {
                entry.stored = true;
            }
        }
    }
}

/// How one delivery ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Duplicate,
    Refused,
    FailedByKnob,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_add_up_and_ids_remember_attempts() {
        let mut counts = TransportCounts::default();
        counts.record(Some("n-1"), Outcome::FailedByKnob);
        assert_eq!(
            counts.for_id("n-1"),
            NotificationCounts {
                attempts: 1,
                stored: false
            }
        );
        counts.record(Some("n-1"), Outcome::Accepted);
        counts.record(Some("n-1"), Outcome::Duplicate);
        counts.record(Some("n-2"), Outcome::Refused);
        counts.record(None, Outcome::Refused);
        assert_eq!(counts.deliveries(), 5);
        assert_eq!(
            (
                counts.accepted,
                counts.duplicates,
                counts.refused,
                counts.failed_by_knob
            ),
            (1, 1, 2, 1)
        );
        assert_eq!(
            counts.for_id("n-1"),
            NotificationCounts {
                attempts: 3,
                stored: true
            }
        );
        assert!(!counts.for_id("n-2").stored);
        assert_eq!(counts.for_id("never"), NotificationCounts::default());
    }
}
