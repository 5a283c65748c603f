//! The SurrealDB side of the projections: schema, the batched idempotent writes, the reads.
//!
//! Tables:
//! - `registration:⟨id⟩` — status, reason, region, location, date, updated_at, and for a
//!   waiting registration its place in line (`line_seq`), from which its position is counted;
//! - `line:⟨id⟩` — the registrations waiting for something, and only those: `waitlisted`
//!   ones (with `line_seq`, to count a position) and those in `manual_review` (the operators'
//!   list). A row comes with the status and goes with the next one. Most registrations never
//!   wait, so the lists are read from this small table instead of an index over every
//!   registration's status, which cost a quarter of the projections' CPU per registration
//!   (docs/write-path.md);
//! - `slot:[region, location, date]` — capacity (from intake), reserved and waiting (from
//!   decisions);
//! - `dead_letter:⟨notification id⟩` — messages that could not be delivered, until re-driven;
//! - `checkpoint:⟨stream⟩` — the last stream sequence applied.
//!
//! A batch of events and its checkpoint are written in one transaction, so each stream
//! sequence is applied exactly once: after a crash the worker resumes at checkpoint + 1 and
//! re-applies nothing. Writes from the two streams commute (a slot's capacity from intake, its
//! counts from decisions). Submissions write nothing: a registration's row starts with its
//! first decision, and the read API answers `received` until then (see
//! [`crate::worker::projected_streams`]).

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};
use streams::events::{Envelope, Event};
use streams::model::Status;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

/// Where the projections live: `surrealkv://<dir>` (embedded, default), `mem://` (tests) or
/// `ws://host:port` (a SurrealDB server, with credentials).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The endpoint.
    pub endpoint: String,
    /// Root credentials for a remote server (`REG_SURREAL_USER`, `REG_SURREAL_PASS`).
    pub credentials: Option<(String, streams::settings::Secret)>,
    /// The database the projections live in: [`LIVE_DATABASE`] unless an operator switched
    /// the read API to a rebuilt one (`REG_SURREAL_DATABASE`, see [`crate::rebuild`]).
    pub database: String,
}

impl StoreOptions {
    /// The live database at `endpoint`, without credentials.
    pub fn new(endpoint: impl Into<String>) -> Self {
        StoreOptions {
            endpoint: endpoint.into(),
            credentials: None,
            database: LIVE_DATABASE.to_owned(),
        }
    }
}

/// The most registrations one manual-review listing returns.
pub const MAX_REVIEWS_LISTED: usize = 1000;

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Another worker applied past the checkpoint this batch follows: resume from the store.
    #[error("another worker moved the checkpoint first")]
    CheckpointMoved,
    /// SurrealDB failed.
    #[error(transparent)]
    Store(anyhow::Error),
}

/// A connection to the projection database.
#[derive(Clone)]
pub struct Store {
    db: Surreal<Any>,
}

const SCHEMA: &str = "
DEFINE TABLE IF NOT EXISTS registration SCHEMALESS;
DEFINE TABLE IF NOT EXISTS slot SCHEMALESS;
DEFINE TABLE IF NOT EXISTS checkpoint SCHEMALESS;
DEFINE TABLE IF NOT EXISTS dead_letter SCHEMALESS;
DEFINE TABLE IF NOT EXISTS line SCHEMALESS;
DEFINE TABLE IF NOT EXISTS meta SCHEMALESS;
DEFINE INDEX IF NOT EXISTS slot_region ON slot FIELDS region, location, date;
DEFINE INDEX IF NOT EXISTS line_kind ON line FIELDS kind, region, location, date;
";

/// Stores written before the `line` table listed the waiting registrations through an index
/// on every registration's status: the waiting ones get their `line` rows (the table is
/// refilled from the registrations, so running it again changes nothing) and the index goes.
/// It runs once per store (`meta:line`), and again whenever the old index is back: an older
/// version still running beside this one, or rolled back to, defines it and writes statuses
/// without keeping `line` up to date.
const MIGRATE_TO_LINE: &str = "
BEGIN TRANSACTION;
LET $old_index = (INFO FOR TABLE registration).indexes.registration_status != NONE;
IF $old_index OR (SELECT VALUE done FROM ONLY meta:line) != true {
    DELETE line;
    INSERT INTO line (
        SELECT record::id(id) AS id, status AS kind, region, location, date, line_seq, updated_at
        FROM registration WHERE status IN ['waitlisted', 'manual_review']
    );
    REMOVE INDEX IF EXISTS registration_status ON registration;
    UPSERT meta:line SET done = true;
};
COMMIT TRANSACTION;
";

/// Attempts at [`MIGRATE_TO_LINE`]: two read-API replicas opening one SurrealDB server at
/// once both run it, and one transaction loses the conflict; its retry finds the work done.
const MIGRATE_ATTEMPTS: usize = 3;

/// The namespace every projection database lives in.
const NAMESPACE: &str = "registration";

/// The database the live projections (and the read API) use.
pub const LIVE_DATABASE: &str = "projections";

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

