//! The availability table the read API answers from: every slot's row in memory, read from
//! SurrealDB at most once per cache period whatever the number of distinct queries, so a
//! query nobody asked before costs no database read.
//!
//! The first load reads every slot; each later one reads only the slots changed since the
//! one before ([`Store::slots_since`]) and merges them in, so a load costs the changes of
//! one period, not the slots of the country (190,000 at national size: a whole read of that
//! many takes seconds, longer than the period it serves; `docs/scale.md`). A load that
//! changes nothing keeps the table, and with it its generation: the answers rendered from it
//! stay valid and keep their entity tags.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use streams::calendar::Calendar;
use streams::model::{Location, Region};

use crate::api::AvailabilityKey;
use crate::store::{Availability, SlotCursor, SlotRows, Store};

/// Every listed slot's availability row, ordered by region, location and date, indexed by
/// location and by region. `generation` tells the answers rendered from one table from
/// those of the next.
#[derive(Debug)]
pub struct SlotTable {
    generation: u64,
    rows: Vec<Availability>,
    /// Row positions by location and by region, so a query that names either looks only at
    /// its own rows (a query for a place that does not exist looks at none).
    by_location: HashMap<String, Vec<usize>>,
    by_region: HashMap<String, Vec<usize>>,
    /// Each region's earliest date listed: whether any day is over is a look per region,
    /// not per row, in the periods when nothing changed.
    earliest: HashMap<String, String>,
}

impl SlotTable {
    /// Indexes `rows` (ordered by region, location, date) by location and by region.
    fn new(generation: u64, rows: Vec<Availability>) -> Self {
        fn add(index: &mut HashMap<String, Vec<usize>>, key: &str, i: usize) {
            match index.get_mut(key) {
                Some(positions) => positions.push(i),
                None => {
                    index.insert(key.to_owned(), vec![i]);
                }
            }
        }
        let (mut by_location, mut by_region) = (HashMap::new(), HashMap::new());
        let mut earliest = HashMap::<String, String>::new();
        for (i, row) in rows.iter().enumerate() {
            add(&mut by_location, &row.location, i);
            add(&mut by_region, &row.region, i);
            match earliest.get_mut(&row.region) {
                Some(date) if row.date < *date => row.date.clone_into(date),
                Some(_) => {}
                None => {
                    earliest.insert(row.region.clone(), row.date.clone());
                }
            }
        }
        SlotTable {
            generation,
            rows,
            by_location,
            by_region,
            earliest,
        }
    }

    /// Which load this table came from: a new one whenever a load changed a row.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every row, ordered by region, location and date.
    pub fn rows(&self) -> &[Availability] {
        &self.rows
    }

