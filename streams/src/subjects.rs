//! Every subject, stream, bucket and consumer name of the system. No subject string literal
//! appears outside this module.
//!
//! Subjects carry the region right after their prefix, so a processor started for one region
//! filters `reg.intake.<region>.>` and sees nothing else:
//!
//! | subject | stream | written by | holds |
//! | --- | --- | --- | --- |
//! | `reg.intake.<region>.submitted` | [`INTAKE_STREAM`] | ingest | `RegistrationSubmitted` |
//! | `reg.intake.<region>.cancel` | [`INTAKE_STREAM`] | ingest | `CancellationRequested` |
//! | `reg.intake.<region>.capacity` | [`INTAKE_STREAM`] | ingest (operators) | `CapacitySet` |
//! | `reg.intake.<region>.window` | [`INTAKE_STREAM`] | ingest (operators) | `WindowSet` |
//! | `reg.intake.<region>.verification` | [`INTAKE_STREAM`] | verification processor | `VerificationPassed` / `VerificationFailed` / `VerificationInconclusive` |
//! | `reg.intake.<region>.review` | [`INTAKE_STREAM`] | ingest (operators) | `VerificationPassed` / `VerificationFailed` with a reviewer, `ReviewRequeued` |
//! | `reg.intake.<region>.redrive` | [`INTAKE_STREAM`] | ingest (operators) | `NotificationRedriveRequested` |
//! | `reg.intake.<region>.erasure` | [`INTAKE_STREAM`] | ingest (operators) | `ErasureRequested` |
//! | `reg.intake.<region>.recover` | [`INTAKE_STREAM`] | ingest (lost-link recovery) | `RecoveryRequested` |
//! | `reg.intake.<region>.waitlist` | [`INTAKE_STREAM`] | reservation processor (its clock) | `WaitlistClosed` |
//! | `reg.decision.<region>.reservation` | [`DECISIONS_STREAM`] | reservation processor | `SlotReserved`, `RegistrationWaitlisted`, `WaitlistPromoted`, `SlotRejected`, `SlotReleased`, `ReviewRequired`, `VerificationRequeued`, `RegistrationConfirmed`, `RegistrationCancelled`, `RecoveryLinkIssued` |
//! | `reg.decision.<region>.notification` | [`DECISIONS_STREAM`] | notification processor | `NotificationSent`, `NotificationFailed` (dead letters), `PersonalDataErased` |
//! | `reg.claim.<citizen key>` | [`INTAKE_STREAM`] | ingest (held), claims releaser (released) | [`crate::claims::ClaimRecord`] |
//! | `reg.key.<key digest>` | [`INTAKE_STREAM`] | ingest | the [`crate::claims::Claim`] an `Idempotency-Key` created (one message, never replaced) |
//! | `reg.ticket.<ticket id>` | [`INTAKE_STREAM`] | ingest | the registration a waiting-room ticket admitted (one message, never replaced) |
//! | `reg.seal.<registration id>` | [`INTAKE_STREAM`] | ingest (written), notification processor (erased) | the registration's own data key, wrapped ([`crate::seals`]): one message, destroyed to erase its personal data |
//!
//! A subject carries only the event types its writer owns (the "holds" column, defined once
//! in [`SubjectKind::event_types`]). Another identity's permissions stop it from appending to
//! a subject it does not write; this table stops a writer from appending, on its own subject,
//! an event another writer owns (the verification processor's identity appending a
//! `CancellationRequested` on `…verification`): every reader decodes through
//! [`crate::events::Envelope::decode_from`], which refuses such a record exactly as it refuses
//! one it cannot decode, and the reader stops there (see [`crate::consume`]).
//!
//! The intake stream is the order of acceptance: everything that may change a reservation is
//! appended there, so the reservation processor's decisions are a function of one ordered log.
//! A citizen's claim (and the answer of each `Idempotency-Key`) lives in the same stream so the
//! edge appends it and the registration in one atomic batch; consumers of `reg.intake.>` never
//! see claims or keys.

use crate::model::Region;

/// Stream of everything the edge (and the registry verifier) accepted, in acceptance order.
pub const INTAKE_STREAM: &str = "REG_INTAKE";
/// Stream of every decision the processors took.
pub const DECISIONS_STREAM: &str = "REG_DECISIONS";
/// Key-value bucket of leases: which replica is active for a piece of work.
pub const LEASES_BUCKET: &str = "reg_leases";
/// Object-store bucket of snapshots of the reservation processor's state, one object per
/// region: a replica that takes a region over loads it and folds only the decisions after it.
pub const SNAPSHOTS_BUCKET: &str = "reg_snapshots";

