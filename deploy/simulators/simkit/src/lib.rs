//! What the simulators of outside systems (`registry-sim`, `receivers`) share: knobs that a
//! test or an operator changes while the simulator runs, by a partial JSON object, validated
//! before they take effect, held in one [`KnobCell`].
#![forbid(unsafe_code)]

use std::sync::{PoisonError, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A simulator's knobs: a JSON object of settings (strict: unknown fields are refused by the
/// type's `deny_unknown_fields`) with a validation of their values.
pub trait Knobs: Serialize + DeserializeOwned + Clone {
    /// Why knobs were refused.
    type Error: From<PatchError>;

    /// Checks the values (ranges, combinations).
    fn validate(&self) -> Result<(), Self::Error>;
}

/// Why a patch could not be applied at all.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch is not a JSON object.
    #[error("knobs must be a JSON object")]
    NotAnObject,
    /// Not JSON, an unknown field, or a value of the wrong type.
    #[error("invalid knobs: {0}")]
    Json(#[from] serde_json::Error),
}

/// `current` with the fields of `patch` (a JSON object, possibly partial) put in, validated.
pub fn patched<K: Knobs>(current: &K, patch: &serde_json::Value) -> Result<K, K::Error> {
    let serde_json::Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject.into());
    };
    let mut merged = match serde_json::to_value(current).map_err(PatchError::from)? {
        serde_json::Value::Object(fields) => fields,
        _ => return Err(PatchError::NotAnObject.into()),
    };
    for (field, value) in patch {
        merged.insert(field.clone(), value.clone());
    }
    let knobs: K =
        serde_json::from_value(serde_json::Value::Object(merged)).map_err(PatchError::from)?;
    knobs.validate()?;
    Ok(knobs)
}

/// The knobs in force, shared by a simulator's handlers; refused knobs change nothing.
#[derive(Debug)]
pub struct KnobCell<K>(RwLock<K>);

impl<K: Knobs> KnobCell<K> {
    /// A cell holding `knobs` (validated first).
    pub fn new(knobs: K) -> Result<Self, K::Error> {
        knobs.validate()?;
        Ok(KnobCell(RwLock::new(knobs)))
    }

    /// The knobs in force.
    pub fn get(&self) -> K {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the knobs (validated first).
    pub fn set(&self, knobs: K) -> Result<(), K::Error> {
        knobs.validate()?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = knobs;
        Ok(())
    }

    /// Puts the fields of `patch` into the knobs in one step; returns the knobs now in force.
    pub fn patch(&self, patch: &serde_json::Value) -> Result<K, K::Error> {
        let mut knobs = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let next = patched(&*knobs, patch)?;
        *knobs = next.clone();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Dial {
        rate: f64,
        on: bool,
    }

    impl Default for Dial {
        fn default() -> Self {
            Dial {
                rate: 0.5,
                on: false,
            }
        }
    }

    #[derive(Debug)]
    enum DialError {
        Patch(PatchError),
        Range,
    }

    impl From<PatchError> for DialError {
        fn from(e: PatchError) -> Self {
            DialError::Patch(e)
        }
    }

    impl Knobs for Dial {
        type Error = DialError;
        fn validate(&self) -> Result<(), DialError> {
            if (0.0..=1.0).contains(&self.rate) {
                Ok(())
            } else {
                Err(DialError::Range)
            }
        }
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_a_refused_one_changes_nothing() {
        let cell = KnobCell::new(Dial::default()).unwrap();
        let now = cell.patch(&serde_json::json!({"on": true})).unwrap();
        assert_eq!(
            now,
            Dial {
                rate: 0.5,
                on: true
            }
        );
        assert!(matches!(
            cell.patch(&serde_json::json!({"rate": 2.0})),
            Err(DialError::Range)
        ));
        assert!(matches!(
            cell.patch(&serde_json::json!({"volume": 1})),
            Err(DialError::Patch(PatchError::Json(_)))
        ));
        assert!(matches!(
            cell.patch(&serde_json::json!([1])),
            Err(DialError::Patch(PatchError::NotAnObject))
        ));
        assert_eq!(
            cell.get(),
            Dial {
                rate: 0.5,
                on: true
            }
        );
    }
}
