//! The store against an in-memory SurrealDB: writes, reads, the migration, snapshots.

use serde_json::{Value, json};
use streams::events::Envelope;

use streams::model::Status;

use super::*;

/// Registration number `n`'s id.
pub(super) fn id(n: u32) -> String {
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
pub(super) fn event(kind: &str, n: u32, intake_seq: u64) -> Envelope {
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
        row.position
    };
    assert_eq!(
        (position(2).await, position(3).await, position(5).await),
        (Some(1), Some(2), Some(3))
    );
    let reviews = store.reviews(None).await.unwrap();
    assert_eq!(reviews.len(), 1, "{reviews:?}");
    assert_eq!(reviews[0].registration_id, id(4));

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
    let dead: Vec<String> = one_batch
        .dead_letters()
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.notification_id)
        .collect();
    assert_eq!(dead, ["sent-then-failed"]);
}

/// Reads return typed rows, and rows an older version wrote, a field missing or `null`,
/// read as well: the field is `None`.
#[tokio::test]
async fn reads_are_typed_rows_and_older_rows_read_with_their_gaps() {
    let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
    let batch = vec![
        (1, event("SlotRejected", 1, 10)),
        (2, event("RegistrationWaitlisted", 2, 20)),
    ];
    store.apply("S", &batch, 0, 2).await.unwrap();
    let at = "2027-02-01T08:00:00.123Z";
    let rejected = Registration {
        status: Status::Rejected,
        reason: Some("slot_full".into()),
        position: None,
        region: "mazowieckie".into(),
        location: "warszawa-narodowy".into(),
        date: "2027-03-01".into(),
        updated_at: at.into(),
    };
    assert_eq!(
        store.registration(&id(1)).await.unwrap(),
        Some(rejected.clone())
    );
    let waiting = store.registration(&id(2)).await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.reason, waiting.position),
        (Status::Waitlisted, None, Some(1))
    );
    assert_eq!(store.registration(&id(3)).await.unwrap(), None);
    assert_eq!(
        store.slots_since(None).await.unwrap().rows,
        [Availability {
            region: "mazowieckie".into(),
            location: "warszawa-narodowy".into(),
            date: "2027-03-01".into(),
            capacity: 0,
            remaining: 0,
            waiting: 3,
        }],
        "a slot no capacity was set for has none"
    );

    store
        .db
        .query(
            "UPSERT dead_letter:old SET notification_id = 'old', registration_id = 'r', \
             channel = 'email', template = 'reserved', decision_seq = 1, attempts = 3, \
             at = '2027-01-01T00:00:00.000Z', last_error = NULL;
             UPSERT registration:old SET status = 'cancelled', reason = NULL, region = 'r', \
             location = 'l', date = '2027-03-01', updated_at = 'then';",
        )
        .await
        .and_then(|r| r.check())
        .unwrap();
    let old = &store.dead_letters().await.unwrap()[0];
    assert_eq!(
        (old.error_code.as_deref(), old.last_error.as_deref()),
        (None, None)
    );
    let old = store.registration("old").await.unwrap().unwrap();
    assert_eq!((old.status, old.reason), (Status::Cancelled, None));
}

/// `kind`'s sample event for registration `n`, about the slot at `location`, with
/// `count` as its capacity (`CapacitySet`) or its reserved places (`SlotReserved`).
fn slot_event(kind: &str, n: u32, location: &str, count: u32) -> Envelope {
    let mut value = serde_json::to_value(event(kind, n, u64::from(n))).unwrap();
    value["data"]["slot"]["location"] = json!(location);
    let field = if kind == "CapacitySet" {
        "capacity"
    } else {
        "reserved"
    };
    value["data"][field] = json!(count);
    serde_json::from_value(value).unwrap()
}

/// Applies `events` to `stream` as one batch after its checkpoint `seq` (moved on); returns
/// the locations of the slots they name.
async fn apply_to(
    store: &Store,
    stream: &str,
    seq: &mut u64,
    events: impl Iterator<Item = Envelope>,
) -> Vec<String> {
    let expected = *seq;
    let batch: Vec<(u64, Envelope)> = events
        .map(|e| {
            *seq += 1;
            (*seq, e)
        })
        .collect();
    store.apply(stream, &batch, expected, *seq).await.unwrap();
    batch
        .iter()
        .map(|(_, e)| {
            let event = serde_json::to_value(e).unwrap();
            event["data"]["slot"]["location"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The read API's table kept by reading only the changed slots after each batch (both
/// streams, interleaved) equals a whole read of the table every time, and each read returns
/// exactly the slots the batches since the last one touched: proof that the sequences kept
/// on the rows, their indexes and the checkpoints read in the same transaction lose no
/// change and read no old one.
#[tokio::test]
async fn reading_the_changed_slots_keeps_a_table_equal_to_a_whole_read() {
    use streams::subjects::{DECISIONS_STREAM, INTAKE_STREAM};
    let store = Store::open(&StoreOptions::new("mem://")).await.unwrap();
    let key = |row: &Availability| (row.location.clone(), row.date.clone());
    let first = store.slots_since(None).await.unwrap();
    assert!(first.whole && first.rows.is_empty());
    let mut cursor = first.cursor;
    let mut table = std::collections::BTreeMap::new();
    let (mut intake_seq, mut decisions_seq) = (0, 0);
    for round in 0..24u32 {
        let mut touched = std::collections::BTreeSet::new();
        // Some rounds write capacities, some decisions, some both, one neither.
        if round % 3 != 2 {
            let locations = (0..3).map(|i| format!("l{}", (round * 7 + i) % 11));
            let events = locations.map(|l| slot_event("CapacitySet", round, &l, 10 + round));
            touched.extend(apply_to(&store, INTAKE_STREAM, &mut intake_seq, events).await);
        }
        if round % 2 == 0 && round != 12 {
            let locations = (0..2).map(|i| (i, format!("l{}", (round * 5 + i) % 13)));
            let events =
                locations.map(|(i, l)| slot_event("SlotReserved", 100 + round * 2 + i, &l, round));
            touched.extend(apply_to(&store, DECISIONS_STREAM, &mut decisions_seq, events).await);
        }
        let changed = store.slots_since(Some(cursor)).await.unwrap();
        assert!(!changed.whole);
        assert_eq!(
            (changed.cursor.intake, changed.cursor.decisions),
            (intake_seq, decisions_seq)
        );
        let read: std::collections::BTreeSet<_> = changed
            .rows
            .iter()
            .map(|row| row.location.clone())
            .collect();
        assert_eq!(read, touched, "round {round}: exactly the slots touched");
        for row in changed.rows {
            table.insert(key(&row), row);
        }
        cursor = changed.cursor;
        let whole = store.slots_since(None).await.unwrap();
        assert!(whole.whole);
        assert_eq!(
            table.values().cloned().collect::<Vec<_>>(),
            whole.rows,
            "round {round}"
        );
    }
    assert_eq!(table.len(), 13, "every location was touched");

    // A cursor the store is behind (another database, a rebuilt one) reads every slot.
    let ahead = SlotCursor {
        intake: intake_seq + 100,
        decisions: decisions_seq,
    };
    let read = store.slots_since(Some(ahead)).await.unwrap();
    assert!(read.whole);
    assert_eq!(read.rows.len(), 13);
}