/// One change to apply, flattened from an event: the shape the batch query reads.
#[derive(Debug, Serialize, PartialEq)]
struct Op {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<[String; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reserved: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<u32>,
    /// A waiting registration's place in line (its submission's intake sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    line_seq: Option<u64>,
    /// A dead letter's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<Value>,
    /// Whether the registration may have been waiting before this status (so its `line`
    /// row, if any, goes). Not for a first decision that reserves or waitlists: nothing
    /// waits before those, and most registrations take that path.
    #[serde(skip)]
    may_leave_line: bool,
    at: String,
    seq: u64,
}

/// A slot's `updated_at` is the latest time of any change to it, whichever stream's worker
/// applied its change last: the two workers' progress interleaves differently in a rebuild,
/// and the result must not depend on it.
///
/// One statement per kind of change: the kinds touch different records or tables (a batch
/// comes from one stream: intake gives `capacity`, decisions give `status` and `counts`), so
/// grouping them keeps the result of applying the batch in order. The registration rows, most
/// of the volume, go in as one bulk `INSERT … ON DUPLICATE KEY UPDATE`: a status row sets
/// everything it names. It comes last: with the in-memory engine (tests) each statement of a
/// transaction takes a savepoint that copies what the transaction has written so far (about
/// 6 % of the projections' CPU in a profile), so the few slot and checkpoint writes go first
/// and copy almost nothing.
const APPLY: &str = "
BEGIN TRANSACTION;
IF ((SELECT VALUE seq FROM ONLY type::record('checkpoint', $stream)) ?? 0) != $expected {
    THROW 'checkpoint_moved';
};
FOR $e IN $capacities {
    UPSERT type::record('slot', $e.slot) SET
        region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
        capacity = $e.capacity, reserved = reserved ?? 0,
        updated_at = IF updated_at = NONE OR $e.at > updated_at { $e.at } ELSE { updated_at };
};
FOR $e IN $counts {
    UPSERT type::record('slot', $e.slot) SET
        region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
        capacity = capacity ?? $e.capacity, reserved = $e.reserved ?? reserved ?? 0,
        waiting = $e.waiting ?? waiting ?? 0,
        updated_at = IF updated_at = NONE OR $e.at > updated_at { $e.at } ELSE { updated_at };
};
FOR $d IN $dead {
    UPSERT type::record('dead_letter', $d.notification_id) CONTENT $d;
};
FOR $n IN $delivered {
    DELETE type::record('dead_letter', $n);
};
UPSERT type::record('checkpoint', $stream) SET seq = $seq;
FOR $l IN $lined {
    UPSERT type::record('line', $l.id) CONTENT $l.row;
};
FOR $id IN $unlined {
    DELETE type::record('line', $id);
};
INSERT INTO registration $statuses ON DUPLICATE KEY UPDATE
    region = $input.region, location = $input.location, date = $input.date,
    status = $input.status, reason = $input.reason, updated_at = $input.updated_at,
    decision_seq = $input.decision_seq, line_seq = $input.line_seq;
COMMIT TRANSACTION;
";

/// A batch's changes grouped by kind, in log order within each kind, with every run of
/// changes to one record folded into the one change that leaves the same state:
/// - `status` sets every field it names: the last one wins;
/// - `counts` keeps an existing capacity, else the first change's, and sets each count the
///   changes name: so the first's capacity, each count's last value and the last time;
/// - `capacity` sets the capacity and keeps the count: the last one wins;
/// - a dead letter is written by `NotificationFailed` and removed by a `NotificationSent` of
///   the same notification id: the last one wins, so the batch's dead letters and its
///   deliveries name different ids and the order [`APPLY`] writes them in does not matter
///   (the same records in other batches, as a rebuild reads them, give the same table).
#[derive(Debug, Default)]
struct Grouped {
    statuses: Vec<Op>,
    capacities: Vec<Op>,
    counts: Vec<Op>,
    /// Dead letters (undeliverable messages) whose last record in the batch is a failure.
    dead: Vec<Value>,
    /// Notification ids whose last record in the batch is a delivery (a re-drive, or a
    /// failure that a later decision's message under the same id made good): their dead
    /// letters go.
    delivered: Vec<String>,
}

/// Appends `op` to `list`, or folds it into the change already there for `key`.
fn fold<K: std::hash::Hash + Eq>(
    list: &mut Vec<Op>,
    index: &mut std::collections::HashMap<K, usize>,
    key: K,
    op: Op,
    merge: fn(&mut Op, Op),
) {
    match index.entry(key) {
        std::collections::hash_map::Entry::Occupied(at) => merge(&mut list[*at.get()], op),
        std::collections::hash_map::Entry::Vacant(at) => {
            at.insert(list.len());
            list.push(op);
        }
    }
}

fn group(ops: Vec<Op>) -> Grouped {
    let mut grouped = Grouped::default();
    let (mut status_of, mut capacity_of, mut counts_of) = Default::default();
    let last_wins: fn(&mut Op, Op) = |earlier, later| *earlier = later;
    // The last status wins, but a registration that may have waited at any point of the
    // batch (or before it) may still hold a line row to remove.
    let last_status_wins: fn(&mut Op, Op) = |earlier, later| {
        let waited = earlier.may_leave_line || matches!(line_change(earlier), Some(Some(_)));
        *earlier = later;
        earlier.may_leave_line |= waited;
    };
    // Per notification id, its last record in the batch: a dead letter's row, or none (sent).
    let mut notifications: Vec<(String, Option<Value>)> = Vec::new();
    let mut notification_of: std::collections::HashMap<String, usize> = Default::default();
    for op in ops {
        match op.op {
            "status" => {
                let id = op.id.clone().unwrap_or_default();
                fold(
                    &mut grouped.statuses,
                    &mut status_of,
                    id,
                    op,
                    last_status_wins,
                );
            }
            "capacity" => {
                let slot = op.slot.clone().unwrap_or_default();
                fold(
                    &mut grouped.capacities,
                    &mut capacity_of,
                    slot,
                    op,
                    last_wins,
                );
            }
            "counts" => {
                let slot = op.slot.clone().unwrap_or_default();
                fold(
                    &mut grouped.counts,
                    &mut counts_of,
                    slot,
                    op,
                    |first, later| {
                        first.capacity = first.capacity.or(later.capacity);
                        first.reserved = later.reserved.or(first.reserved);
                        first.waiting = later.waiting.or(first.waiting);
                        first.at = later.at;
                        first.seq = later.seq;
                    },
                );
            }
            "dead" | "delivered" => {
                let Some(id) = op.id else { continue };
                match notification_of.entry(id.clone()) {
                    std::collections::hash_map::Entry::Occupied(at) => {
                        notifications[*at.get()].1 = op.row;
                    }
                    std::collections::hash_map::Entry::Vacant(at) => {
                        at.insert(notifications.len());
                        notifications.push((id, op.row));
                    }
                }
            }
            other => unreachable!("no change of kind {other}"),
        }
    }
    for (id, row) in notifications {
        match row {
            Some(row) => grouped.dead.push(row),
            None => grouped.delivered.push(id),
        }
    }
    grouped
}

/// A `status` change as a registration row (see [`APPLY`]); no `reason` field when it has
/// none, so the update removes an earlier one.
fn status_row(op: &Op) -> Value {
    let slot = op.slot.clone().unwrap_or_default();
    let mut row = json!({
        "id": op.id, "region": slot[0], "location": slot[1], "date": slot[2],
        "status": op.status, "updated_at": op.at, "decision_seq": op.seq,
    });
    if let Some(reason) = &op.reason {
        row["reason"] = json!(reason);
    }
    if let Some(line_seq) = op.line_seq {
        row["line_seq"] = json!(line_seq);
    }
    row
}

/// The `line` change a registration's last status in a batch makes: its row while it waits
/// (`Some(row)`), its row removed when it may have waited before (`None`), or nothing.
fn line_change(op: &Op) -> Option<Option<Value>> {
    let waits = [Status::Waitlisted.as_str(), Status::ManualReview.as_str()];
    if op.status.is_some_and(|s| waits.contains(&s)) {
        let slot = op.slot.clone().unwrap_or_default();
        let mut row = json!({
            "kind": op.status, "region": slot[0], "location": slot[1], "date": slot[2],
            "updated_at": op.at,
        });
        if let Some(line_seq) = op.line_seq {
            row["line_seq"] = json!(line_seq);
        }
        Some(Some(row))
    } else if op.may_leave_line {
        Some(None)
    } else {
        None
    }
}

fn slot_of(slot: &streams::model::SlotKey) -> Option<[String; 3]> {
    Some([
        slot.region.to_string(),
        slot.location.to_string(),
        slot.date.to_string(),
    ])
}

/// The changes an event makes to the projections (none for events they do not show).
fn ops_of(seq: u64, envelope: &Envelope) -> Vec<Op> {
    let at = envelope
        .occurred_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let base = |op: &'static str| Op {
        op,
        id: None,
        slot: None,
        status: None,
        reason: None,
        capacity: None,
        reserved: None,
        waiting: None,
        line_seq: None,
        row: None,
        may_leave_line: true,
        at: at.clone(),
        seq,
    };
    let counts = |slot: &streams::model::SlotKey,
                  capacity: Option<u32>,
                  reserved: Option<u32>,
                  waiting: Option<u32>| Op {
        slot: slot_of(slot),
        capacity,
        reserved,
        waiting,
        ..base("counts")
    };
    let status = |id: &streams::model::RegistrationId,
                  slot: &streams::model::SlotKey,
                  status: streams::model::Status,
                  reason: Option<String>| Op {
        id: Some(id.to_string()),
        slot: slot_of(slot),
        status: Some(status.as_str()),
        reason,
        ..base("status")
    };
    match &envelope.event {
        Event::CapacitySet(e) => vec![Op {
            slot: slot_of(&e.slot),
            capacity: Some(e.capacity),
            ..base("capacity")
        }],
        Event::SlotReserved(e) => vec![
            Op {
                may_leave_line: false,
                ..status(&e.registration_id, &e.slot, Status::Reserved, None)
            },
            counts(&e.slot, Some(e.capacity), Some(e.reserved), None),
        ],
        Event::RegistrationWaitlisted(e) => vec![
            Op {
                line_seq: Some(e.intake_seq),
                may_leave_line: false,
                ..status(&e.registration_id, &e.slot, Status::Waitlisted, None)
            },
            counts(&e.slot, None, None, Some(e.waiting)),
        ],
        Event::WaitlistPromoted(e) => vec![
            status(&e.registration_id, &e.slot, Status::Reserved, None),
            counts(&e.slot, Some(e.capacity), Some(e.reserved), Some(e.waiting)),
        ],
        Event::SlotRejected(e) => {
            let mut ops = vec![status(
                &e.registration_id,
                &e.slot,
                Status::Rejected,
                Some(e.reason.as_str().to_owned()),
            )];
            if e.waiting.is_some() {
                ops.push(counts(&e.slot, None, None, e.waiting));
            }
            ops
        }
        Event::SlotReleased(e) => vec![counts(&e.slot, Some(e.capacity), Some(e.reserved), None)],
        Event::ReviewRequired(e) => {
            vec![status(
                &e.registration_id,
                &e.slot,
                Status::ManualReview,
                None,
            )]
        }
        Event::VerificationRequeued(e) => {
            vec![status(&e.registration_id, &e.slot, Status::Reserved, None)]
        }
        Event::RegistrationConfirmed(e) => {
            vec![status(&e.registration_id, &e.slot, Status::Confirmed, None)]
        }
        Event::NotificationFailed(e) => {
            // A dead letter written before codes existed holds the provider's own words.
            let (error_code, last_error) = streams::outside::shown(&e.error_code, &e.last_error);
            vec![Op {
                id: Some(e.notification_id.clone()),
                row: Some(json!({
                    "notification_id": e.notification_id, "registration_id": e.registration_id,
                    "channel": e.channel, "template": e.template, "decision_seq": e.decision_seq,
                    "attempts": e.attempts, "error_code": error_code, "last_error": last_error,
                    "at": at,
                })),
                ..base("dead")
            }]
        }
        Event::NotificationSent(e) => vec![Op {
            id: Some(e.notification_id.clone()),
            ..base("delivered")
        }],
        Event::RegistrationCancelled(e) => {
            let mut ops = vec![status(&e.registration_id, &e.slot, Status::Cancelled, None)];
            if e.waiting.is_some() {
                ops.push(counts(&e.slot, None, None, e.waiting));
            }
            ops
        }
        _ => Vec::new(),
    }
}

