//! Closing waiting lists on time. The rule is pure and has no clock, so time enters the log
//! as an event: while a replica decides a region, a small task looks every
//! [`CHECK_INTERVAL`] at the slots that have someone waiting and appends a `WaitlistClosed`
//! for each slot whose date has passed or whose region's window has closed. The reservation
//! rule then rejects those still waiting (`waitlist_closed`) when it reads the event back,
//! in log order like everything else, so a rebuild decides the same.
//!
//! A slot's date has passed once its day is over in its region's time zone
//! ([`streams::calendar`]), not in UTC. A waiting list, once closed, stays
//! closed even if an operator opens a new window later.

use std::time::Duration;

use chrono::{DateTime, Utc};
use streams::calendar::Calendar;
use streams::events::{CloseReason, WaitlistClosed, WindowSet};
use streams::model::SlotKey;

/// How often the closer looks at the clock.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the closer needs to know of a region, sent by its decider after every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Closing {
    /// Slots whose waiting list is open and not empty.
    pub open: Vec<SlotKey>,
    /// The region's registration window, if an operator set one.
    pub window: Option<WindowSet>,
}

/// The waiting lists due to close at `now`, with why (a passed date first).
pub fn due(closing: &Closing, now: DateTime<Utc>, calendar: &Calendar) -> Vec<WaitlistClosed> {
    let window_closed = closing.window.as_ref().is_some_and(|w| w.closes_at <= now);
    closing
        .open
        .iter()
        .filter_map(|slot| {
            let reason = if calendar.slot_is_over(slot, now) {
                CloseReason::DatePassed
            } else if window_closed {
                CloseReason::WindowClosed
            } else {
                return None;
            };
            Some(WaitlistClosed {
                slot: slot.clone(),
                reason,
                window_closes_at: match reason {
                    CloseReason::WindowClosed => closing.window.as_ref().map(|w| w.closes_at),
                    CloseReason::DatePassed => None,
                },
            })
        })
        .collect()
}

/// The message id of a closing (`Nats-Msg-Id`, and the closer's memory of what it sent): one
/// per slot and reason, and per window for a closed window, so a closing the rule ignored
/// (judged on a window an operator had extended) does not stop the next one.
pub fn closing_id(closed: &WaitlistClosed) -> String {
    let slot = &closed.slot;
    match closed.window_closes_at {
        Some(at) => format!(
            "waitlist-closed.{}.{}.{}.window-{}",
            slot.region,
            slot.location,
            slot.date,
            at.timestamp_millis()
        ),
        None => format!(
            "waitlist-closed.{}.{}.{}",
            slot.region, slot.location, slot.date
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;
    use chrono::NaiveDate;
    use streams::model::{Location, Region};

    fn slot(date: &str) -> SlotKey {
        SlotKey {
            region: Region::parse("mazowieckie").unwrap(),
            location: Location::parse("a").unwrap(),
            date: date.parse::<NaiveDate>().unwrap(),
        }
    }

    fn utc() -> Calendar {
        Calendar::from_str("UTC").unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_list_closes_the_day_after_its_date_or_when_the_window_closes() {
        let mut closing = Closing {
            open: vec![slot("2027-03-01"), slot("2027-03-05")],
            window: None,
        };
        assert!(due(&closing, at("2027-03-01T23:59:59Z"), &utc()).is_empty());
        let closed = due(&closing, at("2027-03-02T00:00:00Z"), &utc());
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].slot.date.to_string(), closed[0].reason),
            ("2027-03-01".into(), CloseReason::DatePassed)
        );
        closing.window = Some(WindowSet {
            region: Region::parse("mazowieckie").unwrap(),
            opens_at: at("2027-02-01T08:00:00Z"),
            closes_at: at("2027-02-20T20:00:00Z"),
        });
        assert!(due(&closing, at("2027-02-20T19:59:59Z"), &utc()).is_empty());
        let closed = due(&closing, at("2027-02-20T20:00:00Z"), &utc());
        assert!(closed.iter().all(|c| c.reason == CloseReason::WindowClosed) && closed.len() == 2);
    }

    #[test]
    fn a_date_passes_at_midnight_in_the_regions_zone() {
        let closing = Closing {
            open: vec![slot("2027-03-01")],
            window: None,
        };
        let warsaw = Calendar::default();
        // 23:00 UTC is midnight in Warsaw (CET): the 1st is over there, not yet in UTC.
        assert!(due(&closing, at("2027-03-01T22:59:59Z"), &warsaw).is_empty());
        assert_eq!(due(&closing, at("2027-03-01T23:00:00Z"), &warsaw).len(), 1);
        assert!(due(&closing, at("2027-03-01T23:00:00Z"), &utc()).is_empty());
    }

    #[test]
    fn a_closing_on_an_extended_window_has_an_id_of_its_own() {
        let window = |closes_at| WindowSet {
            region: Region::parse("mazowieckie").unwrap(),
            opens_at: at("2027-02-01T08:00:00Z"),
            closes_at: at(closes_at),
        };
        let mut closing = Closing {
            open: vec![slot("2027-03-05")],
            window: Some(window("2027-02-20T20:00:00Z")),
        };
        let first = due(&closing, at("2027-02-27T20:00:00Z"), &utc());
        closing.window = Some(window("2027-02-27T20:00:00Z"));
        let after_extension = due(&closing, at("2027-02-27T20:00:00Z"), &utc());
        assert_eq!((first.len(), after_extension.len()), (1, 1));
        assert_ne!(closing_id(&first[0]), closing_id(&after_extension[0]));
        let date_passed = due(&closing, at("2027-03-06T00:00:00Z"), &utc());
        assert_eq!(date_passed[0].reason, CloseReason::DatePassed);
        assert_ne!(closing_id(&date_passed[0]), closing_id(&after_extension[0]));
    }
}
