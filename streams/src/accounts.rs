//! Who may do what on NATS: one identity per service, each with only the subjects it needs.
//!
//! This module is the one place the permissions come from, next to the subjects they name;
//! `deploy/admin/nats-accounts` renders them into a nats-server `authorization` block and writes
//! each service's credentials. What each identity may publish (everything not listed is
//! refused by the server, and every identity may subscribe only to its own reply inbox):
//!
//! | identity | data it may append | JetStream API on |
//! | --- | --- | --- |
//! | [`Service::Ingest`] | `reg.intake.*.{submitted,cancel,capacity,window,review,redrive,recover}`, `reg.claim.*`, `reg.key.*`, `reg.ticket.*`, the waiting rooms' settings and ticket counts | read `REG_INTAKE` (windows, claims, key records), the reviews and waiting-room buckets |
//! | [`Service::Reservation`] (and the claims releaser and the waiting-room controller) | `reg.decision.*.reservation`, `reg.intake.*.waitlist`, `reg.claim.*`, the lease and reviews buckets, the waiting rooms' serving places | read both streams and both buckets, ack `REG_DECISIONS` |
//! | [`Service::Verification`] | `reg.intake.*.verification` | read both streams, ack `REG_DECISIONS` |
//! | [`Service::Notification`] | `reg.decision.*.notification` | read both streams, ack both |
//! | [`Service::Projections`] | nothing | read both streams |
//! | [`Service::Admin`] | nothing | the whole JetStream API: creates and updates streams and buckets |
//!
//! "Read" is per stream, not per subject: a reader may create consumers and direct-get
//! messages of a stream it reads (personal fields in them are sealed, see [`crate::crypto`]).
//! Only the admin identity may create, update, purge or delete streams and buckets; the
//! services only bind to them ([`crate::config::bind_streams`]).
//!
//! Every identity receives its replies on its own inbox prefix ([`inbox_prefix`]), so no
//! identity can subscribe to another's replies (acks, fetched messages).

use crate::subjects::{self, IntakeKind, RegionFilter};

/// Prefix of the JetStream API subjects.
const JS_API: &str = "$JS.API";
/// Prefix of JetStream push consumers' flow-control replies.
const JS_FC: &str = "$JS.FC";
/// Prefix of JetStream consumer acknowledgement subjects.
const JS_ACK: &str = "$JS.ACK";
/// Prefix of the subjects of a key-value bucket's keys.
const KV_PREFIX: &str = "$KV";
/// The subject prefix of object stores' chunks and metadata.
const OBJ_PREFIX: &str = "$O";

/// What nats-server writes in its log for each refused publish or subscription
/// (`Publish Violation - Subject "…"`): a run that should have been refused nothing is
/// checked against it.
pub const VIOLATION_LOG: &str = " Violation - Subject ";

/// A NATS identity of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Creates and updates streams and buckets (`deploy/admin/nats-accounts streams`), and serves
    /// operators' tools (replay). No service runs as it.
    Admin,
    /// The ingest edge.
    Ingest,
    /// The reservation processor and the claims releaser (the processors binary's own
    /// connection).
    Reservation,
    /// The verification processor (its own connection in the processors binary).
    Verification,
    /// The notification processor (its own connection in the processors binary).
    Notification,
    /// The projection workers and the read API.
    Projections,
    /// Analysts' replays (`deploy/replay`): reads both streams, publishes nothing.
    Analyst,
}

/// What one identity may publish and subscribe to (nats-server `permissions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish to (requests to the JetStream API included).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

impl Service {
    /// Every identity, the admin first.
    pub const ALL: [Service; 7] = [
        Service::Admin,
        Service::Ingest,
        Service::Reservation,
        Service::Verification,
        Service::Notification,
        Service::Projections,
        Service::Analyst,
    ];

