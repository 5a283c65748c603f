//! The receivers' knobs: how often each transport fails on purpose.

use serde::{Deserialize, Serialize};

/// How the receivers misbehave, per transport. Changeable at runtime (`PUT /_sim/knobs`
/// takes a partial object). Defaults: nothing fails.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Probability (0..=1) that a DATA transaction of the SMTP sink ends with
    /// `451 4.3.0 temporary failure` and nothing is stored.
    pub smtp_fail_rate: f64,
    /// Probability (0..=1) that a `POST /webhook` gets `503` with `Retry-After: 1` and
    /// nothing is stored.
    pub webhook_fail_rate: f64,
}

/// Why knobs were refused: the only rule beside the patch's own is that every knob is a
/// probability.
pub type KnobsError = simkit::Refused;

impl simkit::Knobs for Knobs {
    type Error = KnobsError;
    const EXAMPLE: &'static str = r#"{"smtp_fail_rate": 0.1}"#;

    /// Checks every knob's range.
    fn validate(&self) -> Result<(), KnobsError> {
        simkit::probabilities([
            ("smtp_fail_rate", self.smtp_fail_rate),
            ("webhook_fail_rate", self.webhook_fail_rate),
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simkit::Knobs as _;

    #[test]
    fn defaults_fail_nothing() {
        let knobs = Knobs::default();
        knobs.validate().unwrap();
        assert_eq!(knobs.smtp_fail_rate, 0.0);
        assert_eq!(knobs.webhook_fail_rate, 0.0);
        assert_eq!(
            serde_json::to_value(&knobs).unwrap(),
            serde_json::json!({"smtp_fail_rate": 0.0, "webhook_fail_rate": 0.0})
        );
    }

    #[test]
    fn a_partial_patch_changes_only_its_fields() {
        let knobs = Knobs {
            webhook_fail_rate: 0.25,
            ..Knobs::default()
        }
        .patched_from_str(r#"{"smtp_fail_rate": 1}"#)
        .unwrap();
        assert_eq!(knobs.smtp_fail_rate, 1.0);
        assert_eq!(knobs.webhook_fail_rate, 0.25);
        assert_eq!(
            Knobs::default().patched_from_str("{}").unwrap(),
            Knobs::default()
        );
    }

    #[test]
    fn bad_knobs_are_refused_with_a_clear_error() {
        let base = Knobs::default();
        let refuse = |json: &str| base.patched_from_str(json).unwrap_err().to_string();
        assert!(refuse(r#"{"smtp_fail_rate": 1.5}"#).contains("smtp_fail_rate is a probability"));
        assert!(refuse(r#"{"webhook_fail_rate": -0.1}"#).contains("webhook_fail_rate"));
        assert!(refuse(r#"{"fail_rate": 0.1}"#).contains("unknown field `fail_rate`"));
        assert!(refuse(r#"{"smtp_fail_rate": "half"}"#).contains("invalid knobs"));
        assert!(refuse("[1]").contains("JSON object"));
        assert!(refuse("{").contains("invalid knobs"));
        let nan = Knobs {
            smtp_fail_rate: f64::NAN,
            ..Knobs::default()
        };
        assert!(nan.validate().is_err());
    }
}
