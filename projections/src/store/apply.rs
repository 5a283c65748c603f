//! Applying a batch: its writes and its stream checkpoint in one SurrealDB transaction, only
//! if the checkpoint is still the one the batch follows.

use anyhow::Context as _;
use serde_json::{Value, json};
use streams::events::Envelope;

use super::Store;
use super::changes::Writes;

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
/// and copy almost nothing. Each slot row keeps the stream sequence of the last change of
/// each kind it took (`capacity_seq` from intake, `counts_seq` from decisions): the read API
/// loads only the slots changed since its last load by them ([`Store::slots_since`]), and
/// being a record's own sequence, not a batch's, a rebuild batching differently writes the
/// same. Every message sent is a `delivered` change (a dead letter under
/// its id, if any, is made good), four per registration; nearly always there is no dead
/// letter at all, so the deletes run only when the table holds one: one look at the table
/// per batch instead of a statement per message.
pub(super) const APPLY: &str = "
BEGIN TRANSACTION;
IF ((SELECT VALUE seq FROM ONLY type::record('checkpoint', $stream)) ?? 0) != $expected {
    THROW 'checkpoint_moved';
};
FOR $e IN $capacities {
    UPSERT type::record('slot', $e.slot) SET
        region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
        capacity = $e.capacity, reserved = reserved ?? 0, capacity_seq = $e.seq,
        updated_at = IF updated_at = NONE OR $e.at > updated_at { $e.at } ELSE { updated_at };
};
FOR $e IN $counts {
    UPSERT type::record('slot', $e.slot) SET
        region = $e.slot[0], location = $e.slot[1], date = $e.slot[2],
        capacity = capacity ?? $e.capacity, reserved = $e.reserved ?? reserved ?? 0,
        waiting = $e.waiting ?? waiting ?? 0, counts_seq = $e.seq,
        updated_at = IF updated_at = NONE OR $e.at > updated_at { $e.at } ELSE { updated_at };
};
FOR $d IN $dead {
    UPSERT type::record('dead_letter', $d.notification_id) CONTENT $d;
};
IF array::len($delivered) > 0 AND array::len(SELECT VALUE id FROM dead_letter LIMIT 1) > 0 {
    FOR $n IN $delivered {
        DELETE type::record('dead_letter', $n);
    };
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

/// Ends a parallel rebuild of one stream (`crate::rebuild::project_in_parallel`): the
/// stream's checkpoint set, its parts' checkpoints removed, only if the stream's is still
/// unset.
const SETTLE: &str = "
BEGIN TRANSACTION;
IF ((SELECT VALUE seq FROM ONLY type::record('checkpoint', $stream)) ?? 0) != 0 {
    THROW 'checkpoint_moved';
};
UPSERT type::record('checkpoint', $stream) SET seq = $seq;
FOR $part IN $parts {
    DELETE type::record('checkpoint', $part);
};
COMMIT TRANSACTION;
";

/// What [`APPLY`] binds: a batch's writes, the stream, the checkpoint it follows and the one
/// it moves to.
fn bindings(stream: &str, writes: Writes, expected: u64, seq: u64) -> Result<Value, ApplyError> {
    let mut bindings = serde_json::to_value(writes)
        .context("Failed to encode a batch's writes")
        .map_err(ApplyError::Store)?;
    bindings["stream"] = json!(stream);
    bindings["expected"] = json!(expected);
    bindings["seq"] = json!(seq);
    Ok(bindings)
}

impl Store {
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

    /// Sets `stream`'s checkpoint to `seq` and removes the checkpoints of its `parts`, once
    /// every part was applied up to `seq` (a parallel rebuild's end). Fails if the stream's
    /// checkpoint was already set.
    pub async fn settle_parts(
        &self,
        stream: &str,
        parts: &[String],
        seq: u64,
    ) -> anyhow::Result<()> {
        self.db
            .query(SETTLE)
            .bind(json!({ "stream": stream, "parts": parts, "seq": seq }))
            .await
            .and_then(|r| r.check())
            .with_context(|| format!("Failed to settle the rebuild of {stream}"))?;
        Ok(())
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
        self.db
            .query(APPLY)
            .bind(bindings(stream, Writes::of(events), expected, last_seq)?)
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
}