/// Key-value bucket of the registrations in manual review, one key each
/// ([`review_key`]), kept by the reservation processor that decides their region: the edge
/// reads it to refuse an operator's decision on a registration that is not in review.
pub const REVIEWS_BUCKET: &str = "reg_reviews";

/// Key-value bucket of the waiting rooms ([`crate::waiting_room`]): per region, what an
/// operator set ([`room_config`]), where the controller is serving ([`room_serving`]) and each
/// edge's counts of tickets ([`room_counts`]).
pub const WAITING_ROOM_BUCKET: &str = "reg_waiting_room";

/// The kinds of key in [`WAITING_ROOM_BUCKET`], each followed by the region.
const ROOM_CONFIG: &str = "config";
const ROOM_SERVING: &str = "serving";
const ROOM_COUNTS: &str = "counts";

/// The key of `region`'s waiting-room settings in [`WAITING_ROOM_BUCKET`].
pub fn room_config(region: &Region) -> String {
    format!("{ROOM_CONFIG}.{region}")
}

/// The key of `region`'s serving place in [`WAITING_ROOM_BUCKET`].
pub fn room_serving(region: &Region) -> String {
    format!("{ROOM_SERVING}.{region}")
}

/// The key of one edge's ticket counts for `region` in [`WAITING_ROOM_BUCKET`].
pub fn room_counts(region: &Region, edge: &str) -> String {
    format!("{ROOM_COUNTS}.{region}.{edge}")
}

/// A key of [`WAITING_ROOM_BUCKET`], read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomKey {
    /// [`room_config`].
    Config(Region),
    /// [`room_serving`].
    Serving(Region),
    /// [`room_counts`]: the region and the edge.
    Counts(Region, String),
}

impl RoomKey {
    /// Reads a key of the bucket (`None`: not one of this code's).
    pub fn parse(key: &str) -> Option<RoomKey> {
        let mut parts = key.split('.');
        let (kind, region) = (parts.next()?, Region::parse(parts.next()?).ok()?);
        let key = match (kind, parts.next()) {
            (ROOM_CONFIG, None) => RoomKey::Config(region),
            (ROOM_SERVING, None) => RoomKey::Serving(region),
            (ROOM_COUNTS, Some(edge)) => RoomKey::Counts(region, edge.to_owned()),
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }

    /// The bucket's key subjects (`$KV.<bucket>.<key>`) an identity that writes `kind`s of
    /// keys may publish to: `kind` is `config`, `serving` or `counts`.
    pub fn write_filter(kind: &str) -> String {
        let key = match kind {
            ROOM_COUNTS => format!("{ROOM_COUNTS}.*.*"),
            other => format!("{other}.*"),
        };
        format!("$KV.{WAITING_ROOM_BUCKET}.{key}")
    }
}

/// The lease key of the waiting-room controller (one for every region).
pub const ROOM_CONTROLLER_LEASE: &str = "waiting-room.controller";

/// The lease of the projections writer: among projections replicas (every one serves reads),
/// the one holding it applies the streams to the store.
pub const PROJECTIONS_WRITER_LEASE: &str = "projections.writer";

/// The key of a registration in [`REVIEWS_BUCKET`]: its id (`<region>.<id>`), so one
/// region's keys are `<region>.*`.
pub fn review_key(id: &crate::model::RegistrationId) -> String {
    id.to_string()
}

/// The lease key of the reservation processor for `region`. Every replica that serves the
/// region (started for it alone, or for `*`) competes for this one key, so exactly one decides
/// the region at a time whatever mix of `REG_REGION` values the replicas were started with.
pub fn reservation_lease(region: &Region) -> String {
    format!("reservation.region.{region}")
}

/// The object name of `region`'s reservation snapshot in [`SNAPSHOTS_BUCKET`] (each new
/// snapshot replaces the previous one).
pub fn reservation_snapshot(region: &Region) -> String {
    format!("reservation.{region}")
}

const INTAKE_PREFIX: &str = "reg.intake";
const DECISION_PREFIX: &str = "reg.decision";
const CLAIM_PREFIX: &str = "reg.claim";
const KEY_PREFIX: &str = "reg.key";
const TICKET_PREFIX: &str = "reg.ticket";
const SEAL_PREFIX: &str = "reg.seal";

/// Subject of a citizen's claim records (keyed by citizen key, never by national id). Its last
/// message says whether the citizen holds a registration; writers fence on its sequence.
pub fn claim(citizen_key: &str) -> String {
    format!("{CLAIM_PREFIX}.{citizen_key}")
}

/// Subject of the registration an `Idempotency-Key` created, named by `key_digest`: the
/// keyed hash of the citizen key and the key ([`crate::claims::Claim::idempotency_key_hash`]),
/// so neither the citizen nor the key can be read from it. Written once, with the claim and the
/// registration, and never pushed out by what the citizen does later.
pub fn idempotency_key(key_digest: &str) -> String {
    format!("{KEY_PREFIX}.{key_digest}")
}

/// Subject of a waiting-room ticket's one use, named by the ticket's id: written once, with
/// the registration it admitted, fenced on the subject being empty, so a second use is
/// refused.
pub fn ticket(id: &str) -> String {
    format!("{TICKET_PREFIX}.{id}")
}

/// Subject of a registration's own data key, wrapped ([`crate::seals`]): written once, with
/// the registration, and destroyed to erase its personal data. The registration id holds its
/// region, so `reg.seal.<region>.>` is every key of a region.
pub fn seal(id: &crate::model::RegistrationId) -> String {
    format!("{SEAL_PREFIX}.{id}")
}

/// Filter for the own data keys of the regions in `filter`.
pub fn seal_filter(filter: &RegionFilter) -> String {
    format!("{SEAL_PREFIX}.{}.>", filter.token())
}

/// Which region(s) a service handles: one region, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionFilter {
    /// Every region (`*` in subjects).
    All,
    /// Only this region.
    One(Region),
}