    /// The identity's user name (also the name of its credentials file).
    pub fn user(self) -> &'static str {
        match self {
            Service::Admin => "reg-admin",
            Service::Ingest => "reg-ingest",
            Service::Reservation => "reg-reservation",
            Service::Verification => "reg-verification",
            Service::Notification => "reg-notification",
            Service::Projections => "reg-projections",
            Service::Analyst => "reg-analyst",
        }
    }

    /// Whether the identity may publish on `subject` (its publish permissions, read as
    /// nats-server reads them).
    pub fn may_publish(self, subject: &str) -> bool {
        self.permissions()
            .publish
            .iter()
            .any(|pattern| subjects::matches(pattern, subject))
    }

    /// What the identity may do.
    pub fn permissions(self) -> Permissions {
        let all = RegionFilter::All;
        let intake = subjects::INTAKE_STREAM;
        let decisions = subjects::DECISIONS_STREAM;
        let leases = format!("KV_{}", subjects::LEASES_BUCKET);
        let reviews = format!("KV_{}", subjects::REVIEWS_BUCKET);
        let room = format!("KV_{}", subjects::WAITING_ROOM_BUCKET);
        let mut publish = Vec::new();
        match self {
            Service::Admin => publish.push(format!("{JS_API}.>")),
            Service::Ingest => {
                for kind in [
                    IntakeKind::Submitted,
                    IntakeKind::Cancel,
                    IntakeKind::Capacity,
                    IntakeKind::Window,
                    IntakeKind::Review,
                    IntakeKind::Redrive,
                    IntakeKind::Recover,
                    IntakeKind::Erasure,
                ] {
                    publish.push(subjects::intake_kind_filter(&all, kind));
                }
                publish.push(subjects::claim("*"));
                publish.push(subjects::idempotency_key("*"));
                publish.push(subjects::ticket("*"));
                publish.push(subjects::seal_filter(&all));
                // Waiting rooms: operators' settings and this edge's ticket counts.
                publish.push(subjects::RoomKey::write_filter("config"));
                publish.push(subjects::RoomKey::write_filter("counts"));
                publish.extend(watch(&room));
                publish.extend(read(intake));
                publish.extend(read(&reviews));
                publish.extend(bind());
            }
            Service::Reservation => {
                publish.push(subjects::reservation_decisions_filter(&all));
                publish.push(subjects::intake_kind_filter(&all, IntakeKind::Waitlist));
                publish.push(subjects::claim("*"));
                publish.push(format!("{KV_PREFIX}.{}.>", subjects::LEASES_BUCKET));
                publish.push(format!("{KV_PREFIX}.{}.>", subjects::REVIEWS_BUCKET));
                publish.extend(read(&reviews));
                // The waiting-room controller runs on this connection: it writes the serving
                // places.
                publish.push(subjects::RoomKey::write_filter("serving"));
                publish.extend(watch(&room));
                // ...and paces them by the pipeline's backlogs, which it reads from the lists
                // of both streams' consumers.
                publish.push(format!("{JS_API}.CONSUMER.LIST.{intake}"));
                publish.push(format!("{JS_API}.CONSUMER.LIST.{decisions}"));
                // Snapshots of the decision state: written, replaced (the old chunks purged)
                // and read back on takeover.
                let snapshots = format!("OBJ_{}", subjects::SNAPSHOTS_BUCKET);
                publish.push(format!("{OBJ_PREFIX}.{}.>", subjects::SNAPSHOTS_BUCKET));
                publish.push(format!("{JS_API}.STREAM.PURGE.{snapshots}"));
                publish.extend(read(&snapshots));
                publish.extend(read(intake));
                publish.extend(read(decisions));
                publish.extend(read(&leases));
                publish.push(ack(decisions));
                publish.extend(bind());
            }
            Service::Verification => {
                publish.push(subjects::intake_kind_filter(&all, IntakeKind::Verification));
                publish.extend(read(intake));
                publish.extend(read(decisions));
                publish.push(ack(decisions));
                publish.extend(bind());
            }
            Service::Notification => {
                publish.push(subjects::notification_decisions_filter(&all));
                // Erasure: destroying a registration's own key (a secure erase of its one
                // message). JetStream grants deletes per stream, not per subject.
                publish.push(format!("{JS_API}.STREAM.MSG.DELETE.{intake}"));
                publish.extend(read(intake));
                publish.extend(read(decisions));
                publish.push(ack(intake));
                publish.push(ack(decisions));
                publish.extend(bind());
            }
            Service::Projections => {
                // The writer lease (its own key only): one replica at a time applies.
                publish.push(format!(
                    "{KV_PREFIX}.{}.{}",
                    subjects::LEASES_BUCKET,
                    subjects::PROJECTIONS_WRITER_LEASE
                ));
                publish.extend(read(&leases));
                publish.extend(read(intake));
                publish.extend(read(decisions));
                publish.extend(bind());
            }
            Service::Analyst => {
                publish.extend(read(intake));
                publish.extend(read(decisions));
                publish.extend(bind());
            }
        }
        publish.sort();
        publish.dedup();
        Permissions {
            publish,
            subscribe: vec![format!("{}.>", inbox_prefix(self.user()))],
        }
    }
}

