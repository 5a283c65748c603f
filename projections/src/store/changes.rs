//! The pure mapping from events to writes: what each event changes in the projections, and
//! a batch's changes grouped and folded into the writes [`super::apply`] makes. No I/O.

use serde::Serialize;
use streams::events::{Envelope, Event, NotificationFailed};
use streams::model::{RegistrationId, SlotKey, Status};

use super::rows::DeadLetter;

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
    row: Option<DeadLetter>,
    /// Whether the registration may have been waiting before this status (so its `line`
    /// row, if any, goes). Not for a first decision that reserves or waitlists: nothing
    /// waits before those, and most registrations take that path.
    #[serde(skip)]
    may_leave_line: bool,
    at: String,
    seq: u64,
}

/// A batch's changes grouped by kind, in log order within each kind, with every run of
/// changes to one record folded into the one change that leaves the same state:
/// - `status` sets every field it names: the last one wins;
/// - `counts` keeps an existing capacity, else the first change's, and sets each count the
///   changes name: so the first's capacity, each count's last value and the last time;
/// - `capacity` sets the capacity and keeps the count: the last one wins;
/// - a dead letter is written by `NotificationFailed` and removed by a `NotificationSent` of
///   the same notification id: the last one wins, so the batch's dead letters and its
///   deliveries name different ids and the order [`APPLY`](super::apply::APPLY) writes them in does not matter
///   (the same records in other batches, as a rebuild reads them, give the same table).
#[derive(Debug, Default)]
struct Grouped {
    statuses: Vec<Op>,
    capacities: Vec<Op>,
    counts: Vec<Op>,
    /// Dead letters (undeliverable messages) whose last record in the batch is a failure.
    dead: Vec<DeadLetter>,
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
    let mut notifications: Vec<(String, Option<DeadLetter>)> = Vec::new();
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

/// A registration's row as a `status` change writes it (see
/// [`APPLY`](super::apply::APPLY)): every field it names. No `reason` (or `line_seq`) field
/// when it has none, so the update removes an earlier one.
#[derive(Debug, PartialEq, Serialize)]
struct StatusRow {
    id: String,
    region: String,
    location: String,
    date: String,
    status: &'static str,
    updated_at: String,
    decision_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_seq: Option<u64>,
}

/// A `status` change as a registration row.
fn status_row(op: &Op) -> StatusRow {
    let [region, location, date] = op.slot.clone().unwrap_or_default();
    StatusRow {
        id: op.id.clone().unwrap_or_default(),
        region,
        location,
        date,
        status: op.status.unwrap_or_default(),
        updated_at: op.at.clone(),
        decision_seq: op.seq,
        reason: op.reason.clone(),
        line_seq: op.line_seq,
    }
}

/// A registration's row in the `line` table while it waits: what it waits for (`kind`, its
/// status), where, since when, and for a `waitlisted` one its place in line.
#[derive(Debug, PartialEq, Serialize)]
struct LineRow {
    kind: &'static str,
    region: String,
    location: String,
    date: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_seq: Option<u64>,
}

/// The `line` change a registration's last status in a batch makes: its row while it waits
/// (`Some(row)`), its row removed when it may have waited before (`None`), or nothing.
fn line_change(op: &Op) -> Option<Option<LineRow>> {
    let waits = [Status::Waitlisted.as_str(), Status::ManualReview.as_str()];
    match op.status {
        Some(kind) if waits.contains(&kind) => {
            let [region, location, date] = op.slot.clone().unwrap_or_default();
            Some(Some(LineRow {
                kind,
                region,
                location,
                date,
                updated_at: op.at.clone(),
                line_seq: op.line_seq,
            }))
        }
        _ if op.may_leave_line => Some(None),
        _ => None,
    }
}

/// A `line` row to write, by registration id.
#[derive(Debug, PartialEq, Serialize)]
struct Lined {
    id: String,
    row: LineRow,
}

/// Everything one batch of events writes, named as [`APPLY`](super::apply::APPLY) binds it:
/// one change per record (see [`Grouped`]), each table's changes in log order.
#[derive(Debug, Default, PartialEq, Serialize)]
pub(super) struct Writes {
    /// Registration rows: each registration's last status in the batch.
    statuses: Vec<StatusRow>,
    /// `line` rows of the registrations whose last status waits.
    lined: Vec<Lined>,
    /// Registrations that may have waited and no longer do: their `line` rows go.
    unlined: Vec<String>,
    /// Slots' capacities (from intake).
    capacities: Vec<Op>,
    /// Slots' counts (from decisions).
    counts: Vec<Op>,
    /// Dead letters written.
    dead: Vec<DeadLetter>,
    /// Notification ids whose dead letters go.
    delivered: Vec<String>,
}

impl Writes {
    /// The writes a batch of `(sequence, event)` makes: each event's changes ([`ops_of`]),
    /// folded into one per record ([`group`]), as rows.
    pub(super) fn of(events: &[(u64, Envelope)]) -> Writes {
        let ops = events.iter().flat_map(|(seq, e)| ops_of(*seq, e)).collect();
        let Grouped {
            statuses,
            capacities,
            counts,
            dead,
            delivered,
        } = group(ops);
        let mut writes = Writes {
            capacities,
            counts,
            dead,
            delivered,
            ..Writes::default()
        };
        for op in &statuses {
            writes.statuses.push(status_row(op));
            let id = op.id.clone().unwrap_or_default();
            match line_change(op) {
                Some(Some(row)) => writes.lined.push(Lined { id, row }),
                Some(None) => writes.unlined.push(id),
                None => {}
            }
        }
        writes
    }
}

fn slot_of(slot: &SlotKey) -> Option<[String; 3]> {
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
    let from = Origin { at, seq };
    match &envelope.event {
        Event::CapacitySet(e) => vec![Op {
            slot: slot_of(&e.slot),
            capacity: Some(e.capacity),
            ..from.op("capacity")
        }],
        Event::SlotReserved(e) => vec![
            Op {
                may_leave_line: false,
                ..from.status(&e.registration_id, &e.slot, Status::Reserved, None)
            },
            from.counts(&e.slot, Some(e.capacity), Some(e.reserved), None),
        ],
        Event::RegistrationWaitlisted(e) => vec![
            Op {
                line_seq: Some(e.intake_seq),
                may_leave_line: false,
                ..from.status(&e.registration_id, &e.slot, Status::Waitlisted, None)
            },
            from.counts(&e.slot, None, None, Some(e.waiting)),
        ],
        Event::WaitlistPromoted(e) => vec![
            from.status(&e.registration_id, &e.slot, Status::Reserved, None),
            from.counts(&e.slot, Some(e.capacity), Some(e.reserved), Some(e.waiting)),
        ],
        Event::SlotRejected(e) => {
            let reason = Some(e.reason.as_str().to_owned());
            let rejected = from.status(&e.registration_id, &e.slot, Status::Rejected, reason);
            from.ended(rejected, &e.slot, e.waiting)
        }
        Event::SlotReleased(e) => {
            vec![from.counts(&e.slot, Some(e.capacity), Some(e.reserved), None)]
        }
        Event::ReviewRequired(e) => {
            vec![from.status(&e.registration_id, &e.slot, Status::ManualReview, None)]
        }
        Event::VerificationRequeued(e) => {
            vec![from.status(&e.registration_id, &e.slot, Status::Reserved, None)]
        }
        Event::RegistrationConfirmed(e) => {
            vec![from.status(&e.registration_id, &e.slot, Status::Confirmed, None)]
        }
        Event::RegistrationCancelled(e) => {
            let cancelled = from.status(&e.registration_id, &e.slot, Status::Cancelled, None);
            from.ended(cancelled, &e.slot, e.waiting)
        }
        Event::NotificationFailed(e) => vec![from.dead_letter(e)],
        Event::NotificationSent(e) => vec![Op {
            id: Some(e.notification_id.clone()),
            ..from.op("delivered")
        }],
        _ => Vec::new(),
    }
}

/// Where in the log the changes of one event come from: its time and stream sequence, which
/// every change carries.
struct Origin {
    at: String,
    seq: u64,
}

impl Origin {
    /// A change of kind `op` that names nothing yet.
    fn op(&self, op: &'static str) -> Op {
        Op {
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
            at: self.at.clone(),
            seq: self.seq,
        }
    }