impl RegionFilter {
    /// The subject token for this filter.
    pub fn token(&self) -> &str {
        match self {
            RegionFilter::All => "*",
            RegionFilter::One(r) => r.as_str(),
        }
    }

    /// Parses `*`/`all` or a region name.
    pub fn parse(s: &str) -> Result<Self, crate::model::InvalidValue> {
        match s {
            "*" | "all" | "" => Ok(RegionFilter::All),
            r => Region::parse(r).map(RegionFilter::One),
        }
    }
}

/// The kinds of message in the intake stream, one subject token each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeKind {
    /// A citizen's registration.
    Submitted,
    /// A citizen's cancellation.
    Cancel,
    /// An operator's capacity change.
    Capacity,
    /// An operator's registration window.
    Window,
    /// The government registry's verdict.
    Verification,
    /// An operator's decision on a manual review.
    Review,
    /// A slot's waiting list closing.
    Waitlist,
    /// A citizen's request for a fresh status link.
    Recover,
    /// An operator's request to deliver a dead letter again.
    Redrive,
    /// An operator's request to erase a registration's personal data.
    Erasure,
}

impl IntakeKind {
    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            IntakeKind::Submitted => "submitted",
            IntakeKind::Cancel => "cancel",
            IntakeKind::Capacity => "capacity",
            IntakeKind::Window => "window",
            IntakeKind::Verification => "verification",
            IntakeKind::Review => "review",
            IntakeKind::Waitlist => "waitlist",
            IntakeKind::Recover => "recover",
            IntakeKind::Redrive => "redrive",
            IntakeKind::Erasure => "erasure",
        }
    }
}

impl IntakeKind {
    /// Every kind of intake message.
    pub const ALL: [IntakeKind; 10] = [
        IntakeKind::Submitted,
        IntakeKind::Cancel,
        IntakeKind::Capacity,
        IntakeKind::Window,
        IntakeKind::Verification,
        IntakeKind::Review,
        IntakeKind::Waitlist,
        IntakeKind::Recover,
        IntakeKind::Redrive,
        IntakeKind::Erasure,
    ];

    /// The kind named by a subject token.
    pub fn from_token(token: &str) -> Option<Self> {
        IntakeKind::ALL
            .into_iter()
            .find(|kind| kind.token() == token)
    }
}

/// The subjects events travel on, by what they are for: each has one writer, and carries
/// only the event types that writer owns ([`SubjectKind::event_types`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// `reg.intake.<region>.<kind>`.
    Intake(IntakeKind),
    /// `reg.decision.<region>.reservation`: the reservation processor's decisions.
    ReservationDecisions,
    /// `reg.decision.<region>.notification`: the notification processor's records.
    NotificationDecisions,
}

