//! The SurrealDB side of the projections: schema, the batched idempotent writes, the reads.
//!
//! Tables:
//! - `registration:⟨id⟩` — status, reason, region, location, date, updated_at;
//! - `slot:[region, location, date]` — capacity (from intake), reserved (from decisions);
//! - `checkpoint:⟨stream⟩` — the last stream sequence applied.
//!
//! A batch of events and its checkpoint are written in one transaction, so each stream
//! sequence is applied exactly once: after a crash the worker resumes at checkpoint + 1 and
//! re-applies nothing. Writes from the two streams commute: a registration's `received`
//! (intake) never overwrites a decision that arrived first.

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};
use streams::events::{Envelope, Event};
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

/// Where the projections live: `surrealkv://<dir>` (embedded, default), `mem://` (tests) or
/// `ws://host:port` (a SurrealDB server, with credentials).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The endpoint.
    pub endpoint: String,
    /// Root credentials for a remote server.
    pub credentials: Option<(String, String)>,
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
DEFINE INDEX IF NOT EXISTS slot_region ON slot FIELDS region, location, date;
";

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
    at: String,
    seq: u64,
}

const APPLY: &str = "
BEGIN TRANSACTION;
FOR $e IN $ops {
    IF $e.op = 'received' {
        UPSERT type::record('registration', $e.id) SET
            region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
            status = status ?? 'received', updated_at = updated_at ?? $e.at,
            submitted_seq = $e.seq;
    } ELSE IF $e.op = 'status' {
        UPSERT type::record('registration', $e.id) SET
            region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
            status = $e.status, reason = $e.reason, updated_at = $e.at, decision_seq = $e.seq;
    } ELSE IF $e.op = 'capacity' {
        UPSERT type::record('slot', $e.slot) SET
            region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
            capacity = $e.capacity, reserved = reserved ?? 0, updated_at = $e.at;
    } ELSE IF $e.op = 'reserved' {
        UPSERT type::record('slot', $e.slot) SET
            region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
            capacity = capacity ?? $e.capacity, reserved = $e.reserved, updated_at = $e.at;
    };
};
UPSERT type::record('checkpoint', $stream) SET seq = $seq;
COMMIT TRANSACTION;
";

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
        at: at.clone(),
        seq,
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
    use streams::model::Status;
    match &envelope.event {
        Event::RegistrationSubmitted(e) => vec![Op {
            id: Some(e.registration_id.to_string()),
            slot: slot_of(&e.slot),
            ..base("received")
        }],
        Event::CapacitySet(e) => vec![Op {
            slot: slot_of(&e.slot),
            capacity: Some(e.capacity),
            ..base("capacity")
        }],
        Event::SlotReserved(e) => vec![
            status(&e.registration_id, &e.slot, Status::Reserved, None),
            Op {
                slot: slot_of(&e.slot),
                capacity: Some(e.capacity),
                reserved: Some(e.reserved),
                ..base("reserved")
            },
        ],
        Event::SlotRejected(e) => vec![status(
            &e.registration_id,
            &e.slot,
            Status::Rejected,
            Some(e.reason.as_str().to_owned()),
        )],
        Event::SlotReleased(e) => vec![Op {
            slot: slot_of(&e.slot),
            capacity: Some(e.capacity),
            reserved: Some(e.reserved),
            ..base("reserved")
        }],
        Event::RegistrationConfirmed(e) => {
            vec![status(&e.registration_id, &e.slot, Status::Confirmed, None)]
        }
        Event::RegistrationCancelled(e) => {
            vec![status(&e.registration_id, &e.slot, Status::Cancelled, None)]
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
                password: password.clone(),
            })
            .await
            .context("Failed to sign in to SurrealDB")?;
        }
        db.use_ns("registration")
            .use_db("projections")
            .await
            .context("Failed to select the SurrealDB namespace")?;
        db.query(SCHEMA)
            .await
            .and_then(|r| r.check())
            .context("Failed to define the projection schema")?;
        Ok(Store { db })
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
    /// new checkpoint. `last_seq` is the sequence of the last message read, which may carry no
    /// change (events the projections do not show still advance the checkpoint).
    pub async fn apply(
        &self,
        stream: &str,
        events: &[(u64, Envelope)],
        last_seq: u64,
    ) -> anyhow::Result<()> {
        let ops: Vec<Op> = events.iter().flat_map(|(seq, e)| ops_of(*seq, e)).collect();
        self.db
            .query(APPLY)
            .bind(json!({ "ops": ops, "stream": stream, "seq": last_seq }))
            .await
            .and_then(|r| r.check())
            .context("Failed to apply a batch to the projections")?;
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
             math::max([0, (capacity ?? 0) - (reserved ?? 0)]) AS remaining \
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

    /// A registration's projected record, if the projection has it.
    pub async fn registration(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let mut response = self
            .db
            .query(
                "SELECT status, reason, region, location, date, updated_at \
                 FROM ONLY type::record('registration', $id)",
            )
            .bind(json!({ "id": id }))
            .await
            .context("Failed to read a registration")?;
        let row: Option<Value> = response.take(0).context("Failed to read a registration")?;
        Ok(row)
    }

    /// Whether the database answers.
    pub async fn is_healthy(&self) -> bool {
        self.db.health().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "RegistrationSubmitted",
                "CapacitySet",
                "SlotReserved",
                "SlotRejected",
                "SlotReleased",
                "RegistrationConfirmed",
                "RegistrationCancelled"
            ]
        );
    }
}
