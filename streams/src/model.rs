//! Domain values shared by every service: regions, locations, slots, registration ids
//! and statuses. Each is a "parse, don't validate" newtype: holding one proves it is valid.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Deserializer, Serialize};

/// Why a value could not be parsed into a domain type. The message is safe to show a citizen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// Validates a subject-safe token: 1 to 32 characters of `a-z`, `0-9` and `-`, not starting or
/// ending with `-`. Regions and locations appear in NATS subjects and SurrealDB record ids, so
/// this alphabet keeps both unambiguous.
fn check_token(what: &str, s: &str) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{what} must be 1 to 32 characters of a-z, 0-9 and '-'"
        )))
    }
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a value, rejecting anything outside the subject-safe alphabet.
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                check_token($what, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_type!(
    /// A region, e.g. `mazowieckie`. Subjects carry it so processors can be started per region.
    Region,
    "region"
);
token_type!(
    /// A vaccination site within a region, e.g. `warszawa-narodowy`.
    Location,
    "location"
);

/// One bookable slot: a (region, location, date). Capacity and reservations are kept per slot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotKey {
    /// The region the slot belongs to.
    pub region: Region,
    /// The site within the region.
    pub location: Location,
    /// The day of the appointment.
    pub date: NaiveDate,
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.location, self.date)
    }
}

/// A registration's identifier: `<region>.<32 hex digits>` (a UUIDv7, so ids sort by creation
/// time). The region is part of the id so a cancellation, which carries only the id and its
/// token, can be routed to the region's subjects without a lookup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RegistrationId(String);

impl RegistrationId {
    /// A fresh id in `region`.
    pub fn generate(region: &Region) -> Self {
        Self(format!("{}.{}", region, uuid::Uuid::now_v7().simple()))
    }

    /// Parses an id received from outside (a URL path), checking its shape.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue("registration id is malformed".to_owned());
        let (region, hex) = s.split_once('.').ok_or_else(bad)?;
        check_token("region", region).map_err(|_| bad())?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    /// The region encoded in the id.
    pub fn region(&self) -> Region {
        let region = self.0.split_once('.').map_or("", |(r, _)| r);
        Region(region.to_owned())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RegistrationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The status a citizen sees, as defined by the HTTP contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted by the edge and durably appended; no decision yet.
    Received,
    /// A slot is held for the registration.
    Reserved,
    /// The slot is full: waits in line (with a position) for a released place.
    Waitlisted,
    /// The registry could not answer in time: an operator decides. The place stays held.
    ManualReview,
    /// Final: slot held and citizen verified.
    Confirmed,
    /// Final: no slot (or verification failed); `reason` says why.
    Rejected,
    /// Final: cancelled by the citizen; the slot went back to the pool.
    Cancelled,
}

impl Status {
    /// Whether no further event can change this status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Confirmed | Status::Rejected | Status::Cancelled
        )
    }

    /// The wire name, as used in JSON and in the SurrealDB projection.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Reserved => "reserved",
            Status::Waitlisted => "waitlisted",
            Status::ManualReview => "manual_review",
            Status::Confirmed => "confirmed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_accept_the_subject_safe_alphabet_only() {
        assert!(Region::parse("mazowieckie").is_ok());
        assert!(Location::parse("warszawa-1").is_ok());
        for bad in [
            "",
            "Mazowieckie",
            "a.b",
            "a*",
            "a>",
            "-a",
            "a-",
            "a b",
            &"x".repeat(33),
        ] {
            assert!(Region::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn registration_ids_carry_their_region_and_round_trip() {
        let region = Region::parse("slaskie").unwrap();
        let id = RegistrationId::generate(&region);
        assert_eq!(id.region(), region);
        assert_eq!(RegistrationId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "slaskie",
            "slaskie.xyz",
            ".0190",
            "a.b.c",
            "Slaskie.0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                RegistrationId::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
