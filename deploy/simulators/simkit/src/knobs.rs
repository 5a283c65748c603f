//! Knobs that a test or an operator changes while a simulator runs, by a partial JSON
//! object, validated before they take effect, held in one [`KnobCell`]; and the
//! [`Simulator`] accessors that come with them.

use std::sync::{PoisonError, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A simulator's knobs: a JSON object of settings (strict: unknown fields are refused by the
/// type's `deny_unknown_fields`) with a validation of their values.
pub trait Knobs: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// Why knobs were refused: [`Refused`], or an error that wraps it beside the knobs' own
    /// rules.
    type Error: From<Refused> + std::fmt::Display;

    /// A valid patch, shown to whoever sent something that is not a JSON object.
    const EXAMPLE: &'static str;

    /// Checks the values (ranges, combinations).
    fn validate(&self) -> Result<(), Self::Error>;

    /// These knobs with the fields of `patch` (a JSON object, possibly partial) put in,
    /// validated. Unknown fields and bad values are refused.
    fn patched(&self, patch: &serde_json::Value) -> Result<Self, Self::Error> {
        let serde_json::Value::Object(patch) = patch else {
            return Err(refused::<Self>(PatchError::not_an_object::<Self>()));
        };
        let mut merged = match serde_json::to_value(self).map_err(refused::<Self>)? {
            serde_json::Value::Object(fields) => fields,
            _ => return Err(refused::<Self>(PatchError::not_an_object::<Self>())),
        };
        for (field, value) in patch {
            merged.insert(field.clone(), value.clone());
        }
        let knobs: Self =
            serde_json::from_value(serde_json::Value::Object(merged)).map_err(refused::<Self>)?;
        knobs.validate()?;
        Ok(knobs)
    }

    /// [`Knobs::patched`] from JSON text.
    fn patched_from_str(&self, json: &str) -> Result<Self, Self::Error> {
        self.patched(&serde_json::from_str(json).map_err(refused::<Self>)?)
    }

    /// The defaults with the fields of `json` put in, if given (a simulator's `--knobs`).
    fn over_defaults(json: Option<&str>) -> Result<Self, Self::Error>
    where
        Self: Default,
    {
        match json {
            Some(json) => Self::default().patched_from_str(json),
            None => Ok(Self::default()),
        }
    }
}

/// `error` as the error of knobs `K`.
pub(crate) fn refused<K: Knobs>(error: impl Into<Refused>) -> K::Error {
    K::Error::from(error.into())
}

/// Why knobs were refused, whatever they are: the patch could not be applied, or a knob that
/// is a probability is not one. Knobs with no other rule use it as their error.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Not a JSON object, not JSON, an unknown field, or a value of the wrong type.
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// A probability outside 0..=1 (or not a number).
    #[error(transparent)]
    NotAProbability(#[from] NotAProbability),
}

impl From<serde_json::Error> for Refused {
    fn from(error: serde_json::Error) -> Self {
        Refused::Patch(error.into())
    }
}

/// Why a patch could not be applied at all.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch is not a JSON object.
    #[error("knobs must be a JSON object, e.g. {example}")]
    NotAnObject {
        /// A valid patch ([`Knobs::EXAMPLE`]).
        example: &'static str,
    },
    /// Not JSON, an unknown field, or a value of the wrong type.
    #[error("invalid knobs: {0}")]
    Json(#[from] serde_json::Error),
}

impl PatchError {
    fn not_an_object<K: Knobs>() -> Self {
        PatchError::NotAnObject {
            example: K::EXAMPLE,
        }
    }
}

/// A knob that is a probability, outside 0..=1 (or not a number).
#[derive(Debug, thiserror::Error)]
#[error("{name} is a probability: it must be between 0 and 1, got {value}")]
pub struct NotAProbability {
    /// The knob.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
}

/// Checks that each named knob is a probability (0..=1; NaN is not).
pub fn probabilities(
    knobs: impl IntoIterator<Item = (&'static str, f64)>,
) -> Result<(), NotAProbability> {
    for (name, value) in knobs {
        if !(0.0..=1.0).contains(&value) {
            return Err(NotAProbability { name, value });
        }
    }
    Ok(())
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
        let next = knobs.patched(patch)?;
        *knobs = next.clone();
        Ok(next)
    }
}

