//! The projection schema (DDL), and the one migration of stores written before the `line`
//! table.

use anyhow::Context as _;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

const SCHEMA: &str = "
DEFINE TABLE IF NOT EXISTS registration SCHEMALESS;
DEFINE TABLE IF NOT EXISTS slot SCHEMALESS;
DEFINE TABLE IF NOT EXISTS checkpoint SCHEMALESS;
DEFINE TABLE IF NOT EXISTS dead_letter SCHEMALESS;
DEFINE TABLE IF NOT EXISTS line SCHEMALESS;
DEFINE TABLE IF NOT EXISTS meta SCHEMALESS;
DEFINE INDEX IF NOT EXISTS slot_region ON slot FIELDS region, location, date;
DEFINE INDEX IF NOT EXISTS slot_capacity_seq ON slot FIELDS capacity_seq;
DEFINE INDEX IF NOT EXISTS slot_counts_seq ON slot FIELDS counts_seq;
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

/// Defines the schema in the database `db` has selected, and moves the waiting registrations
/// of a store from before the `line` table into it ([`MIGRATE_TO_LINE`]).
pub(super) async fn define(db: &Surreal<Any>) -> anyhow::Result<()> {
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
    Ok(())
}