impl SubjectKind {
    /// Every subject kind that carries events (claims carry claim records, not events).
    pub const ALL: [SubjectKind; 12] = [
        SubjectKind::Intake(IntakeKind::Submitted),
        SubjectKind::Intake(IntakeKind::Cancel),
        SubjectKind::Intake(IntakeKind::Capacity),
        SubjectKind::Intake(IntakeKind::Window),
        SubjectKind::Intake(IntakeKind::Verification),
        SubjectKind::Intake(IntakeKind::Review),
        SubjectKind::Intake(IntakeKind::Waitlist),
        SubjectKind::Intake(IntakeKind::Recover),
        SubjectKind::Intake(IntakeKind::Redrive),
        SubjectKind::Intake(IntakeKind::Erasure),
        SubjectKind::ReservationDecisions,
        SubjectKind::NotificationDecisions,
    ];

    /// The kind of an event subject (`reg.intake.<region>.<kind>`,
    /// `reg.decision.<region>.{reservation,notification}`); `None` for anything else (a
    /// claim's subject, a subject no writer of this version appends to).
    pub fn of(subject: &str) -> Option<Self> {
        // `<prefix>.<region>.<kind>`: the kind, when the region is one.
        let kind_after = |prefix: &str| {
            let (region, kind) = subject
                .strip_prefix(prefix)?
                .strip_prefix('.')?
                .split_once('.')?;
            Region::parse(region).ok().map(|_| kind)
        };
        if let Some(kind) = kind_after(INTAKE_PREFIX) {
            return IntakeKind::from_token(kind).map(SubjectKind::Intake);
        }
        match kind_after(DECISION_PREFIX)? {
            "reservation" => Some(SubjectKind::ReservationDecisions),
            "notification" => Some(SubjectKind::NotificationDecisions),
            _ => None,
        }
    }

    /// The subject of this kind for `region`.
    pub fn subject(self, region: &Region) -> String {
        match self {
            SubjectKind::Intake(kind) => intake(region, kind),
            SubjectKind::ReservationDecisions => reservation_decisions(region),
            SubjectKind::NotificationDecisions => notification_decisions(region),
        }
    }

    /// The event types ([`crate::events::Event::event_type`]) this subject's writer owns:
    /// the only ones it carries. The one table of ownership (the module's table shows it).
    pub fn event_types(self) -> &'static [&'static str] {
        match self {
            SubjectKind::Intake(IntakeKind::Submitted) => &["RegistrationSubmitted"],
            SubjectKind::Intake(IntakeKind::Cancel) => &["CancellationRequested"],
            SubjectKind::Intake(IntakeKind::Capacity) => &["CapacitySet"],
            SubjectKind::Intake(IntakeKind::Window) => &["WindowSet"],
            SubjectKind::Intake(IntakeKind::Verification) => &[
                "VerificationPassed",
                "VerificationFailed",
                "VerificationInconclusive",
            ],
            SubjectKind::Intake(IntakeKind::Review) => {
                &["VerificationPassed", "VerificationFailed", "ReviewRequeued"]
            }
            SubjectKind::Intake(IntakeKind::Waitlist) => &["WaitlistClosed"],
            SubjectKind::Intake(IntakeKind::Recover) => &["RecoveryRequested"],
            SubjectKind::Intake(IntakeKind::Redrive) => &["NotificationRedriveRequested"],
            SubjectKind::Intake(IntakeKind::Erasure) => &["ErasureRequested"],
            SubjectKind::ReservationDecisions => &[
                "SlotReserved",
                "RegistrationWaitlisted",
                "WaitlistPromoted",
                "SlotRejected",
                "SlotReleased",
                "ReviewRequired",
                "VerificationRequeued",
                "RegistrationConfirmed",
                "RegistrationCancelled",
                "RecoveryLinkIssued",
            ],
            SubjectKind::NotificationDecisions => &[
                "NotificationSent",
                "NotificationFailed",
                "PersonalDataErased",
            ],
        }
    }
}

/// Whether `subject` may carry an event of `event_type`: only an event subject, and only a
/// type its writer owns ([`SubjectKind::event_types`]).
pub fn accepts(subject: &str, event_type: &str) -> bool {
    SubjectKind::of(subject).is_some_and(|kind| kind.event_types().contains(&event_type))
}

