//! Each region's time zone, and so when a slot's day is over: at midnight where the region
//! is, not in UTC. The edge refuses registrations and capacity changes for a day that is
//! over; the reservation processor's closer closes the waiting lists of such days.
//!
//! Configured as `REG_TIME_ZONES`: a comma-separated list of IANA zone names, each either
//! bare (the zone of every region not named) or `region=Zone`; the default is
//! `Europe/Warsaw` for every region.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::model::{Region, SlotKey};

/// The zone of every region not named otherwise, unless configured.
pub const DEFAULT_ZONE: Tz = chrono_tz::Europe::Warsaw;

/// The regions' time zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    /// The zone of every region not in `regions`.
    default: Tz,
    /// Regions with a zone of their own.
    regions: HashMap<Region, Tz>,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            default: DEFAULT_ZONE,
            regions: HashMap::new(),
        }
    }
}

impl Calendar {
    /// `region`'s time zone.
    pub fn zone(&self, region: &Region) -> Tz {
        self.regions.get(region).copied().unwrap_or(self.default)
    }

    /// The date in `region` at `now`.
    pub fn today(&self, region: &Region, now: DateTime<Utc>) -> NaiveDate {
        now.with_timezone(&self.zone(region)).date_naive()
    }

    /// Whether `date`'s day is over in `region` at `now` (midnight in the region has passed).
    pub fn is_over(&self, region: &Region, date: NaiveDate, now: DateTime<Utc>) -> bool {
        date < self.today(region, now)
    }

    /// The date `days` after today in `region`: a day that stays ahead, for demo slots, load
    /// tools and tests that must not expire with a fixed date.
    pub fn days_ahead(&self, region: &Region, days: i64) -> NaiveDate {
        self.today(region, Utc::now()) + chrono::Duration::days(days)
    }

    /// Whether `slot`'s day is over at `now`.
    pub fn slot_is_over(&self, slot: &SlotKey, now: DateTime<Utc>) -> bool {
        self.is_over(&slot.region, slot.date, now)
    }
}

impl FromStr for Calendar {
    type Err = String;

    /// Parses `Zone` and `region=Zone` entries, comma-separated (see the module's docs).
    fn from_str(spec: &str) -> Result<Self, String> {
        let mut calendar = Calendar::default();
        let zone = |name: &str| {
            name.trim().parse::<Tz>().map_err(|_| {
                format!(
                    "{:?} is not an IANA time zone (e.g. Europe/Warsaw)",
                    name.trim()
                )
            })
        };
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match entry.split_once('=') {
                None => calendar.default = zone(entry)?,
                Some((region, name)) => {
                    let region = Region::parse(region.trim())
                        .map_err(|e| format!("{:?} is not a region: {e}", region.trim()))?;
                    calendar.regions.insert(region, zone(name)?);
                }
            }
        }
        Ok(calendar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn region(name: &str) -> Region {
        Region::parse(name).unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn a_day_ends_at_midnight_in_the_regions_zone_not_in_utc() {
        let calendar = Calendar::default();
        let r = region("mazowieckie");
        // 23:30 UTC on 1 March is 00:30 on 2 March in Warsaw (CET, UTC+1): the 1st is over.
        assert!(calendar.is_over(&r, date("2027-03-01"), at("2027-03-01T23:30:00Z")));
        assert!(!calendar.is_over(&r, date("2027-03-01"), at("2027-03-01T22:59:59Z")));
        // Summer time (CEST, UTC+2).
        assert!(calendar.is_over(&r, date("2027-07-01"), at("2027-07-01T22:00:00Z")));
        assert!(!calendar.is_over(&r, date("2027-07-01"), at("2027-07-01T21:59:59Z")));
        assert!(!calendar.is_over(&r, date("2027-07-02"), at("2027-07-01T22:00:00Z")));
    }

    #[test]
    fn zones_are_configured_per_region_with_a_default() {
        let calendar: Calendar = "Europe/London, far=Asia/Tokyo".parse().unwrap();
        assert_eq!(calendar.zone(&region("near")), chrono_tz::Europe::London);
        assert_eq!(calendar.zone(&region("far")), chrono_tz::Asia::Tokyo);
        // 15:00 UTC on 1 March is midnight on the 2nd in Tokyo, still the 1st in London.
        let now = at("2027-03-01T15:00:00Z");
        assert!(calendar.is_over(&region("far"), date("2027-03-01"), now));
        assert!(!calendar.is_over(&region("near"), date("2027-03-01"), now));
        assert_eq!("".parse::<Calendar>().unwrap(), Calendar::default());
        assert!("Mars/Olympus".parse::<Calendar>().is_err());
        assert!("a b=Europe/Warsaw".parse::<Calendar>().is_err());
    }
}
