//! Reading the projections: availability, a registration's status, the operators' lists,
//! and a snapshot of every table for a rebuild's comparison.

use anyhow::Context as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use streams::model::Status;

use super::Store;
use super::rows::{Availability, DeadLetter, Registration, Review};

/// The most registrations one manual-review listing returns.
pub const MAX_REVIEWS_LISTED: usize = 1000;

/// The tables a snapshot reads: every table the workers write, the checkpoints included.
pub const SNAPSHOT_TABLES: [&str; 5] =
    ["checkpoint", "registration", "line", "slot", "dead_letter"];

/// Every row of every projected table, by table and record id, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Table name → record id (as SurrealQL prints it) → the row without its id.
    pub tables: std::collections::BTreeMap<&'static str, std::collections::BTreeMap<String, Value>>,
}

impl Snapshot {
    /// The checkpoint of `stream` in this snapshot (0 if none).
    pub fn checkpoint(&self, stream: &str) -> u64 {
        self.tables
            .get("checkpoint")
            .and_then(|rows| rows.get(&format!("checkpoint:{stream}")))
            .and_then(|row| row.get("seq"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
}

impl Store {
    /// Every projected table, row by row, and the checkpoints they were applied up to, all
    /// read in one transaction: a state the log can reproduce exactly (see
    /// [`crate::rebuild`]). Holds the whole projection in memory: meant for comparisons, not
    /// for serving.
    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let statements: String = SNAPSHOT_TABLES
            .iter()
            .map(|table| format!("SELECT <string> id AS key, * OMIT id FROM {table};"))
            .collect();
        let mut response = self
            .db
            .query(format!(
                "BEGIN TRANSACTION; {statements} COMMIT TRANSACTION;"
            ))
            .await
            .context("Failed to read a snapshot of the projections")?;
        let mut tables = std::collections::BTreeMap::new();
        // Statement 0 is the BEGIN.
        for (index, table) in SNAPSHOT_TABLES.iter().enumerate() {
            let rows: Vec<Value> = response
                .take(index + 1)
                .with_context(|| format!("Failed to read the {table} table"))?;
            let rows = rows
                .into_iter()
                .filter_map(|mut row| {
                    let key = row.as_object_mut()?.remove("key")?;
                    Some((key.as_str()?.to_owned(), row))
                })
                .collect();
            tables.insert(*table, rows);
        }
        Ok(Snapshot { tables })
    }

    /// The slot table's rows at one cut of the log: every slot when `since` is `None` (or
    /// the store is behind it: another database, or one rebuilt), else only the slots
    /// changed after `since` (by the sequences [`APPLY`](super::apply::APPLY) keeps on
    /// each row), read in one transaction with the checkpoints that make the next cut.
    ///
    /// Why it is exact: a stream's checkpoint moves in the transaction that writes its
    /// changes, and each stream has one writer applying it in order (the checkpoint
    /// condition), so every change committed after this read carries a sequence past the
    /// checkpoint it read. A slot changed by both streams is read twice; the rows are equal.
    pub async fn slots_since(&self, since: Option<SlotCursor>) -> anyhow::Result<SlotRows> {
        if let Some(since) = since {
            let changed = self.read_slots(Some(since)).await?;
            if changed.cursor.intake >= since.intake && changed.cursor.decisions >= since.decisions
            {
                return Ok(changed);
            }
        }
        self.read_slots(None).await
    }

    async fn read_slots(&self, since: Option<SlotCursor>) -> anyhow::Result<SlotRows> {
        let (selects, statements) = match since {
            Some(_) => (
                format!(
                    "SELECT {AVAILABILITY} FROM slot WHERE capacity_seq > $intake_seq; \
                     SELECT {AVAILABILITY} FROM slot WHERE counts_seq > $decisions_seq;"
                ),
                3..5,
            ),
            None => (
                format!("SELECT {AVAILABILITY} FROM slot ORDER BY region, location, date;"),
                3..4,
            ),
        };
        let after = since.unwrap_or_default();
        let mut response = self
            .db
            .query(format!(
                "BEGIN TRANSACTION; \
                 SELECT VALUE seq FROM ONLY type::record('checkpoint', $intake); \
                 SELECT VALUE seq FROM ONLY type::record('checkpoint', $decisions); \
                 {selects} COMMIT TRANSACTION;"
            ))
            .bind(json!({
                "intake": streams::subjects::INTAKE_STREAM,
                "decisions": streams::subjects::DECISIONS_STREAM,
                "intake_seq": after.intake,
                "decisions_seq": after.decisions,
            }))
            .await
            .context("Failed to read the slot table")?;
        let mut checkpoint = |index: usize| -> anyhow::Result<u64> {
            let seq: Option<Value> = response
                .take(index)
                .context("Failed to read a checkpoint with the slot table")?;
            Ok(seq.and_then(|v| v.as_u64()).unwrap_or(0))
        };
        // Statement 0 is the BEGIN.
        let cursor = SlotCursor {
            intake: checkpoint(1)?,
            decisions: checkpoint(2)?,
        };
        let mut rows = Vec::new();
        for index in statements {
            let read: Vec<Value> = response
                .take(index)
                .context("Failed to read the slot table")?;
            rows.extend(typed::<Availability>(read).context("Failed to read the slot table")?);
        }
        Ok(SlotRows {
            cursor,
            whole: since.is_none(),
            rows,
        })
    }

    /// A registration's projected record, if the projection has it. A waiting registration's
    /// `position` (1 = next in line) is counted from those still waiting ahead of it.
    pub async fn registration(&self, id: &str) -> anyhow::Result<Option<Registration>> {
        let mut response = self
            .db
            .query(
                "SELECT status, reason, region, location, date, updated_at, line_seq \
                 FROM ONLY type::record('registration', $id)",
            )
            .bind(json!({ "id": id }))
            .await
            .context("Failed to read a registration")?;
        let row: Option<Value> = response.take(0).context("Failed to read a registration")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let row: RegistrationRow =
            serde_json::from_value(row).context("Failed to read a registration")?;
        let position = match row.status {
            Status::Waitlisted => Some(self.place_in_line(&row).await?),
            _ => None,
        };
        let RegistrationRow {
            status,
            reason,
            region,
            location,
            date,
            updated_at,
            line_seq: _,
        } = row;
        Ok(Some(Registration {
            status,
            reason,
            position,
            region,
            location,
            date,
            updated_at,
        }))
    }

    /// A waiting registration's place in line: 1 + those waiting ahead of it for its slot.
    async fn place_in_line(&self, row: &RegistrationRow) -> anyhow::Result<u64> {
        let mut response = self
            .db
            .query(
                "SELECT count() AS ahead FROM line \
                 WHERE kind = 'waitlisted' AND region = $region AND location = $location \
                 AND date = $date AND line_seq < $line_seq GROUP ALL",
            )
            .bind(json!({
                "region": row.region, "location": row.location,
                "date": row.date, "line_seq": row.line_seq,
            }))
            .await
            .context("Failed to count a registration's place in line")?;
        let ahead: Option<u64> = response
            .take((0, "ahead"))
            .context("Failed to count a registration's place in line")?;
        Ok(ahead.unwrap_or(0) + 1)
    }

    /// The undeliverable messages (dead letters) not re-driven since, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let mut response = self
            .db
            .query(format!(
                "SELECT notification_id, registration_id, channel, template, decision_seq, \
                 attempts, error_code, last_error, at FROM dead_letter ORDER BY at \
                 LIMIT {MAX_REVIEWS_LISTED}"
            ))
            .await
            .context("Failed to list the dead letters")?;
        let rows: Vec<Value> = response
            .take(0)
            .context("Failed to list the dead letters")?;
        typed(rows).context("Failed to list the dead letters")
    }

    /// The registrations in manual review, oldest first, optionally of one region.
    pub async fn reviews(&self, region: Option<&str>) -> anyhow::Result<Vec<Review>> {
        let filter = if region.is_some() {
            "AND region = $region"
        } else {
            ""
        };
        let mut response = self
            .db
            .query(format!(
                "SELECT record::id(id) AS registration_id, region, location, date, updated_at \
                 FROM line WHERE kind = 'manual_review' {filter} \
                 ORDER BY updated_at LIMIT {MAX_REVIEWS_LISTED}"
            ))
            .bind(json!({ "region": region }))
            .await
            .context("Failed to list the manual reviews")?;
        let rows: Vec<Value> = response
            .take(0)
            .context("Failed to list the manual reviews")?;
        typed(rows).context("Failed to list the manual reviews")
    }
}

/// An availability row as [`Availability`] reads it from a `slot` record.
const AVAILABILITY: &str = "region, location, date, capacity ?? 0 AS capacity, \
     math::max([0, (capacity ?? 0) - (reserved ?? 0)]) AS remaining, waiting ?? 0 AS waiting";

/// Where a read of the slot table stood: the checkpoints of the two streams that write slots
/// (capacities from intake, counts from decisions). The next read takes what came after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCursor {
    /// The intake stream's checkpoint.
    pub intake: u64,
    /// The decisions stream's checkpoint.
    pub decisions: u64,
}

/// Slot rows read at one cut ([`Store::slots_since`]).
#[derive(Debug, Clone)]
pub struct SlotRows {
    /// The cut: the next read asks for what changed after it.
    pub cursor: SlotCursor,
    /// Every slot (ordered by region, location, date), or only those changed since the
    /// cursor asked for (in no order, a slot possibly twice).
    pub whole: bool,
    /// The rows.
    pub rows: Vec<Availability>,
}

/// A `registration` row as stored: a [`Registration`] with its place in line (the intake
/// sequence of its submission) instead of its position.
#[derive(Debug, Deserialize)]
struct RegistrationRow {
    status: Status,
    reason: Option<String>,
    region: String,
    location: String,
    date: String,
    updated_at: String,
    line_seq: Option<u64>,
}

/// Rows as read (JSON objects) as the typed rows they are. A missing field and a `null` are
/// both `None` in an optional one: stores written by older versions hold either.
fn typed<T: DeserializeOwned>(rows: Vec<Value>) -> serde_json::Result<Vec<T>> {
    rows.into_iter().map(serde_json::from_value).collect()
}
