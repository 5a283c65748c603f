//! The pure mapping from events to writes: what each event changes in the projections, and
//! a batch's changes grouped and folded into the writes [`super::apply`] makes. No I/O.

use serde::Serialize;
use serde_json::{Value, json};
use streams::events::{Envelope, Event};
use streams::model::Status;

/// One change to apply, flattened from an event: the shape the batch query reads.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Op {
    pub(super) op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) slot: Option<[String; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reserved: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) waiting: Option<u32>,
    /// A waiting registration's place in line (its submission's intake sequence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) line_seq: Option<u64>,
    /// A dead letter's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) row: Option<Value>,
    /// Whether the registration may have been waiting before this status (so its `line`
    /// row, if any, goes). Not for a first decision that reserves or waitlists: nothing
    /// waits before those, and most registrations take that path.
    #[serde(skip)]
    pub(super) may_leave_line: bool,
    pub(super) at: String,
    pub(super) seq: u64,
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
pub(super) struct Grouped {
    pub(super) statuses: Vec<Op>,
    pub(super) capacities: Vec<Op>,
    pub(super) counts: Vec<Op>,
    /// Dead letters (undeliverable messages) whose last record in the batch is a failure.
    pub(super) dead: Vec<Value>,
    /// Notification ids whose last record in the batch is a delivery (a re-drive, or a
    /// failure that a later decision's message under the same id made good): their dead
    /// letters go.
    pub(super) delivered: Vec<String>,
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

pub(super) fn group(ops: Vec<Op>) -> Grouped {
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

/// A `status` change as a registration row (see [`APPLY`](super::apply::APPLY)); no `reason` field when it has
/// none, so the update removes an earlier one.
pub(super) fn status_row(op: &Op) -> Value {
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
pub(super) fn line_change(op: &Op) -> Option<Option<Value>> {
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
pub(super) fn ops_of(seq: u64, envelope: &Envelope) -> Vec<Op> {
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
}