/// A simulator: cheap to clone (clones share everything), its knobs in a [`KnobCell`]. The
/// knob accessors its `main`, its admin routes ([`crate::http::knob_routes`]) and the tests
/// use come with it.
pub trait Simulator: Clone + Send + Sync + 'static {
    /// Its knobs.
    type Knobs: Knobs;

    /// The cell holding its knobs.
    fn knob_cell(&self) -> &KnobCell<Self::Knobs>;

    /// The knobs in force.
    fn knobs(&self) -> Self::Knobs {
        self.knob_cell().get()
    }

    /// Replaces the knobs (validated first; refused knobs change nothing).
    fn set_knobs(&self, knobs: Self::Knobs) -> Result<(), <Self::Knobs as Knobs>::Error> {
        self.knob_cell().set(knobs)
    }

    /// Puts the fields of `patch` (a JSON object, possibly partial) into the knobs in one
    /// step, and returns the knobs now in force. Refused patches change nothing.
    fn patch_knobs(
        &self,
        patch: &serde_json::Value,
    ) -> Result<Self::Knobs, <Self::Knobs as Knobs>::Error> {
        self.knob_cell().patch(patch)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use serde::Deserialize;

    /// Knobs for the tests: a probability and a switch.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub(crate) struct Dial {
        pub(crate) rate: f64,
        pub(crate) on: bool,
    }

    impl Default for Dial {
        fn default() -> Self {
            Dial {
                rate: 0.5,
                on: false,
            }
        }
    }

    impl Knobs for Dial {
        type Error = Refused;
        const EXAMPLE: &'static str = r#"{"rate": 0.1}"#;

        fn validate(&self) -> Result<(), Refused> {
            probabilities([("rate", self.rate)])?;
            Ok(())
        }
    }

    /// A simulator that is nothing but its knobs.
    #[derive(Clone)]
    pub(crate) struct Dials(pub(crate) Arc<KnobCell<Dial>>);

    impl Dials {
        pub(crate) fn new(dial: Dial) -> Self {
            Dials(Arc::new(KnobCell::new(dial).unwrap()))
        }
    }

    impl Simulator for Dials {
        type Knobs = Dial;

        fn knob_cell(&self) -> &KnobCell<Dial> {
            &self.0
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
            Err(Refused::NotAProbability(_))
        ));
        assert!(matches!(
            cell.patch(&serde_json::json!({"volume": 1})),
            Err(Refused::Patch(PatchError::Json(_)))
        ));
        assert!(matches!(
            cell.patch(&serde_json::json!([1])),
            Err(Refused::Patch(PatchError::NotAnObject { .. }))
        ));
        assert_eq!(
            cell.get(),
            Dial {
                rate: 0.5,
                on: true
            }
        );
    }

    #[test]
    fn refusals_say_why_and_what_would_do() {
        let refuse = |json: &str| {
            Dial::default()
                .patched_from_str(json)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refuse("[1]"),
            r#"knobs must be a JSON object, e.g. {"rate": 0.1}"#
        );
        assert!(
            refuse("{").starts_with("invalid knobs: "),
            "{}",
            refuse("{")
        );
        assert!(refuse(r#"{"volume": 1}"#).contains("unknown field `volume`"));
        assert_eq!(
            refuse(r#"{"rate": 1.5}"#),
            "rate is a probability: it must be between 0 and 1, got 1.5"
        );
        assert!(
            probabilities([("a", 0.0), ("b", 1.0), ("c", f64::NAN)]).is_err_and(|e| e.name == "c")
        );
        assert!(probabilities([("a", 0.0), ("b", 1.0)]).is_ok());
    }

    #[test]
    fn knobs_given_at_start_go_over_the_defaults() {
        assert_eq!(Dial::over_defaults(None).unwrap(), Dial::default());
        assert_eq!(
            Dial::over_defaults(Some(r#"{"on": true}"#)).unwrap(),
            Dial {
                rate: 0.5,
                on: true
            }
        );
        assert!(Dial::over_defaults(Some(r#"{"rate": -1}"#)).is_err());
    }

    #[test]
    fn a_simulators_accessors_read_and_change_its_one_cell() {
        let dials = Dials::new(Dial::default());
        let clone = dials.clone();
        clone
            .set_knobs(Dial {
                rate: 0.25,
                on: true,
            })
            .unwrap();
        assert_eq!(dials.knobs().rate, 0.25, "clones share the knobs");
        assert!(
            dials
                .set_knobs(Dial {
                    rate: 2.0,
                    on: false
                })
                .is_err()
        );
        assert!(
            dials
                .patch_knobs(&serde_json::json!({"on": false, "rate": 3.0}))
                .is_err()
        );
        assert_eq!(
            dials.knobs(),
            Dial {
                rate: 0.25,
                on: true
            },
            "refused knobs change nothing"
        );
        let now = dials
            .patch_knobs(&serde_json::json!({"on": false}))
            .unwrap();
        assert_eq!(now, clone.knobs());
        assert!(!now.on);
    }
}