    /// A registration's new status.
    fn status(
        &self,
        id: &RegistrationId,
        slot: &SlotKey,
        status: Status,
        reason: Option<String>,
    ) -> Op {
        Op {
            id: Some(id.to_string()),
            slot: slot_of(slot),
            status: Some(status.as_str()),
            reason,
            ..self.op("status")
        }
    }

    /// A slot's counts, each only if the event names it.
    fn counts(
        &self,
        slot: &SlotKey,
        capacity: Option<u32>,
        reserved: Option<u32>,
        waiting: Option<u32>,
    ) -> Op {
        Op {
            slot: slot_of(slot),
            capacity,
            reserved,
            waiting,
            ..self.op("counts")
        }
    }

    /// A registration's final status, and its slot's waiting count when it left the line.
    fn ended(&self, status: Op, slot: &SlotKey, waiting: Option<u32>) -> Vec<Op> {
        let mut ops = vec![status];
        if waiting.is_some() {
            ops.push(self.counts(slot, None, None, waiting));
        }
        ops
    }

    /// A message that could not be delivered. A failure recorded before codes existed holds
    /// the provider's own words: its row shows a fixed sentence instead.
    fn dead_letter(&self, e: &NotificationFailed) -> Op {
        let (error_code, last_error) = streams::outside::shown(&e.error_code, &e.last_error);
        Op {
            id: Some(e.notification_id.clone()),
            row: Some(DeadLetter {
                notification_id: e.notification_id.clone(),
                registration_id: e.registration_id.to_string(),
                channel: e.channel.clone(),
                template: e.template.clone(),
                decision_seq: e.decision_seq,
                attempts: e.attempts,
                error_code: Some(error_code),
                last_error: Some(last_error),
                at: self.at.clone(),
            }),
            ..self.op("dead")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::store::tests::{event, id};

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

    // Given a batch of events, when it is mapped, then these writes: the rows `APPLY` binds.

    /// The writes of `batch` (events numbered from sequence 1), as `APPLY` receives them.
    fn when(batch: Vec<Envelope>) -> Value {
        let batch: Vec<(u64, Envelope)> = (1..).zip(batch).collect();
        serde_json::to_value(Writes::of(&batch)).unwrap()
    }

    /// The sample of `kind`, changed by `edit` on its JSON.
    fn sample(kind: &str, edit: impl FnOnce(&mut Value)) -> Envelope {
        let sample = streams::events::samples()
            .into_iter()
            .find(|e| e.event.event_type() == kind)
            .unwrap();
        let mut value = serde_json::to_value(sample).unwrap();
        edit(&mut value["data"]);
        serde_json::from_value(value).unwrap()
    }

    const AT: &str = "2027-02-01T08:00:00.123Z";

    #[test]
    fn a_reservation_writes_its_status_and_the_slot_counts_and_no_line() {
        let then = when(vec![event("SlotReserved", 1, 1)]);
        assert_eq!(
            then["statuses"],
            json!([{
                "id": id(1), "region": "mazowieckie", "location": "warszawa-narodowy",
                "date": "2027-03-01", "status": "reserved", "updated_at": AT, "decision_seq": 1,
            }]),
            "no reason and no line_seq: the update removes earlier ones"
        );
        assert_eq!(then["counts"][0]["slot"][1], "warszawa-narodowy");
        assert_eq!(
            (
                &then["counts"][0]["capacity"],
                &then["counts"][0]["reserved"]
            ),
            (&json!(120), &json!(7))
        );
        assert_eq!(then["counts"][0].get("waiting"), None, "left as it is");
        assert_eq!(
            (then["lined"].clone(), then["unlined"].clone()),
            (json!([]), json!([]))
        );
    }

    #[test]
    fn a_waitlisted_registration_is_in_line_until_its_next_status() {
        let then = when(vec![event("RegistrationWaitlisted", 2, 20)]);
        assert_eq!(then["statuses"][0]["line_seq"], 20);
        assert_eq!(
            then["lined"],
            json!([{ "id": id(2), "row": {
                "kind": "waitlisted", "region": "mazowieckie", "location": "warszawa-narodowy",
                "date": "2027-03-01", "updated_at": AT, "line_seq": 20,
            }}])
        );
        assert_eq!(then["counts"][0]["waiting"], 3);

        let then = when(vec![event("WaitlistPromoted", 2, 20)]);
        assert_eq!(then["statuses"][0]["status"], "reserved");
        assert_eq!(then["statuses"][0].get("line_seq"), None);
        assert_eq!(
            (then["lined"].clone(), then["unlined"].clone()),
            (json!([]), json!([id(2)]))
        );
    }

    #[test]
    fn a_review_waits_in_line_without_a_place_and_a_rejection_says_why() {
        let then = when(vec![event("ReviewRequired", 4, 40)]);
        assert_eq!(then["lined"][0]["row"]["kind"], "manual_review");
        assert_eq!(then["lined"][0]["row"].get("line_seq"), None);

        let then = when(vec![event("SlotRejected", 5, 50)]);
        assert_eq!(then["statuses"][0]["status"], "rejected");
        assert_eq!(then["statuses"][0]["reason"], "slot_full");
        assert_eq!(then["counts"], json!([]), "no waiting count to change");
        assert_eq!(then["unlined"], json!([id(5)]), "it may have waited before");
    }

    #[test]
    fn capacities_of_one_slot_fold_into_the_last() {
        let capacity = |n: u32| sample("CapacitySet", |data| data["capacity"] = json!(n));
        let then = when(vec![capacity(100), capacity(80)]);
        let capacities = then["capacities"].as_array().unwrap();
        assert_eq!(capacities.len(), 1, "{then}");
        assert_eq!(
            (&capacities[0]["capacity"], &capacities[0]["seq"]),
            (&json!(80), &json!(2))
        );
        assert_eq!(then["statuses"], json!([]));
    }

    #[test]
    fn a_failed_message_is_a_dead_letter_until_a_later_delivery_under_its_id() {
        let notification = |kind: &str, notification_id: &str| {
            sample(kind, |data| {
                data["notification_id"] = json!(notification_id)
            })
        };
        let then = when(vec![
            notification("NotificationFailed", "made-good"),
            notification("NotificationSent", "failed-last"),
            notification("NotificationSent", "made-good"),
            notification("NotificationFailed", "failed-last"),
        ]);
        assert_eq!(then["delivered"], json!(["made-good"]));
        assert_eq!(
            then["dead"],
            json!([{
                "notification_id": "failed-last",
                "registration_id": "mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f",
                "channel": "webhook", "template": "confirmed", "decision_seq": 18,
                "attempts": 10, "error_code": "webhook_http_503",
                "last_error": "the gateway answered an HTTP error status", "at": AT,
            }])
        );
        // One recorded before codes existed shows a fixed sentence, not the provider's words.
        let then = when(vec![sample("NotificationFailed", |data| {
            data["error_code"] = json!("");
            data["last_error"] = json!("550 mailbox of jan.kowalski@example.pl unavailable");
        })]);
        assert_eq!(then["dead"][0]["error_code"], "unclassified");
        assert!(
            !then["dead"][0]["last_error"]
                .as_str()
                .unwrap()
                .contains("kowalski")
        );
    }

    #[test]
    fn a_batch_of_events_the_projections_do_not_show_writes_nothing() {
        let then = when(vec![
            sample("RegistrationSubmitted", |_| {}),
            sample("CancellationRequested", |_| {}),
        ]);
        assert_eq!(then, serde_json::to_value(Writes::default()).unwrap());
    }
}
