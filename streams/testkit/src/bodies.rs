//! Request bodies the tests send to the edge.

use chrono::NaiveDate;
use serde_json::{Value, json};
use streams::calendar::Calendar;
use streams::model::Region;

/// The region the tests register in.
pub const REGION: &str = "mazowieckie";

/// The date of the tests' slots: 60 days ahead in the region's time zone, so it never passes
/// (a slot whose day is over takes no registration).
pub fn slot_date() -> String {
    Calendar::default()
        .days_ahead(&Region::parse(REGION).expect("a region"), 60)
        .to_string()
}

/// A valid registration body for citizen number `n` (whose PESEL serial is `n`) at
/// `location` in [`REGION`] on [`slot_date`].
pub fn citizen(n: u32, location: &str) -> Value {
    let birth = NaiveDate::from_ymd_opt(1960, 1, 1).expect("a date")
        + chrono::Duration::days(n as i64 % 15000);
    json!({
        "national_id": streams::national_id::generate_pesel(birth, n),
        "full_name": format!("Obywatel Numer {n}"),
        "birth_date": birth.to_string(),
        "email": format!("citizen{n}@example.pl"),
        "region": REGION,
        "location": location,
        "date": slot_date(),
        "attributes": {"priority_group": "60+", "chronic_conditions": false, "doses_taken": 0},
        "language": "pl",
    })
}