/// Subject of an intake message of `kind` for `region`.
pub fn intake(region: &Region, kind: IntakeKind) -> String {
    format!("{INTAKE_PREFIX}.{region}.{}", kind.token())
}

/// The region an intake subject (`reg.intake.<region>.<kind>`) belongs to.
pub fn intake_region(subject: &str) -> Option<Region> {
    let rest = subject.strip_prefix(INTAKE_PREFIX)?.strip_prefix('.')?;
    let (region, _kind) = rest.split_once('.')?;
    Region::parse(region).ok()
}

/// The region a decision subject (`reg.decision.<region>.<kind>`) belongs to.
pub fn decision_region(subject: &str) -> Option<Region> {
    let rest = subject.strip_prefix(DECISION_PREFIX)?.strip_prefix('.')?;
    let (region, _kind) = rest.split_once('.')?;
    Region::parse(region).ok()
}

/// Filter for every intake message of the regions in `filter`.
pub fn intake_filter(filter: &RegionFilter) -> String {
    format!("{INTAKE_PREFIX}.{}.>", filter.token())
}

/// Filter for intake messages of one kind in the regions of `filter`.
pub fn intake_kind_filter(filter: &RegionFilter, kind: IntakeKind) -> String {
    format!("{INTAKE_PREFIX}.{}.{}", filter.token(), kind.token())
}

/// Subject of the reservation processor's decisions for `region`. One subject per region, so
/// "the last decision of this region" is one `Nats-Expected-Last-Subject-Sequence` check: the
/// fence that stops two replicas from writing conflicting decisions.
pub fn reservation_decisions(region: &Region) -> String {
    format!("{DECISION_PREFIX}.{region}.reservation")
}

/// Filter for the reservation decisions of the regions in `filter`.
pub fn reservation_decisions_filter(filter: &RegionFilter) -> String {
    format!("{DECISION_PREFIX}.{}.reservation", filter.token())
}

/// Subject of the notification processor's records for `region`.
pub fn notification_decisions(region: &Region) -> String {
    format!("{DECISION_PREFIX}.{region}.notification")
}

/// Filter for the notification records of the regions in `filter`.
pub fn notification_decisions_filter(filter: &RegionFilter) -> String {
    format!("{DECISION_PREFIX}.{}.notification", filter.token())
}

/// Filter for every decision of the regions in `filter`.
pub fn decisions_filter(filter: &RegionFilter) -> String {
    format!("{DECISION_PREFIX}.{}.>", filter.token())
}

/// Subjects captured by the intake stream.
pub fn intake_stream_subjects() -> Vec<String> {
    vec![
        format!("{INTAKE_PREFIX}.>"),
        format!("{CLAIM_PREFIX}.>"),
        format!("{KEY_PREFIX}.>"),
        format!("{TICKET_PREFIX}.>"),
        format!("{SEAL_PREFIX}.>"),
    ]
}

/// Subjects captured by the decisions stream.
pub fn decisions_stream_subjects() -> Vec<String> {
    vec![format!("{DECISION_PREFIX}.>")]
}

/// Name of the durable consumer the verification processor's replicas share for `region`.
pub fn verification_consumer(region: &Region) -> String {
    format!("verification_{region}")
}

/// Name of the durable consumer the notification processor's replicas share for `region`.
pub fn notification_consumer(region: &Region) -> String {
    format!("notification_{region}")
}

/// Name of the durable consumer of operators' erasure requests for `region` (the
/// notification processor's, which holds contacts and destroys the keys).
pub fn erasure_consumer(region: &Region) -> String {
    format!("notification_erasure_{region}")
}

/// Name of the durable consumer of operators' re-drive requests for `region`.
pub fn redrive_consumer(region: &Region) -> String {
    format!("notification_redrive_{region}")
}

/// Name of the reservation processor's ordered reader of `region`'s intake (in logs, metrics
/// and readiness, and in its consumer's [`READER_METADATA`], where the waiting-room
/// controller finds its backlog).
pub fn reservation_reader(region: &Region) -> String {
    format!("reservation.{region}")
}

/// Name of the projection worker's ordered reader of `stream` (see [`reservation_reader`]).
pub fn projection_reader(stream: &str) -> String {
    format!("projection.{}", stream.to_ascii_lowercase())
}

/// The consumer metadata key an ordered reader's name is kept under, so that the consumers
/// JetStream lists can be told apart (their own names are random).
pub const READER_METADATA: &str = "reg-reader";