/// The inbox prefix of `user`'s replies: the connection uses it (see
/// [`crate::runtime::connect`]) and the server lets only that user subscribe to it.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// The JetStream API requests of a reader of `stream`: look it up, create and fetch from its
/// consumers, get messages directly.
fn read(stream: &str) -> Vec<String> {
    vec![
        format!("{JS_API}.STREAM.INFO.{stream}"),
        format!("{JS_API}.STREAM.MSG.GET.{stream}"),
        format!("{JS_API}.CONSUMER.CREATE.{stream}"),
        format!("{JS_API}.CONSUMER.CREATE.{stream}.>"),
        format!("{JS_API}.CONSUMER.INFO.{stream}.*"),
        format!("{JS_API}.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("{JS_API}.DIRECT.GET.{stream}"),
        format!("{JS_API}.DIRECT.GET.{stream}.>"),
    ]
}

/// What watching a key-value bucket takes beside reading its stream ([`read`]): answering
/// the push consumer's flow control (`$JS.FC.<stream>.…`), without which a watch that falls
/// behind by a few hundred kilobytes stops for good.
fn watch(stream: &str) -> Vec<String> {
    let mut subjects = read(stream);
    subjects.push(format!("{JS_FC}.{stream}.>"));
    subjects
}

/// Acknowledging messages of `stream`'s durable consumers.
fn ack(stream: &str) -> String {
    format!("{JS_ACK}.{stream}.>")
}

/// What binding to the streams at start-up takes ([`crate::config::bind_streams`]).
fn bind() -> Vec<String> {
    [subjects::INTAKE_STREAM, subjects::DECISIONS_STREAM]
        .map(|stream| format!("{JS_API}.STREAM.INFO.{stream}"))
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_appends_only_what_it_writes() {
        let r = crate::model::Region::parse("slaskie").unwrap();
        let capacity = subjects::intake(&r, IntakeKind::Capacity);
        let decision = subjects::reservation_decisions(&r);
        let verdict = subjects::intake(&r, IntakeKind::Verification);
        assert!(Service::Ingest.may_publish(&capacity));
        assert!(Service::Ingest.may_publish(&subjects::idempotency_key("ab")));
        let bucket = subjects::WAITING_ROOM_BUCKET;
        let config = format!("$KV.{bucket}.{}", subjects::room_config(&r));
        let serving = format!("$KV.{bucket}.{}", subjects::room_serving(&r));
        let counts = format!("$KV.{bucket}.{}", subjects::room_counts(&r, "e1"));
        assert!(Service::Ingest.may_publish(&config));
        assert!(Service::Ingest.may_publish(&counts));
        assert!(!Service::Ingest.may_publish(&serving));
        assert!(Service::Reservation.may_publish(&serving));
        assert!(!Service::Reservation.may_publish(&config));
        assert!(!Service::Reservation.may_publish(&counts));
        assert!(Service::Ingest.may_publish(&subjects::ticket("ab")));
        // Both follow the bucket with a watch, which must answer its flow control.
        let flow_control = format!("$JS.FC.KV_{bucket}.abc.def");
        assert!(Service::Ingest.may_publish(&flow_control));
        assert!(Service::Reservation.may_publish(&flow_control));
        assert!(!Service::Projections.may_publish(&flow_control));
        assert!(!Service::Reservation.may_publish(&subjects::ticket("ab")));
        // Only the notification processor destroys keys (erasure); only the edge asks for it.
        let delete = format!("{JS_API}.STREAM.MSG.DELETE.{}", subjects::INTAKE_STREAM);
        let erasure = subjects::intake(&r, IntakeKind::Erasure);
        for service in Service::ALL {
            assert_eq!(
                service.may_publish(&delete),
                matches!(service, Service::Notification | Service::Admin),
                "{service:?}"
            );
            assert_eq!(
                service.may_publish(&erasure),
                service == Service::Ingest,
                "{service:?}"
            );
        }
        assert!(
            Service::Ingest
                .may_publish(&subjects::seal(&crate::model::RegistrationId::generate(&r)))
        );
        // The controller paces by the consumers' backlogs; nobody else lists them.
        let list = format!("{JS_API}.CONSUMER.LIST.{}", subjects::DECISIONS_STREAM);
        assert!(Service::Reservation.may_publish(&list));
        assert!(!Service::Ingest.may_publish(&list));
        assert!(!Service::Reservation.may_publish(&subjects::idempotency_key("ab")));
        assert!(!Service::Ingest.may_publish(&decision));
        assert!(!Service::Ingest.may_publish(&verdict));
        assert!(Service::Verification.may_publish(&verdict));
        assert!(!Service::Verification.may_publish(&capacity));
        assert!(!Service::Verification.may_publish(&decision));
        assert!(Service::Reservation.may_publish(&decision));
        assert!(Service::Notification.may_publish(&subjects::notification_decisions(&r)));
        assert!(!Service::Notification.may_publish(&decision));
        for subject in [&capacity, &decision, &verdict, &subjects::claim("ab")] {
            assert!(!Service::Projections.may_publish(subject), "{subject}");
        }
        // The projections take their own writer lease, and no other.
        let lease = |key: &str| format!("$KV.{}.{key}", subjects::LEASES_BUCKET);
        let writer = lease(subjects::PROJECTIONS_WRITER_LEASE);
        assert!(Service::Projections.may_publish(&writer));
        assert!(!Service::Analyst.may_publish(&writer));
        assert!(!Service::Projections.may_publish(&lease(subjects::ROOM_CONTROLLER_LEASE)));
        assert!(!Service::Projections.may_publish(&lease(&subjects::reservation_lease(&r))));
        for service in Service::ALL {
            let stream_admin = format!("{JS_API}.STREAM.UPDATE.{}", subjects::INTAKE_STREAM);
            assert_eq!(
                service.may_publish(&stream_admin),
                service == Service::Admin,
                "{service:?}"
            );
        }
    }
}
