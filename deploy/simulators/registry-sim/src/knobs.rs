//! The simulator's knobs: how slow, flaky, limited and hostile the registry is.

use serde::{Deserialize, Serialize};

use crate::wire::HostileKind;

/// The longest delay a knob may ask for (10 minutes): anything longer is a mistake.
pub const MAX_DELAY_MS: u64 = 600_000;

/// How the simulated registry misbehaves. Changeable at runtime (`PUT /_sim/knobs` takes a
/// partial object). Defaults: 20 ms latency plus up to 30 ms jitter, nothing else.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Knobs {
    /// Base latency of every answered request, in milliseconds.
    pub latency_ms: u64,
    /// Uniform extra latency, `0..=jitter_ms` milliseconds.
    pub jitter_ms: u64,
    /// Probability (0..=1) that a request also waits `spike_ms`.
    pub spike_rate: f64,
    /// Length of a latency spike, in milliseconds.
    pub spike_ms: u64,
    /// Probability (0..=1) of an error: half of them `500` with a `soap:Server` fault, half a
    /// bare `500` with a text body.
    pub error_rate: f64,
    /// Requests per second accepted (a token bucket holding one second's worth); beyond it,
    /// `429` with `Retry-After: 1`. `0` turns the limit off.
    pub rate_limit_per_s: u32,
    /// Every request gets `503` with `Retry-After: 5`.
    pub outage: bool,
    /// Every error of `error_rate` is a `soap:Server` fault that echoes the request's personal
    /// data (name, national id, birth date), repeated to fill a 64 KiB answer, as a careless
    /// registry's diagnostics might: a client must keep none of it.
    pub fault_echo: bool,
    /// Probability (0..=1) of a hostile answer (HTTP 200), of a kind drawn from `hostile`.
    pub hostile_rate: f64,
    /// The hostile kinds to draw from (all by default).
    pub hostile: Vec<HostileKind>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency_ms: 20,
            jitter_ms: 30,
            spike_rate: 0.0,
            spike_ms: 2_000,
            error_rate: 0.0,
            rate_limit_per_s: 0,
            outage: false,
            fault_echo: false,
            hostile_rate: 0.0,
            hostile: HostileKind::ALL.to_vec(),
        }
    }
}

/// Why knobs were refused.
#[derive(Debug, thiserror::Error)]
pub enum KnobsError {
    /// Not a JSON object, not JSON, an unknown field, a value of the wrong type, or a
    /// probability outside 0..=1.
    #[error(transparent)]
    Refused(#[from] simkit::Refused),
    /// A delay longer than [`MAX_DELAY_MS`].
    #[error("{name} must be at most {MAX_DELAY_MS} ms, got {value}")]
    DelayTooLong {
        /// The knob.
        name: &'static str,
        /// Its value.
        value: u64,
    },
    /// Hostile answers asked for with no kind to draw from.
    #[error("hostile_rate is {0} but the hostile list is empty: name at least one kind")]
    NoHostileKinds(f64),
}

impl simkit::Knobs for Knobs {
    type Error = KnobsError;
    const EXAMPLE: &'static str = r#"{"error_rate": 0.1}"#;

    /// Checks every knob's range.
    fn validate(&self) -> Result<(), KnobsError> {
        simkit::probabilities([
            ("spike_rate", self.spike_rate),
            ("error_rate", self.error_rate),
            ("hostile_rate", self.hostile_rate),
        ])
        .map_err(simkit::Refused::from)?;
        for (name, value) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
            ("spike_ms", self.spike_ms),
        ] {
            if value > MAX_DELAY_MS {
                return Err(KnobsError::DelayTooLong { name, value });
            }
        }
        if self.hostile_rate > 0.0 && self.hostile.is_empty() {
            return Err(KnobsError::NoHostileKinds(self.hostile_rate));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simkit::Knobs as _;

    #[test]
    fn defaults_are_valid_and_quiet() {
        let knobs = Knobs::default();
        knobs.validate().unwrap();
        assert_eq!((knobs.latency_ms, knobs.jitter_ms), (20, 30));
        assert_eq!(knobs.spike_rate, 0.0);
        assert_eq!(knobs.error_rate, 0.0);
        assert_eq!(knobs.rate_limit_per_s, 0);
        assert!(!knobs.outage);
        assert!(!knobs.fault_echo);
        assert_eq!(knobs.hostile_rate, 0.0);
        assert_eq!(knobs.hostile, HostileKind::ALL);
    }

    #[test]
    fn a_partial_patch_changes_only_its_fields() {
        let knobs = Knobs::default()
            .patched_from_str(r#"{"error_rate": 0.5, "hostile": ["billion_laughs"]}"#)
            .unwrap();
        assert_eq!(knobs.error_rate, 0.5);
        assert_eq!(knobs.hostile, [HostileKind::BillionLaughs]);
        assert_eq!(knobs.latency_ms, 20);
        assert_eq!(
            Knobs::default().patched_from_str("{}").unwrap(),
            Knobs::default()
        );
    }

    #[test]
    fn knobs_deserialize_with_defaults_for_missing_fields() {
        let knobs: Knobs = serde_json::from_str(r#"{"outage": true}"#).unwrap();
        assert!(knobs.outage);
        assert_eq!(knobs.jitter_ms, 30);
    }

    #[test]
    fn bad_knobs_are_refused_with_a_clear_error() {
        let base = Knobs::default();
        let refuse = |json: &str| base.patched_from_str(json).unwrap_err().to_string();
        assert!(refuse(r#"{"error_rate": 1.5}"#).contains("error_rate is a probability"));
        assert!(refuse(r#"{"spike_rate": -0.1}"#).contains("spike_rate"));
        assert!(refuse(r#"{"hostile_rate": 2}"#).contains("hostile_rate"));
        assert!(refuse(r#"{"latency_ms": 600001}"#).contains("latency_ms must be at most"));
        assert!(refuse(r#"{"latency_ms": -1}"#).contains("invalid knobs"));
        assert!(refuse(r#"{"errror_rate": 0.1}"#).contains("unknown field `errror_rate`"));
        assert!(refuse(r#"{"hostile": ["rude"]}"#).contains("unknown variant `rude`"));
        assert!(refuse(r#"{"hostile_rate": 0.5, "hostile": []}"#).contains("hostile list"));
        assert!(refuse("[1]").contains("JSON object"));
        assert!(refuse("{").contains("invalid knobs"));
        // A hostile list may be empty while hostile answers are off.
        base.patched_from_str(r#"{"hostile": []}"#).unwrap();
        let nan = Knobs {
            error_rate: f64::NAN,
            ..Knobs::default()
        };
        assert!(nan.validate().is_err());
    }
}