/// Whether `subject` matches the NATS `filter` (`*` one token, `>` one or more at the end), as
/// nats-server matches subscriptions, consumer filters and permissions.
pub fn matches(filter: &str, subject: &str) -> bool {
    let (mut f, mut s) = (filter.split('.'), subject.split('.'));
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(a), Some(b)) if a == "*" || a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Header carrying the event type, so consumers can skip events without decoding payloads.
pub const EVENT_TYPE_HEADER: &str = "Reg-Event-Type";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_nats_server_matches_them() {
        assert!(matches(
            "reg.intake.*.capacity",
            "reg.intake.slaskie.capacity"
        ));
        assert!(!matches(
            "reg.intake.*.capacity",
            "reg.intake.slaskie.submitted"
        ));
        assert!(!matches("reg.intake.*.capacity", "reg.intake.capacity"));
        assert!(matches("reg.intake.>", "reg.intake.slaskie.capacity"));
        assert!(!matches("reg.intake.>", "reg.intake"));
        assert!(!matches("reg.claim.*", "reg.claim.a.b"));
        assert!(matches("reg.claim.abc", "reg.claim.abc"));
        assert!(!matches("reg.claim.abc", "reg.claim.abd"));
    }

    #[test]
    fn every_event_type_has_a_subject_and_every_subject_names_real_types() {
        for event_type in crate::events::EVENT_TYPES {
            assert!(
                SubjectKind::ALL
                    .iter()
                    .any(|kind| kind.event_types().contains(&event_type)),
                "{event_type} has no subject"
            );
        }
        let r = Region::parse("slaskie").unwrap();
        for kind in SubjectKind::ALL {
            assert_eq!(SubjectKind::of(&kind.subject(&r)), Some(kind));
            for event_type in kind.event_types() {
                assert!(
                    crate::events::EVENT_TYPES.contains(event_type),
                    "{kind:?} names {event_type}"
                );
            }
        }
        let verdict = intake(&r, IntakeKind::Verification);
        assert!(accepts(&verdict, "VerificationPassed"));
        assert!(!accepts(&verdict, "CancellationRequested"));
        assert!(!accepts(&verdict, "RegistrationConfirmed"));
        assert!(!accepts(&claim("c0ffee"), "RegistrationSubmitted"));
        assert!(!accepts(
            "reg.intake.slaskie.verification.x",
            "VerificationPassed"
        ));
        assert!(!accepts(
            "reg.intake.BAD.verification",
            "VerificationPassed"
        ));
        assert!(!accepts("reg.decision.slaskie.other", "SlotReserved"));
        assert!(!accepts(
            "other.intake.slaskie.submitted",
            "RegistrationSubmitted"
        ));
    }

    #[test]
    fn subjects_carry_the_region_and_filters_match_them() {
        let r = Region::parse("slaskie").unwrap();
        assert_eq!(
            intake(&r, IntakeKind::Submitted),
            "reg.intake.slaskie.submitted"
        );
        assert_eq!(
            reservation_decisions(&r),
            "reg.decision.slaskie.reservation"
        );
        assert_eq!(
            intake_filter(&RegionFilter::One(r.clone())),
            "reg.intake.slaskie.>"
        );
        assert_eq!(intake_filter(&RegionFilter::All), "reg.intake.*.>");
        assert_eq!(
            reservation_decisions_filter(&RegionFilter::All),
            "reg.decision.*.reservation"
        );
        assert_eq!(RegionFilter::parse("*").unwrap(), RegionFilter::All);
        assert_eq!(
            intake_region("reg.intake.slaskie.submitted"),
            Some(r.clone())
        );
        assert_eq!(intake_region("reg.claim.c0ffee"), None);
        assert_eq!(idempotency_key("c0ffee"), "reg.key.c0ffee");
        assert!(!matches(
            &intake_filter(&RegionFilter::All),
            "reg.key.c0ffee"
        ));
        assert_eq!(intake_region("reg.intake.BAD.submitted"), None);
        assert_eq!(
            decision_region(&notification_decisions(&r)),
            Some(r.clone())
        );
        assert_eq!(decision_region("reg.intake.slaskie.submitted"), None);
        assert_eq!(reservation_lease(&r), "reservation.region.slaskie");
        assert!(RegionFilter::parse("a.b").is_err());
    }
}
