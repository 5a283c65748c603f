//! National id rules. The rule is per country and chosen in configuration
//! (`REG_NATIONAL_ID_RULE`); the default is Poland's PESEL. The edge uses [`check`] to catch a
//! typo at once instead of an hour later at the registry; the load generator and tests use
//! [`generate_pesel`] to make valid ids.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};

/// Which country's rule applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NationalIdRule {
    /// Poland's PESEL: 11 digits, a check digit, and the birth date encoded in it.
    #[default]
    Pesel,
}

impl FromStr for NationalIdRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pesel" => Ok(NationalIdRule::Pesel),
            other => Err(format!(
                "unknown national id rule {other:?}; accepted: pesel"
            )),
        }
    }
}

impl fmt::Display for NationalIdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NationalIdRule::Pesel => f.write_str("pesel"),
        }
    }
}

/// Why a national id was refused. The messages are safe to show a citizen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NationalIdError {
    /// Not exactly 11 digits.
    #[error("a PESEL has exactly 11 digits")]
    Format,
    /// The last digit does not match the others.
    #[error("the PESEL's check digit is wrong (is there a typo?)")]
    CheckDigit,
    /// The first six digits are not a date.
    #[error("the PESEL does not encode a valid birth date")]
    EncodedDate,
    /// The encoded date is not `birth_date`.
    #[error("the PESEL's birth date does not match birth_date")]
    BirthDateMismatch,
}

const WEIGHTS: [u32; 10] = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3];

fn check_digit(digits: &[u32]) -> u32 {
    let sum: u32 = digits.iter().zip(WEIGHTS).map(|(d, w)| d * w).sum();
    (10 - sum % 10) % 10
}

/// The birth date a PESEL encodes, if its first six digits are a date.
pub fn pesel_birth_date(id: &str) -> Option<NaiveDate> {
    let d: Vec<u32> = id.chars().map(|c| c.to_digit(10)).collect::<Option<_>>()?;
    if d.len() != 11 {
        return None;
    }
    let yy = d[0] * 10 + d[1];
    let mm = d[2] * 10 + d[3];
    let dd = d[4] * 10 + d[5];
    let (century, month) = match mm {
        81..=92 => (1800, mm - 80),
        1..=12 => (1900, mm),
        21..=32 => (2000, mm - 20),
        41..=52 => (2100, mm - 40),
        61..=72 => (2200, mm - 60),
        _ => return None,
    };
    NaiveDate::from_ymd_opt((century + yy) as i32, month, dd)
}

/// Checks `id` under `rule` against the citizen's `birth_date`.
pub fn check(rule: NationalIdRule, id: &str, birth_date: NaiveDate) -> Result<(), NationalIdError> {
    match rule {
        NationalIdRule::Pesel => {
            if id.len() != 11 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(NationalIdError::Format);
            }
            let d: Vec<u32> = id.bytes().map(|b| u32::from(b - b'0')).collect();
            if check_digit(&d[..10]) != d[10] {
                return Err(NationalIdError::CheckDigit);
            }
            let encoded = pesel_birth_date(id).ok_or(NationalIdError::EncodedDate)?;
            if encoded != birth_date {
                return Err(NationalIdError::BirthDateMismatch);
            }
            Ok(())
        }
    }
}

/// A valid PESEL for `birth_date` (years 1800–2299); `serial` (mod 10,000) fills the four
/// digits after the date. For the load generator and tests.
pub fn generate_pesel(birth_date: NaiveDate, serial: u32) -> String {
    let year = birth_date.year();
    let offset = match year {
        1800..=1899 => 80,
        1900..=1999 => 0,
        2000..=2099 => 20,
        2100..=2199 => 40,
        2200..=2299 => 60,
        _ => panic!("PESEL encodes years 1800 to 2299, not {year}"),
    };
    let mut digits = format!(
        "{:02}{:02}{:02}{:04}",
        year % 100,
        birth_date.month() + offset,
        birth_date.day(),
        serial % 10_000
    );
    let d: Vec<u32> = digits.bytes().map(|b| u32::from(b - b'0')).collect();
    digits.push(char::from_digit(check_digit(&d), 10).expect("a digit"));
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn known_valid_ids_pass() {
        check(NationalIdRule::Pesel, "44051401359", date(1944, 5, 14)).unwrap();
        check(NationalIdRule::Pesel, "02270803624", date(2002, 7, 8)).unwrap();
    }

    #[test]
    fn each_kind_of_mistake_is_named() {
        let p = NationalIdRule::Pesel;
        let b = date(1944, 5, 14);
        assert_eq!(check(p, "4405140135", b), Err(NationalIdError::Format));
        assert_eq!(check(p, "4405140135x", b), Err(NationalIdError::Format));
        assert_eq!(check(p, "44051401358", b), Err(NationalIdError::CheckDigit));
        assert_eq!(
            check(p, "44051401359", date(1944, 5, 15)),
            Err(NationalIdError::BirthDateMismatch)
        );
        // month 13 does not exist: build one with a correct check digit
        let bad_month = {
            let d: Vec<u32> = "4413140135".bytes().map(|b| u32::from(b - b'0')).collect();
            format!("4413140135{}", check_digit(&d))
        };
        assert_eq!(check(p, &bad_month, b), Err(NationalIdError::EncodedDate));
    }

    #[test]
    fn rules_parse_by_name() {
        assert_eq!("PESEL".parse::<NationalIdRule>(), Ok(NationalIdRule::Pesel));
        assert!(
            "ssn"
                .parse::<NationalIdRule>()
                .unwrap_err()
                .contains("pesel")
        );
    }

    proptest! {
        #[test]
        fn generated_ids_pass_and_any_single_digit_change_fails(
            days in 0i64..(500 * 365), serial in 0u32..10_000, pos in 0usize..11, delta in 1u32..10
        ) {
            let birth = date(1800, 1, 1) + chrono::Duration::days(days);
            let id = generate_pesel(birth, serial);
            prop_assert_eq!(pesel_birth_date(&id), Some(birth));
            prop_assert!(check(NationalIdRule::Pesel, &id, birth).is_ok());
            let mut bytes = id.into_bytes();
            bytes[pos] = b'0' + ((u32::from(bytes[pos] - b'0') + delta) % 10) as u8;
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert!(check(NationalIdRule::Pesel, &changed, birth).is_err());
        }
    }
}