    /// The rows matching `key`, in the table's order (region, location, date).
    pub fn filter(&self, key: &AvailabilityKey) -> Vec<&Availability> {
        let is = |field: &str, want: Option<&str>| want.is_none_or(|want| field == want);
        let date = key.date.map(|d| d.to_string());
        let matches = |row: &&Availability| {
            is(&row.region, key.region.as_ref().map(Region::as_str))
                && is(&row.location, key.location.as_ref().map(Location::as_str))
                && is(&row.date, date.as_deref())
        };
        let indexed = match (&key.location, &key.region) {
            (Some(location), _) => self.by_location.get(location.as_str()),
            (None, Some(region)) => self.by_region.get(region.as_str()),
            (None, None) => return self.rows.iter().filter(matches).collect(),
        };
        indexed
            .map(|positions| {
                positions
                    .iter()
                    .map(|&i| &self.rows[i])
                    .filter(matches)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A table and the cut of the log it was read at: where the next load starts.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The checkpoints the table is read up to.
    pub cursor: SlotCursor,
    /// The table.
    pub table: Arc<SlotTable>,
}

/// Loads the table: every slot when there is no `previous` load, else the slots changed
/// since it, merged in. Slots whose day is over in their region are left out.
pub async fn load(
    store: &Store,
    previous: Option<&Loaded>,
    calendar: &Calendar,
    now: DateTime<Utc>,
) -> anyhow::Result<(Loaded, usize)> {
    let read = store.slots_since(previous.map(|p| p.cursor)).await?;
    let rows_read = read.rows.len();
    Ok((next(previous, read, calendar, now), rows_read))
}

/// The table after `read`: `previous` itself (same generation) when nothing it lists
/// changed, else a new generation.
fn next(
    previous: Option<&Loaded>,
    read: SlotRows,
    calendar: &Calendar,
    now: DateTime<Utc>,
) -> Loaded {
    let SlotRows {
        cursor,
        whole,
        rows,
    } = read;
    let over = DaysOver::new(calendar, now);
    let generation = previous.map_or(0, |p| p.table.generation + 1);
    let rows = match previous {
        Some(previous) if !whole => {
            let old = &previous.table.rows;
            match merge(old, rows) {
                Some(rows) => Some(rows),
                None if over.any_in(&previous.table) => Some(old.clone()),
                None => None,
            }
        }
        // The merge's binary search needs the order Rust compares keys in: sorted here
        // rather than trusting the store's collation (already in order, so it costs little).
        _ => {
            let mut rows = rows;
            rows.sort_by(|a, b| key_of(a).cmp(&key_of(b)));
            Some(rows)
        }
    };
    let table = match rows {
        Some(mut rows) => {
            rows.retain(|row| !over.is_over(row));
            Arc::new(SlotTable::new(generation, rows))
        }
        None => previous.expect("only a merge keeps a table").table.clone(),
    };
    Loaded { cursor, table }
}

fn key_of(row: &Availability) -> (&str, &str, &str) {
    (&row.region, &row.location, &row.date)
}

/// `old` (ordered) with `changed` (in any order, a slot possibly twice with equal rows)
/// merged in, or `None` when no changed row differs from the one `old` holds.
fn merge(old: &[Availability], mut changed: Vec<Availability>) -> Option<Vec<Availability>> {
    changed.sort_by(|a, b| key_of(a).cmp(&key_of(b)));
    changed.dedup_by(|a, b| key_of(a) == key_of(b));
    let differs = |row: &Availability| {
        old.binary_search_by(|o| key_of(o).cmp(&key_of(row)))
            .map_or(true, |at| old[at] != *row)
    };
    if !changed.iter().any(differs) {
        return None;
    }
    let mut merged = Vec::with_capacity(old.len() + changed.len());
    let mut old = old.iter().peekable();
    let mut changed = changed.into_iter().peekable();
    loop {
        let order = match (old.peek(), changed.peek()) {
            (Some(o), Some(c)) => key_of(o).cmp(&key_of(c)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => break,
        };
        match order {
            Ordering::Less => merged.extend(old.next().cloned()),
            Ordering::Equal => {
                old.next();
                merged.extend(changed.next());
            }
            Ordering::Greater => merged.extend(changed.next()),
        }
    }
    Some(merged)
}

/// Whether a slot's day is over in its region's time zone: such slots take no registration
/// (the edge refuses them), so neither the citizens' page nor a vaccine finder should offer
/// them. The table is loaded at least once a cache period, so a day leaves the answers
/// within about a second of its midnight. Each region's date today is worked out once, and
/// rows compared with it as the `YYYY-MM-DD` text the store holds (which sorts as dates do).
struct DaysOver<'a> {
    calendar: &'a Calendar,
    now: DateTime<Utc>,
    today: std::cell::RefCell<HashMap<String, Option<String>>>,
}

impl<'a> DaysOver<'a> {
    fn new(calendar: &'a Calendar, now: DateTime<Utc>) -> Self {
        DaysOver {
            calendar,
            now,
            today: Default::default(),
        }
    }

    fn is_over(&self, row: &Availability) -> bool {
        self.is_over_in(&row.region, &row.date)
    }

    /// Whether any day `table` lists is over: whether its region's earliest is.
    fn any_in(&self, table: &SlotTable) -> bool {
        table
            .earliest
            .iter()
            .any(|(region, date)| self.is_over_in(region, date))
    }

    fn is_over_in(&self, region: &str, date: &str) -> bool {
        let mut today = self.today.borrow_mut();
        let today = match today.get(region) {
            Some(today) => today,
            None => today.entry(region.to_owned()).or_insert_with(|| {
                let region = Region::parse(region).ok()?;
                Some(self.calendar.today(&region, self.now).to_string())
            }),
        };
        today
            .as_deref()
            .is_some_and(|today| date.len() == today.len() && date < today)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn key(region: Option<&str>, location: Option<&str>, date: Option<&str>) -> AvailabilityKey {
        AvailabilityKey {
            region: region.map(|r| Region::parse(r).unwrap()),
            location: location.map(|l| Location::parse(l).unwrap()),
            date: date.map(|d| d.parse::<NaiveDate>().unwrap()),
        }
    }

    fn slot(region: &str, location: &str, date: &str) -> Availability {
        Availability {
            region: region.into(),
            location: location.into(),
            date: date.into(),
            capacity: 1,
            remaining: 1,
            waiting: 0,
        }
    }

    /// The indexed filter gives exactly what a scan of every row gives, for every
    /// combination of filters, existing values or not.
    #[test]
    fn the_indexed_filter_matches_a_scan_of_every_row() {
        let mut rows = Vec::new();
        for region in ["mazowieckie", "slaskie"] {
            for location in ["narodowy", "torwar", "spodek"] {
                for date in ["2027-03-01", "2027-03-02"] {
                    if region == "slaskie" && location == "torwar" {
                        continue;
                    }
                    rows.push(slot(region, location, date));
                }
            }
        }
        let table = SlotTable::new(0, rows.clone());
        let regions = [None, Some("mazowieckie"), Some("slaskie"), Some("lodzkie")];
        let locations = [None, Some("narodowy"), Some("torwar"), Some("nowhere")];
        let dates = [None, Some("2027-03-01"), Some("2027-04-01")];
        let mut non_empty = 0;
        for region in regions {
            for location in locations {
                for date in dates {
                    let wanted: Vec<&Availability> = rows
                        .iter()
                        .filter(|row| {
                            region.is_none_or(|r| row.region == r)
                                && location.is_none_or(|l| row.location == l)
                                && date.is_none_or(|d| row.date == d)
                        })
                        .collect();
                    let got = table.filter(&key(region, location, date));
                    assert_eq!(got, wanted, "{region:?} {location:?} {date:?}");
                    non_empty += usize::from(!got.is_empty());
                }
            }
        }
        assert!(non_empty > 10, "the cases exercise matches too");
    }

    /// A slot leaves the answers at midnight in its region's zone, not in UTC: at 23:30 UTC on
    /// 1 March (00:30 on the 2nd in Warsaw) the 1st is gone from a Warsaw region and still
    /// listed for a region on London's time.
    #[test]
    fn a_slot_whose_day_is_over_in_its_region_is_not_listed() {
        let calendar: streams::calendar::Calendar =
            "Europe/Warsaw,west=Europe/London".parse().unwrap();
        let row = |region: &str, date: &str| slot(region, "a", date);
        let mut rows = vec![
            row("mazowieckie", "2027-03-01"),
            row("mazowieckie", "2027-03-02"),
            row("west", "2027-03-01"),
        ];
        let now = chrono::DateTime::parse_from_rfc3339("2027-03-01T23:30:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let over = DaysOver::new(&calendar, now);
        rows.retain(|row| !over.is_over(row));
        assert_eq!(
            rows,
            vec![row("mazowieckie", "2027-03-02"), row("west", "2027-03-01")]
        );
    }

    /// A row of a small universe of slots (so that changes hit existing ones), with counts.
    fn row_strategy() -> impl proptest::strategy::Strategy<Value = Availability> {
        use proptest::prelude::*;
        (0..2usize, 0..3usize, 1..4u32, 0..3u64, 0..3u64).prop_map(
            |(region, location, day, remaining, waiting)| Availability {
                region: ["mazowieckie", "slaskie"][region].into(),
                location: ["narodowy", "spodek", "torwar"][location].into(),
                date: format!("2027-03-0{day}"),
                capacity: 2,
                remaining,
                waiting,
            },
        )
    }

    /// What a whole read would give: `old` with each changed slot's row replaced or added,
    /// in the table's order.
    fn overlaid(old: &[Availability], changed: &[Availability]) -> Vec<Availability> {
        let mut all = std::collections::BTreeMap::new();
        for row in old.iter().chain(changed) {
            all.insert(
                (row.region.clone(), row.location.clone(), row.date.clone()),
                row.clone(),
            );
        }
        all.into_values().collect()
    }

    proptest::proptest! {
        /// Merging the changed rows into the table gives what reading every slot would, in
        /// the same order; and nothing (the table kept) exactly when no changed row differs.
        #[test]
        fn a_merge_of_the_changes_is_the_whole_table(
            old in proptest::collection::vec(row_strategy(), 0..12),
            changed in proptest::collection::vec(row_strategy(), 0..8),
        ) {
            let old = overlaid(&old, &[]);
            // A slot changed twice in one read is listed with equal rows (both streams).
            let changed = {
                let latest = overlaid(&[], &changed);
                let mut twice = latest.clone();
                twice.extend(latest.iter().take(2).cloned());
                twice
            };
            let whole = overlaid(&old, &changed);
            match merge(&old, changed) {
                Some(merged) => {
                    proptest::prop_assert_eq!(&merged, &whole);
                    proptest::prop_assert_ne!(&merged, &old);
                }
                None => proptest::prop_assert_eq!(&old, &whole),
            }
        }
    }

    fn rows_read(cursor: (u64, u64), whole: bool, rows: Vec<Availability>) -> SlotRows {
        SlotRows {
            cursor: SlotCursor {
                intake: cursor.0,
                decisions: cursor.1,
            },
            whole,
            rows,
        }
    }

    /// A load whose changes leave every row as it was keeps the table (and its generation,
    /// so rendered answers stay valid) but moves the cursor; a load that changes a row makes
    /// a new generation; a load at a region's midnight drops that day's rows even when
    /// nothing else changed.
    #[test]
    fn a_load_keeps_the_table_until_a_row_changes_or_a_day_ends() {
        let calendar: Calendar = "Europe/Warsaw".parse().unwrap();
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let evening = at("2027-03-01T20:00:00Z");
        let a = slot("mazowieckie", "a", "2027-03-01");
        let b = slot("mazowieckie", "b", "2027-03-02");
        // A whole read in another order than the table's is put in it.
        let first = next(
            None,
            rows_read((1, 1), true, vec![b.clone(), a.clone()]),
            &calendar,
            evening,
        );
        assert_eq!(first.table.rows(), [a.clone(), b.clone()]);

        let same = next(
            Some(&first),
            rows_read((1, 5), false, vec![b.clone()]),
            &calendar,
            evening,
        );
        assert!(Arc::ptr_eq(&same.table, &first.table));
        assert_eq!(same.cursor.decisions, 5, "the cursor moves on regardless");

        let fuller = Availability {
            remaining: 0,
            ..b.clone()
        };
        let changed = next(
            Some(&same),
            rows_read((1, 6), false, vec![fuller.clone()]),
            &calendar,
            evening,
        );
        assert_eq!(changed.table.rows(), [a.clone(), fuller.clone()]);
        assert_eq!(changed.table.generation(), first.table.generation() + 1);

        // 23:30 UTC is 00:30 on the 2nd in Warsaw: the 1st is over.
        let after_midnight = next(
            Some(&changed),
            rows_read((1, 6), false, vec![]),
            &calendar,
            at("2027-03-01T23:30:00Z"),
        );
        assert_eq!(after_midnight.table.rows(), [fuller]);
        assert!(after_midnight.table.generation() > changed.table.generation());
    }
}