impl Store {
    /// Connects (creating the embedded database if needed) and defines the schema.
    pub async fn open(options: &StoreOptions) -> anyhow::Result<Self> {
        let db = surrealdb::engine::any::connect(options.endpoint.as_str())
            .await
            .with_context(|| format!("Failed to open SurrealDB at {}", options.endpoint))?;
        if let Some((username, password)) = &options.credentials {
            db.signin(surrealdb::opt::auth::Root {
                username: username.clone(),
                password: password.expose().to_owned(),
            })
            .await
            .context("Failed to sign in to SurrealDB")?;
        }
        Store::in_database(db, &options.database).await
    }

    /// The projections in database `name` beside this one, on the same connection (a
    /// session of its own), the schema defined: where a rebuild writes while the live
    /// projections go on.
    pub async fn database(&self, name: &str) -> anyhow::Result<Self> {
        Store::in_database(self.db.clone(), name).await
    }

    async fn in_database(db: Surreal<Any>, name: &str) -> anyhow::Result<Self> {
        db.use_ns(NAMESPACE)
            .use_db(name)
            .await
            .with_context(|| format!("Failed to select the SurrealDB database {name}"))?;
        db.query(SCHEMA)
            .await
            .and_then(|r| r.check())
            .context("Failed to define the projection schema")?;
        let mut attempt = 1;
        loop {
            match db.query(MIGRATE_TO_LINE).await.and_then(|r| r.check()) {
                Ok(_) => break,
                Err(err) if attempt < MIGRATE_ATTEMPTS => {
                    tracing::warn!(error = %err, attempt, "Moving the waiting registrations to the line table failed; trying again.");
                    attempt += 1;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context("Failed to move the waiting registrations to the line table"));
                }
            }
        }
        Ok(Store { db })
    }

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

    /// The last sequence of `stream` applied (0 if none).
    pub async fn checkpoint(&self, stream: &str) -> anyhow::Result<u64> {
        let mut response = self
            .db
            .query("SELECT VALUE seq FROM ONLY type::record('checkpoint', $stream)")
            .bind(json!({ "stream": stream }))
            .await
            .context("Failed to read a checkpoint")?;
        let seq: Option<Value> = response.take(0).context("Failed to read a checkpoint")?;
        Ok(seq.and_then(|v| v.as_u64()).unwrap_or(0))
    }

    /// Applies a batch of `(sequence, event)` read from `stream`, in one transaction with the
    /// new checkpoint, only if the checkpoint is still `expected` (the one the batch follows).
    /// `last_seq` is the sequence of the last message read, which may carry no change (events
    /// the projections do not show still advance the checkpoint).
    ///
    /// The condition makes the workers safe to run twice against one SurrealDB server (two
    /// read-API replicas): a batch another worker applied first fails with
    /// [`ApplyError::CheckpointMoved`] and changes nothing, so no status or checkpoint ever
    /// moves backwards.
    pub async fn apply(
        &self,
        stream: &str,
        events: &[(u64, Envelope)],
        expected: u64,
        last_seq: u64,
    ) -> Result<(), ApplyError> {
        let ops: Vec<Op> = events.iter().flat_map(|(seq, e)| ops_of(*seq, e)).collect();
        let grouped = group(ops);
        let statuses: Vec<Value> = grouped.statuses.iter().map(status_row).collect();
        let (mut lined, mut unlined) = (Vec::new(), Vec::new());
        for op in &grouped.statuses {
            match line_change(op) {
                Some(Some(row)) => lined.push(json!({ "id": op.id, "row": row })),
                Some(None) => unlined.extend(op.id.clone()),
                None => {}
            }
        }
        self.db
            .query(APPLY)
            .bind(json!({
                "statuses": statuses,
                "lined": lined,
                "unlined": unlined,
                "capacities": grouped.capacities,
                "counts": grouped.counts,
                "dead": grouped.dead,
                "delivered": grouped.delivered,
                "stream": stream,
                "expected": expected,
                "seq": last_seq,
            }))
            .await
            .and_then(|r| r.check())
            .map_err(|err| {
                if err.to_string().contains("checkpoint_moved") {
                    ApplyError::CheckpointMoved
                } else {
                    ApplyError::Store(
                        anyhow::Error::new(err)
                            .context("Failed to apply a batch to the projections"),
                    )
                }
            })?;
        Ok(())
    }

    /// Availability rows, filtered by any of region, location, date.
    pub async fn availability(
        &self,
        region: Option<&str>,
        location: Option<&str>,
        date: Option<&str>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut conditions = Vec::new();
        if region.is_some() {
            conditions.push("region = $region");
        }
        if location.is_some() {
            conditions.push("location = $location");
        }
        if date.is_some() {
            conditions.push("date = $date");
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let query = format!(
            "SELECT region, location, date, capacity ?? 0 AS capacity, \
             math::max([0, (capacity ?? 0) - (reserved ?? 0)]) AS remaining, \
             waiting ?? 0 AS waiting \
             FROM slot {filter} ORDER BY region, location, date"
        );
        let mut response = self
            .db
            .query(query)
            .bind(json!({ "region": region, "location": location, "date": date }))
            .await
            .context("Failed to read availability")?;
        let rows: Vec<Value> = response.take(0).context("Failed to read availability")?;
        Ok(rows)
    }

    /// A registration's projected record, if the projection has it. A waiting registration's
    /// `position` (1 = next in line) is counted from those still waiting ahead of it.
    pub async fn registration(&self, id: &str) -> anyhow::Result<Option<Value>> {
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
        let Some(Value::Object(mut row)) = row else {
            return Ok(row);
        };
        let line_seq = row.remove("line_seq");
        if row.get("status").and_then(Value::as_str) == Some(Status::Waitlisted.as_str()) {
            let mut response = self
                .db
                .query(
                    "SELECT count() AS ahead FROM line \
                     WHERE kind = 'waitlisted' AND region = $region AND location = $location \
                     AND date = $date AND line_seq < $line_seq GROUP ALL",
                )
                .bind(json!({
                    "region": row.get("region"), "location": row.get("location"),
                    "date": row.get("date"), "line_seq": line_seq,
                }))
                .await
                .context("Failed to count a registration's place in line")?;
            let ahead: Option<u64> = response
                .take((0, "ahead"))
                .context("Failed to count a registration's place in line")?;
            row.insert("position".into(), json!(ahead.unwrap_or(0) + 1));
        }
        Ok(Some(Value::Object(row)))
    }

    /// The undeliverable messages (dead letters) not re-driven since, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<Value>> {
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
        Ok(rows)
    }

    /// The registrations in manual review, oldest first, optionally of one region.
    pub async fn reviews(&self, region: Option<&str>) -> anyhow::Result<Vec<Value>> {
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
        Ok(rows)
    }

    /// Whether the database answers.
    pub async fn is_healthy(&self) -> bool {
        self.db.health().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: &'static str, id: &str, slot: &str, value: u32, seq: u64) -> Op {
        Op {
            op: kind,
            id: (!id.is_empty()).then(|| id.to_owned()),
            slot: Some(["r".into(), slot.into(), "2027-03-01".into()]),
            status: (kind == "status").then_some(if value == 0 { "reserved" } else { "cancelled" }),
            reason: None,
            capacity: matches!(kind, "capacity" | "counts").then_some(100 + value),
            reserved: (kind == "counts").then_some(value),
            waiting: None,
            line_seq: None,
            row: None,
            may_leave_line: true,
            at: format!("t{seq}"),
            seq,
        }
    }

    /// Registration number `n`'s id.
    fn id(n: u32) -> String {
        format!("mazowieckie.{n:032x}")
    }

    /// Registration number `n`'s row in the line table, as a snapshot names it.
    fn line_row(n: u32) -> String {
        format!("line:`{}`", id(n))
    }

    /// The index an older version defines on every registration's status.
    const OLD_INDEX: &str =
        "DEFINE INDEX registration_status ON registration FIELDS status, region, location, date;";

    /// The sample event of type `kind` for registration number `n` ([`id`]), at
    /// `intake_seq`.
    fn event(kind: &str, n: u32, intake_seq: u64) -> Envelope {
        let sample = streams::events::samples()
            .into_iter()
            .find(|e| e.event.event_type() == kind)
            .expect("a sample of every type");
        let mut value = serde_json::to_value(&sample).unwrap();
        value["data"]["registration_id"] = json!(id(n));
        value["data"]["intake_seq"] = json!(intake_seq);
        serde_json::from_value(value).unwrap()
    }

    async fn line_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store.snapshot().await.unwrap().tables["line"]
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn only_waiting_registrations_are_in_line_and_they_leave_with_their_next_status() {
        let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        let batch = vec![
            (1, event("SlotReserved", 1, 1)),
            (2, event("RegistrationWaitlisted", 2, 20)),
            (3, event("RegistrationWaitlisted", 3, 30)),
            (4, event("ReviewRequired", 4, 40)),
            (5, event("RegistrationWaitlisted", 5, 50)),
        ];
        store.apply("S", &batch, 0, 5).await.unwrap();
        // Registration 1 was reserved at once: it never waited, so it has no line row.
        assert_eq!(line_ids(&store).await, [2, 3, 4, 5].map(line_row));
        let position = async |n: u32| {
            let row = store.registration(&id(n)).await.unwrap().unwrap();
            row.get("position").and_then(Value::as_u64)
        };
        assert_eq!(
            (position(2).await, position(3).await, position(5).await),
            (Some(1), Some(2), Some(3))
        );
        let reviews = store.reviews(None).await.unwrap();
        assert_eq!(reviews.len(), 1, "{reviews:?}");
        assert_eq!(reviews[0]["registration_id"], id(4));

        // The first in line is promoted, the review confirmed, the last cancelled: each
        // leaves the line, and the one left moves up.
        let batch = vec![
            (6, event("WaitlistPromoted", 2, 20)),
            (7, event("RegistrationConfirmed", 4, 40)),
            (8, event("RegistrationCancelled", 5, 50)),
        ];
        store.apply("S", &batch, 5, 8).await.unwrap();
        assert_eq!(line_ids(&store).await, [line_row(3)]);
        assert_eq!((position(2).await, position(3).await), (None, Some(1)));
        assert!(store.reviews(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_store_from_before_the_line_table_gets_its_waiting_registrations_in_line() {
        let live = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        let batch = vec![
            (1, event("RegistrationWaitlisted", 2, 20)),
            (2, event("RegistrationWaitlisted", 3, 30)),
            (3, event("ReviewRequired", 4, 40)),
            (4, event("SlotReserved", 1, 1)),
        ];
        live.apply("S", &batch, 0, 4).await.unwrap();
        let expected = live.snapshot().await.unwrap();
        // The same registrations as an older version left them: no line rows, the status
        // index, no record of the move.
        let old = live.database("before_line").await.unwrap();
        old.apply("S", &batch, 0, 4).await.unwrap();
        old.db
            .query(format!("DELETE line; DELETE meta:line; {OLD_INDEX}"))
            .await
            .and_then(|r| r.check())
            .unwrap();
        assert!(old.snapshot().await.unwrap().tables["line"].is_empty());

        let upgraded = live.database("before_line").await.unwrap();
        assert_eq!(upgraded.snapshot().await.unwrap(), expected);
        let mut info = upgraded
            .db
            .query("INFO FOR TABLE registration")
            .await
            .unwrap();
        let info: Option<Value> = info.take(0).unwrap();
        assert_eq!(
            info.unwrap()["indexes"],
            json!({}),
            "the status index is gone"
        );
        // Once: a later open finds the move done and leaves the line as it is.
        upgraded.db.query("DELETE line").await.unwrap();
        let again = live.database("before_line").await.unwrap();
        assert!(again.snapshot().await.unwrap().tables["line"].is_empty());

        // An older version opening the store meanwhile brings its index back (and writes
        // statuses without line rows): the next open of this version moves them again.
        again
            .db
            .query(OLD_INDEX)
            .await
            .and_then(|r| r.check())
            .unwrap();
        let repaired = live.database("before_line").await.unwrap();
        assert_eq!(repaired.snapshot().await.unwrap(), expected);
    }

    #[test]
    fn a_registration_that_waited_earlier_in_a_batch_leaves_the_line_whatever_ends_it() {
        let waitlisted = Op {
            status: Some(Status::Waitlisted.as_str()),
            line_seq: Some(7),
            may_leave_line: false,
            ..op("status", "a", "x", 0, 1)
        };
        // A first decision that leaves nothing behind, as a later status in the same batch.
        let reserved = Op {
            may_leave_line: false,
            ..op("status", "a", "x", 0, 2)
        };
        let grouped = group(vec![waitlisted, reserved]);
        assert_eq!(grouped.statuses.len(), 1);
        assert_eq!(grouped.statuses[0].status, Some("reserved"));
        assert_eq!(line_change(&grouped.statuses[0]), Some(None));
        // Reserved at once, alone: no line change at all.
        let alone = group(vec![Op {
            may_leave_line: false,
            ..op("status", "b", "x", 0, 3)
        }]);
        assert_eq!(line_change(&alone.statuses[0]), None);
    }

    #[test]
    fn a_batch_folds_into_one_change_per_record_with_the_same_result() {
        let grouped = group(vec![
            op("status", "a", "x", 0, 1),
            op("counts", "", "x", 1, 2),
            op("status", "b", "x", 0, 3),
            op("counts", "", "x", 2, 4),
            op("status", "a", "x", 1, 5),
            op("counts", "", "y", 1, 6),
            op("counts", "", "x", 1, 7),
        ]);
        // The last status of each registration, in first-seen order.
        let statuses: Vec<_> = grouped
            .statuses
            .iter()
            .map(|o| (o.id.clone().unwrap(), o.status.unwrap(), o.seq))
            .collect();
        assert_eq!(
            statuses,
            [("a".into(), "cancelled", 5), ("b".into(), "reserved", 3)]
        );
        // Per slot: the first change's capacity, the last change's count and time.
        let x = &grouped.counts[0];
        assert_eq!(
            (x.capacity, x.reserved, x.seq, x.at.as_str()),
            (Some(101), Some(1), 7, "t7")
        );
        assert_eq!(grouped.counts[1].slot.as_ref().unwrap()[1], "y");
        assert_eq!(grouped.counts.len(), 2);
        assert!(grouped.capacities.is_empty());
    }

    #[test]
    fn events_the_projections_do_not_show_make_no_change() {
        let samples = streams::events::samples();
        let shown: Vec<&str> = samples
            .iter()
            .filter(|e| !ops_of(1, e).is_empty())
            .map(|e| e.event.event_type())
            .collect();
        assert_eq!(
            shown,
            [
                "CapacitySet",
                "SlotReserved",
                "SlotRejected",
                "SlotReleased",
                "RegistrationWaitlisted",
                "WaitlistPromoted",
                "ReviewRequired",
                "VerificationRequeued",
                "RegistrationConfirmed",
                "RegistrationCancelled",
                "NotificationSent",
                "NotificationFailed"
            ]
        );
    }

    /// Every event of the contract, applied to a fresh store in one batch: no kind of change
    /// may fail on an empty database (a delete from a table nothing wrote to yet did once).
    #[tokio::test]
    async fn every_event_applies_to_a_fresh_store() {
        let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        let batch: Vec<(u64, Envelope)> = streams::events::samples()
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect();
        // Each kind alone first, then all together.
        for (seq, event) in &batch {
            store
                .apply(event.event.event_type(), &[(*seq, event.clone())], 0, *seq)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", event.event.event_type()));
        }
        let last = batch.len() as u64;
        store.apply("S", &batch, 0, last).await.unwrap();
        assert_eq!(store.checkpoint("S").await.unwrap(), last);
    }

    /// Two workers projecting one stream into one database: the one that read an older
    /// checkpoint is refused and changes nothing. Before the fix, its batch overwrote the
    /// newer statuses and moved the checkpoint back.
    #[tokio::test]
    async fn a_batch_that_does_not_follow_the_checkpoint_changes_nothing() {
        let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        let samples = streams::events::samples();
        let capacity = samples
            .iter()
            .find(|e| e.event.event_type() == "CapacitySet")
            .unwrap()
            .clone();
        store
            .apply("S", &[(1, capacity.clone())], 0, 1)
            .await
            .unwrap();
        store
            .apply("S", &[(2, capacity.clone())], 1, 5)
            .await
            .unwrap();
        let stale = store.apply("S", &[(1, capacity)], 0, 1).await;
        assert!(
            matches!(stale, Err(ApplyError::CheckpointMoved)),
            "{stale:?}"
        );
        assert_eq!(store.checkpoint("S").await.unwrap(), 5, "never moved back");
    }

    /// A snapshot reads every table with its checkpoints; a second database on the same
    /// connection is separate from the first.
    #[tokio::test]
    async fn a_snapshot_holds_every_table_and_databases_are_separate() {
        let live = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        let other = live.database("rebuild_test").await.unwrap();
        let batch: Vec<(u64, Envelope)> = streams::events::samples()
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect();
        let last = batch.len() as u64;
        live.apply("S", &batch, 0, last).await.unwrap();

        let snapshot = live.snapshot().await.unwrap();
        assert_eq!(snapshot.checkpoint("S"), last);
        // (The samples' notification is sent, then dead-lettered under the same id: it stays.)
        for table in ["registration", "slot", "dead_letter"] {
            assert!(!snapshot.tables[table].is_empty(), "{table}: {snapshot:?}");
        }
        let empty = other.snapshot().await.unwrap();
        assert!(
            empty.tables.values().all(|rows| rows.is_empty()),
            "{empty:?}"
        );
        assert_eq!(empty.checkpoint("S"), 0);

        // The same batch applied to the other database gives the same snapshot.
        other.apply("S", &batch, 0, last).await.unwrap();
        assert_eq!(other.snapshot().await.unwrap(), snapshot);
    }

    /// A read API switched to a rebuilt database (`REG_SURREAL_DATABASE`) opens that one,
    /// with its checkpoints, not the live one.
    #[tokio::test]
    async fn a_store_opened_on_a_named_database_writes_and_reads_that_database() {
        let switched = Store::open(&StoreOptions {
            database: "rebuild_x".into(),
            ..StoreOptions::new("mem://")
        })
        .await
        .unwrap();
        let batch: Vec<(u64, Envelope)> = streams::events::samples()
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect();
        switched.apply("S", &batch, 0, 7).await.unwrap();
        let same = switched.database("rebuild_x").await.unwrap();
        assert_eq!(same.checkpoint("S").await.unwrap(), 7);
        let live = switched.database(LIVE_DATABASE).await.unwrap();
        assert_eq!(live.checkpoint("S").await.unwrap(), 0);
    }

    /// The intake and decision workers apply their streams in whatever interleaving their
    /// progress gives; a rebuild applies them in another. The result must be the same: a
    /// slot's capacity set (intake) later than its last decision, applied before or after
    /// it. Before the fix, the slot kept the time of whichever was applied last.
    #[tokio::test]
    async fn the_two_streams_give_the_same_state_in_either_order() {
        let samples = streams::events::samples();
        let at = |event_type: &str, time: &str| {
            let mut e = samples
                .iter()
                .find(|e| e.event.event_type() == event_type)
                .unwrap()
                .clone();
            e.occurred_at = time.parse().unwrap();
            e
        };
        let capacity = at("CapacitySet", "2027-02-01T10:00:00Z");
        let reserved = at("SlotReserved", "2027-02-01T09:00:00Z");
        let mut snapshots = Vec::new();
        for intake_first in [true, false] {
            let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
            let intake = ("INTAKE", [(1, capacity.clone())]);
            let decisions = ("DECISIONS", [(1, reserved.clone())]);
            let order = if intake_first {
                [intake, decisions]
            } else {
                [decisions, intake]
            };
            for (stream, batch) in order {
                store.apply(stream, &batch, 0, 1).await.unwrap();
            }
            snapshots.push(store.snapshot().await.unwrap());
        }
        assert_eq!(snapshots[0], snapshots[1]);
        let slot = snapshots[0].tables["slot"].values().next().unwrap();
        assert_eq!(slot["updated_at"], "2027-02-01T10:00:00.000Z");
    }

    /// A live worker applies the log in whatever groups it happens to read; a rebuild reads
    /// it in others. A notification's records must give the same dead letters either way:
    /// one sent and then dead-lettered (a later decision's message failing under the same
    /// id) stays a dead letter; one dead-lettered, re-driven and then sent goes. Before the
    /// fix, a batch applied every dead letter before every delivery, so in one batch the
    /// first was lost, and one record per batch kept it.
    #[tokio::test]
    async fn dead_letters_are_the_same_in_one_batch_and_one_record_per_batch() {
        let notification = |event_type: &str, notification_id: &str| {
            let mut value = serde_json::to_value(
                streams::events::samples()
                    .into_iter()
                    .find(|e| e.event.event_type() == event_type)
                    .unwrap(),
            )
            .unwrap();
            value["data"]["notification_id"] = json!(notification_id);
            serde_json::from_value::<Envelope>(value).unwrap()
        };
        let log = vec![
            (1, notification("NotificationSent", "sent-then-failed")),
            (2, notification("NotificationFailed", "failed-then-sent")),
            (3, notification("NotificationFailed", "sent-then-failed")),
            (4, notification("NotificationSent", "failed-then-sent")),
        ];
        let one_batch = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        one_batch.apply("S", &log, 0, 4).await.unwrap();
        let one_per_batch = Store::open(&StoreOptions::new("mem://")).await.unwrap();
        for (seq, event) in &log {
            one_per_batch
                .apply("S", &[(*seq, event.clone())], seq - 1, *seq)
                .await
                .unwrap();
        }
        let comparison = crate::rebuild::compare(
            &one_batch.snapshot().await.unwrap(),
            &one_per_batch.snapshot().await.unwrap(),
        );
        assert!(comparison.equal, "{comparison:#?}");
        let dead: Vec<Value> = one_batch
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .map(|row| row["notification_id"].clone())
            .collect();
        assert_eq!(dead, [json!("sent-then-failed")]);
    }
}
