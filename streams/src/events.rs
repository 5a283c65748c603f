//! The event envelope and every event of the system.
//!
//! Events are past-tense facts. Each has a type name (the enum variant, also sent in the
//! [`crate::subjects::EVENT_TYPE_HEADER`] header) and a schema version; decoding refuses a
//! version it does not know instead of guessing. Golden JSON files of every event live in
//! `streams/tests/golden/` and a test fails on any unintended change of the wire format.
//!
//! Personal data never appears in clear: [`RegistrationSubmitted::personal`] is sealed with
//! the data key (see [`crate::crypto`]), and citizens are identified by a keyed hash
//! ([`RegistrationSubmitted::citizen_key`]).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Region, RegistrationId, SlotKey};

/// Every event, tagged by type. The JSON form is `{"type": "...", "data": {...}}` inside the
/// [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    /// A citizen's registration was accepted by the edge and durably appended (intake).
    RegistrationSubmitted(RegistrationSubmitted),
    /// A citizen asked to cancel their registration (intake).
    CancellationRequested(CancellationRequested),
    /// An operator set the capacity of a slot (intake).
    CapacitySet(CapacitySet),
    /// An operator set a region's registration window (intake).
    WindowSet(WindowSet),
    /// The government registry confirmed the citizen (intake, from the verification processor).
    VerificationPassed(VerificationPassed),
    /// The government registry refused the citizen (intake, from the verification processor,
    /// or an operator deciding a manual review).
    VerificationFailed(VerificationFailed),
    /// The registry could not answer in time: an operator must decide (intake, from the
    /// verification processor).
    VerificationInconclusive(VerificationInconclusive),
    /// An operator put a registration in manual review back in the verification queue
    /// (intake).
    ReviewRequeued(ReviewRequeued),
    /// The waiting list of a slot closed: its date passed or its region's window closed
    /// (intake, from the reservation processor's clock).
    WaitlistClosed(WaitlistClosed),
    /// A citizen who lost their link asked for a fresh one (intake, from the edge).
    RecoveryRequested(RecoveryRequested),
    /// An operator asked to deliver a dead-lettered message again (intake, from the edge).
    NotificationRedriveRequested(NotificationRedriveRequested),
    /// An operator, on the citizen's request, asked to erase a registration's personal data
    /// (intake, from the edge). A registration still active is cancelled.
    ErasureRequested(ErasureRequested),
    /// A slot was reserved for a registration (decision).
    SlotReserved(SlotReserved),
    /// No slot could be given to a registration (decision, terminal).
    SlotRejected(SlotRejected),
    /// A reserved slot went back to the pool (decision).
    SlotReleased(SlotReleased),
    /// A registration waits in line for a full slot (decision).
    RegistrationWaitlisted(RegistrationWaitlisted),
    /// A waiting registration got a released place (decision).
    WaitlistPromoted(WaitlistPromoted),
    /// A registration's verification waits for an operator (decision).
    ReviewRequired(ReviewRequired),
    /// A registration in manual review goes through verification again (decision).
    VerificationRequeued(VerificationRequeued),
    /// A fresh status link is to be sent to the contact on record (decision).
    RecoveryLinkIssued(RecoveryLinkIssued),
    /// A registration holds its slot and is verified (decision, terminal).
    RegistrationConfirmed(RegistrationConfirmed),
    /// A registration was cancelled (decision, terminal).
    RegistrationCancelled(RegistrationCancelled),
    /// A message was sent to the citizen (decision, from the notification processor).
    NotificationSent(NotificationSent),
    /// A message could not be delivered (decision, from the notification processor).
    NotificationFailed(NotificationFailed),
    /// A registration's own data key was destroyed: its personal data can no longer be read
    /// anywhere (decision, from the notification processor).
    PersonalDataErased(PersonalDataErased),
}

/// Every event type of the contract, as [`Event::event_type`] names them: intake's first,
/// then the decisions'.
pub const EVENT_TYPES: [&str; 25] = [
    "RegistrationSubmitted",
    "CancellationRequested",
    "CapacitySet",
    "WindowSet",
    "VerificationPassed",
    "VerificationFailed",
    "VerificationInconclusive",
    "ReviewRequeued",
    "WaitlistClosed",
    "RecoveryRequested",
    "NotificationRedriveRequested",
    "ErasureRequested",
    "SlotReserved",
    "SlotRejected",
    "SlotReleased",
    "RegistrationWaitlisted",
    "WaitlistPromoted",
    "ReviewRequired",
    "VerificationRequeued",
    "RecoveryLinkIssued",
    "RegistrationConfirmed",
    "RegistrationCancelled",
    "NotificationSent",
    "NotificationFailed",
    "PersonalDataErased",
];

impl Event {
    /// The type name, as in the JSON `type` field and the event-type header.
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::RegistrationSubmitted(_) => "RegistrationSubmitted",
            Event::CancellationRequested(_) => "CancellationRequested",
            Event::CapacitySet(_) => "CapacitySet",
            Event::WindowSet(_) => "WindowSet",
            Event::VerificationPassed(_) => "VerificationPassed",
            Event::VerificationFailed(_) => "VerificationFailed",
            Event::VerificationInconclusive(_) => "VerificationInconclusive",
            Event::ReviewRequeued(_) => "ReviewRequeued",
            Event::WaitlistClosed(_) => "WaitlistClosed",
            Event::RecoveryRequested(_) => "RecoveryRequested",
            Event::NotificationRedriveRequested(_) => "NotificationRedriveRequested",
            Event::ErasureRequested(_) => "ErasureRequested",
            Event::SlotReserved(_) => "SlotReserved",
            Event::SlotRejected(_) => "SlotRejected",
            Event::SlotReleased(_) => "SlotReleased",
            Event::RegistrationWaitlisted(_) => "RegistrationWaitlisted",
            Event::WaitlistPromoted(_) => "WaitlistPromoted",
            Event::ReviewRequired(_) => "ReviewRequired",
            Event::VerificationRequeued(_) => "VerificationRequeued",
            Event::RecoveryLinkIssued(_) => "RecoveryLinkIssued",
            Event::RegistrationConfirmed(_) => "RegistrationConfirmed",
            Event::RegistrationCancelled(_) => "RegistrationCancelled",
            Event::NotificationSent(_) => "NotificationSent",
            Event::NotificationFailed(_) => "NotificationFailed",
            Event::PersonalDataErased(_) => "PersonalDataErased",
        }
    }

    /// The schema version this code writes for the event's type. Bump it (and add an upcaster
    /// in [`Envelope::decode`]) whenever a type's fields change incompatibly.
    pub fn event_version(&self) -> u16 {
        1
    }

    /// The registration this event concerns, if any.
    pub fn registration_id(&self) -> Option<&RegistrationId> {
        match self {
            Event::RegistrationSubmitted(e) => Some(&e.registration_id),
            Event::CancellationRequested(e) => Some(&e.registration_id),
            Event::VerificationPassed(e) => Some(&e.registration_id),
            Event::VerificationFailed(e) => Some(&e.registration_id),
            Event::VerificationInconclusive(e) => Some(&e.registration_id),
            Event::ReviewRequeued(e) => Some(&e.registration_id),
            Event::SlotReserved(e) => Some(&e.registration_id),
            Event::SlotRejected(e) => Some(&e.registration_id),
            Event::SlotReleased(e) => Some(&e.registration_id),
            Event::RegistrationWaitlisted(e) => Some(&e.registration_id),
            Event::WaitlistPromoted(e) => Some(&e.registration_id),
            Event::ReviewRequired(e) => Some(&e.registration_id),
            Event::VerificationRequeued(e) => Some(&e.registration_id),
            Event::RecoveryRequested(e) => Some(&e.registration_id),
            Event::NotificationRedriveRequested(e) => Some(&e.registration_id),
            Event::ErasureRequested(e) => Some(&e.registration_id),
            Event::PersonalDataErased(e) => Some(&e.registration_id),
            Event::RecoveryLinkIssued(e) => Some(&e.registration_id),
            Event::RegistrationConfirmed(e) => Some(&e.registration_id),
            Event::RegistrationCancelled(e) => Some(&e.registration_id),
            Event::NotificationSent(e) => Some(&e.registration_id),
            Event::NotificationFailed(e) => Some(&e.registration_id),
            Event::CapacitySet(_) | Event::WindowSet(_) | Event::WaitlistClosed(_) => None,
        }
    }
}

/// Personal fields, encrypted together (ChaCha20-Poly1305) with the registration id as
/// associated data, so a sealed block cannot be moved to another registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Which data key sealed it, so keys can be rotated.
    pub key_id: String,
    /// The 96-bit nonce, base64url without padding.
    pub nonce: String,
    /// The ciphertext with its tag, base64url without padding.
    pub ciphertext: String,
}

/// The personal part of a registration, only ever stored sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersonalData {
    /// The national id (PESEL by default).
    pub national_id: String,
    /// The citizen's full name.
    pub full_name: String,
    /// The citizen's birth date.
    pub birth_date: NaiveDate,
    /// Where to send e-mail, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Where to send text messages, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The questionnaire answers.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A registration accepted by the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistrationSubmitted {
    /// The new registration's id.
    pub registration_id: RegistrationId,
    /// The slot asked for.
    pub slot: SlotKey,
    /// Keyed hash of the national id: one active registration per citizen is enforced on it
    /// without storing the national id in clear.
    pub citizen_key: String,
    /// Hash of the canonical request, so a replay with the same idempotency key and a
    /// different body is recognised.
    pub request_hash: String,
    /// The language for messages to the citizen.
    pub language: String,
    /// Personal data, sealed.
    pub personal: Sealed,
}

/// A citizen's cancellation, checked against the registration's token by the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationRequested {
    /// The registration to cancel.
    pub registration_id: RegistrationId,
}

/// An operator's capacity for one slot. Lowering it below what is reserved revokes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacitySet {
    /// The slot.
    pub slot: SlotKey,
    /// The new total capacity.
    pub capacity: u32,
}

/// An operator's registration window for a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSet {
    /// The region.
    pub region: Region,
    /// From when submissions are accepted.
    pub opens_at: DateTime<Utc>,
    /// Until when submissions are accepted.
    pub closes_at: DateTime<Utc>,
}

/// Who decided a manual review, and why: kept in the log for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewer {
    /// The operator's name as given to the admin endpoint.
    pub operator: String,
    /// Why, in the operator's words.
    pub note: String,
}

/// The registry confirmed the citizen (or an operator did, deciding a manual review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationPassed {
    /// The registration verified.
    pub registration_id: RegistrationId,
    /// The operator who decided, when it was a manual review; none when the registry answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<Reviewer>,
}

/// What the registry (or an operator) found wrong with a citizen's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryRefusal {
    /// The registry knows the national id but the name or birth date differ.
    DataMismatch,
    /// The registry records the citizen as deceased.
    Deceased,
    /// The registry does not know the national id.
    NotFound,
}

impl RegistryRefusal {
    /// The reason as shown in the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryRefusal::DataMismatch => "data_mismatch",
            RegistryRefusal::Deceased => "deceased",
            RegistryRefusal::NotFound => "not_found",
        }
    }
}

/// The registry refused the citizen (or an operator did, deciding a manual review).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationFailed {
    /// The registration refused.
    pub registration_id: RegistrationId,
    /// Why.
    pub reason: RegistryRefusal,
    /// The operator who decided, when it was a manual review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<Reviewer>,
}

/// The registry gave no usable answer within the verification processor's bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationInconclusive {
    /// The registration.
    pub registration_id: RegistrationId,
    /// How many times the registry was asked.
    pub attempts: u32,
    /// The last failure's fixed sentence (see [`crate::outside`]). Events written before
    /// `error_code` existed hold the registry's own words here: show them through
    /// [`crate::outside::shown`], never as they are.
    pub last_error: String,
    /// The last failure's code (`registry_timeout`, `registry_http_503`, …); empty in events
    /// written before it existed.
    #[serde(default)]
    pub error_code: String,
}

/// An operator sent a registration in manual review back to the verification queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequeued {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Who, and why.
    pub reviewer: Reviewer,
}

/// Why a slot's waiting list closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The slot's date has passed.
    DatePassed,
    /// The region's registration window has closed.
    WindowClosed,
}

/// A slot's waiting list closed: those still waiting are rejected, nobody new joins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistClosed {
    /// The slot.
    pub slot: SlotKey,
    /// Why.
    pub reason: CloseReason,
    /// For a closed window: when the window the closer saw closed. The reservation rule
    /// ignores the closing if, in log order, an operator's window closing later came before
    /// it (the closer was behind an extension). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_closes_at: Option<DateTime<Utc>>,
}

/// Why a registration got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Every slot of that (region, location, date) is taken.
    SlotFull,
    /// No capacity was ever set for that (region, location, date).
    UnknownSlot,
    /// The registration waited in line until the slot's waiting list closed.
    WaitlistClosed,
    /// The registry found the name or birth date differ from its records.
    DataMismatch,
    /// The registry records the citizen as deceased.
    Deceased,
    /// The registry does not know the national id.
    NotFound,
}

impl From<RegistryRefusal> for RejectReason {
    fn from(refusal: RegistryRefusal) -> Self {
        match refusal {
            RegistryRefusal::DataMismatch => RejectReason::DataMismatch,
            RegistryRefusal::Deceased => RejectReason::Deceased,
            RegistryRefusal::NotFound => RejectReason::NotFound,
        }
    }
}

impl RejectReason {
    /// The reason as shown in the status API.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::SlotFull => "slot_full",
            RejectReason::UnknownSlot => "unknown_slot",
            RejectReason::WaitlistClosed => "waitlist_closed",
            RejectReason::DataMismatch => "data_mismatch",
            RejectReason::Deceased => "deceased",
            RejectReason::NotFound => "not_found",
        }
    }
}

/// Why a slot went back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The citizen cancelled.
    Cancelled,
    /// The registry refused the citizen.
    VerificationFailed,
}

/// A slot held for a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReserved {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The citizen's key (kept in the reservation state for later terminal decisions).
    pub citizen_key: String,
    /// The slot held.
    pub slot: SlotKey,
    /// The intake sequence of the submission this decision answers.
    pub intake_seq: u64,
    /// Reservations active on the slot after this one.
    pub reserved: u32,
    /// The slot's capacity when deciding.
    pub capacity: u32,
}

/// No slot for a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRejected {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The citizen's key: a terminal decision releases the citizen's claim.
    pub citizen_key: String,
    /// The slot asked for.
    pub slot: SlotKey,
    /// The intake sequence of the event this decision answers.
    pub intake_seq: u64,
    /// Why.
    pub reason: RejectReason,
    /// Registrations still waiting for the slot, when this one left its waiting list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u32>,
    /// The intake sequence of the registration's submission (where its sealed personal data
    /// is, for the processors that need it). 0 in events written before it existed.
    #[serde(default)]
    pub submission_seq: u64,
}

/// A reservation returned to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReleased {
    /// The registration that held it.
    pub registration_id: RegistrationId,
    /// The slot.
    pub slot: SlotKey,
    /// The intake sequence of the event this decision answers.
    pub intake_seq: u64,
    /// Why.
    pub reason: ReleaseReason,
    /// Reservations active on the slot after the release.
    pub reserved: u32,
    /// The slot's capacity when deciding.
    pub capacity: u32,
}

/// A registration that holds its slot and passed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationConfirmed {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of the event this decision answers.
    pub intake_seq: u64,
    /// The intake sequence of the registration's submission (where its sealed personal data
    /// is, for the processors that need it). 0 in events written before it existed.
    #[serde(default)]
    pub submission_seq: u64,
}

/// A cancelled registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationCancelled {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The citizen's key: a terminal decision releases the citizen's claim.
    pub citizen_key: String,
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of the cancellation.
    pub intake_seq: u64,
    /// Registrations still waiting for the slot, when this one left its waiting list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u32>,
    /// The intake sequence of the registration's submission (where its sealed personal data
    /// is, for the processors that need it). 0 in events written before it existed.
    #[serde(default)]
    pub submission_seq: u64,
}

/// A registration waits in line for a full slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationWaitlisted {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The citizen's key (kept in the reservation state for later terminal decisions).
    pub citizen_key: String,
    /// The slot it waits for.
    pub slot: SlotKey,
    /// The intake sequence of its submission: its place in line.
    pub intake_seq: u64,
    /// Its position when it joined (1 = next in line).
    pub position: u32,
    /// Registrations waiting for the slot, this one included.
    pub waiting: u32,
}

/// A waiting registration got a place that was released (or added by a capacity increase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistPromoted {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The slot it now holds.
    pub slot: SlotKey,
    /// The intake sequence of the event that freed the place.
    pub intake_seq: u64,
    /// The intake sequence of the registration's submission (where its personal data is).
    pub submission_seq: u64,
    /// Reservations active on the slot after this one.
    pub reserved: u32,
    /// The slot's capacity when deciding.
    pub capacity: u32,
    /// Registrations still waiting after this one left the line.
    pub waiting: u32,
}

/// A registration's verification waits for an operator; its place stays held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRequired {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of the inconclusive verification.
    pub intake_seq: u64,
    /// How many times the registry was asked.
    pub attempts: u32,
    /// As in [`VerificationInconclusive::last_error`].
    pub last_error: String,
    /// As in [`VerificationInconclusive::error_code`].
    #[serde(default)]
    pub error_code: String,
    /// The intake sequence of the registration's submission (where its sealed personal data
    /// is, for the processors that need it). 0 in events written before it existed.
    #[serde(default)]
    pub submission_seq: u64,
}

/// A registration in manual review goes through verification again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRequeued {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of the operator's request.
    pub intake_seq: u64,
    /// The intake sequence of the registration's submission (where its personal data is).
    pub submission_seq: u64,
}

/// A citizen asked for a fresh status link; the edge found their latest registration by the
/// keyed citizen key, so this names no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRequested {
    /// The citizen's latest registration.
    pub registration_id: RegistrationId,
}

/// An operator asked to deliver a dead-lettered message again (the provider is back, the
/// address was fixed at the provider's side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRedriveRequested {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The decisions-stream sequence of the decision the message tells of.
    pub decision_seq: u64,
    /// `email` or `webhook`.
    pub channel: String,
    /// Who, and why.
    pub reviewer: Reviewer,
}

/// An operator, on the citizen's request, asked to erase a registration's personal data.
/// Names no personal data: the edge found the registration by the keyed citizen key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRequested {
    /// The registration whose personal data is to be erased.
    pub registration_id: RegistrationId,
    /// Who, and on what grounds (e.g. the request's reference).
    pub reviewer: Reviewer,
}

/// A registration's own data key was destroyed ([`crate::seals::erase`]): its sealed
/// personal data stays in the log and can no longer be opened. Recorded at least once per
/// request; readers key it by registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalDataErased {
    /// The registration.
    pub registration_id: RegistrationId,
    /// The intake sequence of the request.
    pub intake_seq: u64,
}

/// A fresh status link goes to the contact on record of a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryLinkIssued {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot.
    pub slot: SlotKey,
    /// The intake sequence of the request.
    pub intake_seq: u64,
    /// The intake sequence of the registration's submission (the contact).
    pub submission_seq: u64,
}

/// A message was delivered to a citizen's provider (the mail server, the webhook gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationSent {
    /// Deterministic per (registration, decision, channel); the provider's idempotency key
    /// (`X-Notification-Id`), and what readers key the record by: it is written packed with
    /// others ([`crate::pack`]), so a retried write may store it twice.
    pub notification_id: String,
    /// The registration.
    pub registration_id: RegistrationId,
    /// `email` or `webhook`.
    pub channel: String,
    /// Which message (`reserved`, `waitlisted`, `confirmed`, `rejected`, `manual_review`,
    /// `cancelled`).
    pub template: String,
    /// The decisions-stream sequence of the decision the message tells of.
    pub decision_seq: u64,
}

/// A message could not be delivered within the bounds: the dead letter an operator can
/// re-drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationFailed {
    /// As in [`NotificationSent`].
    pub notification_id: String,
    /// The registration.
    pub registration_id: RegistrationId,
    /// `email` or `webhook`.
    pub channel: String,
    /// Which message.
    pub template: String,
    /// The decisions-stream sequence of the decision the message tells of.
    pub decision_seq: u64,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure's fixed sentence (see [`crate::outside`]). Events written before
    /// `error_code` existed hold the provider's own words here: show them through
    /// [`crate::outside::shown`], never as they are.
    pub last_error: String,
    /// The last failure's code (`smtp_550`, `webhook_http_503`, …); empty in events written
    /// before it existed.
    #[serde(default)]
    pub error_code: String,
}

/// The envelope every event travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per event; sent as `Nats-Msg-Id` where JetStream deduplication applies.
    pub event_id: Uuid,
    /// When the fact happened (the edge's clock for intake, the processor's for decisions).
    pub occurred_at: DateTime<Utc>,
    /// Ties together everything caused by one request: the registration id for citizen
    /// events, a request id for operator events.
    pub correlation_id: String,
    /// Schema version of the event's type.
    pub version: u16,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

/// Why bytes could not be decoded into an [`Envelope`]. Permanent: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the envelope's shape, or an unknown event type.
    #[error("malformed event: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A version this code does not know (written by newer code).
    #[error("event {event_type} has version {version}, newer than this code understands")]
    UnknownVersion {
        /// The type.
        event_type: String,
        /// The version found.
        version: u16,
    },
    /// A pack (see [`crate::pack`]) with no record in it: no writer of this code makes one.
    #[error("a pack of records holds no record")]
    EmptyPack,
    /// An event type the subject's writer does not own (see
    /// [`crate::subjects::SubjectKind::event_types`]): an identity allowed to append there
    /// appended what only another may. Refused like an undecodable record.
    #[error("event {event_type} does not belong on {subject}: only the types its writer owns do")]
    Foreign {
        /// The type found.
        event_type: String,
        /// The subject it was appended to.
        subject: String,
    },
}

impl Envelope {
    /// Wraps `event` in a new envelope with a fresh id and the current time.
    pub fn new(correlation_id: impl Into<String>, event: Event) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            occurred_at: Utc::now(),
            correlation_id: correlation_id.into(),
            version: event.event_version(),
            event,
        }
    }

    /// Serializes to JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        crate::scratch::json(self, <[u8]>::to_vec)
    }

    /// Deserializes a record read from the log on `subject`, refusing versions newer than
    /// this code and event types the subject's writer does not own
    /// ([`crate::subjects::accepts`]). Every reader of the logs decodes through this.
    pub fn decode_from(subject: &str, bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope = Envelope::decode(bytes)?;
        envelope.belongs_on(subject)?;
        Ok(envelope)
    }

    /// Refuses an event type `subject`'s writer does not own.
    fn belongs_on(&self, subject: &str) -> Result<(), DecodeError> {
        let event_type = self.event.event_type();
        if !crate::subjects::accepts(subject, event_type) {
            return Err(DecodeError::Foreign {
                event_type: event_type.to_owned(),
                subject: subject.to_owned(),
            });
        }
        Ok(())
    }

    /// Deserializes, refusing versions newer than this code. The bytes alone say nothing of
    /// who wrote them: a record read from the log goes through [`Envelope::decode_from`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Envelope::checked(serde_json::from_slice(bytes)?)
    }

    fn checked(envelope: Envelope) -> Result<Self, DecodeError> {
        if envelope.version > envelope.event.event_version() {
            return Err(DecodeError::UnknownVersion {
                event_type: envelope.event.event_type().to_owned(),
                version: envelope.version,
            });
        }
        Ok(envelope)
    }

    /// Deserializes every record of one message read from the log on `subject`: one
    /// envelope, or a *pack* of them (a JSON array, see [`crate::pack`]). Each record is
    /// checked as [`Envelope::decode_from`] checks one; one that fails refuses the message.
    /// Readers of a subject that may carry packs (see [`crate::pack`]) decode through this.
    pub fn decode_all_from(subject: &str, bytes: &[u8]) -> Result<Vec<Self>, DecodeError> {
        let envelopes = Envelope::decode_all(bytes)?;
        for envelope in &envelopes {
            envelope.belongs_on(subject)?;
        }
        Ok(envelopes)
    }

    /// [`Envelope::decode_all_from`] without the subject's check: for tools that only count
    /// or time what they read.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<Self>, DecodeError> {
        if !crate::pack::is_pack(bytes) {
            return Ok(vec![Envelope::decode(bytes)?]);
        }
        let envelopes: Vec<Envelope> = serde_json::from_slice(bytes)?;
        if envelopes.is_empty() {
            return Err(DecodeError::EmptyPack);
        }
        envelopes.into_iter().map(Envelope::checked).collect()
    }
}

/// One sample of every event, with fixed ids and times: the source of the golden files. Only
/// in tests (and behind the `samples` feature for other crates' tests).
#[cfg(any(test, feature = "samples"))]
pub fn samples() -> Vec<Envelope> {
    let region = Region::parse("mazowieckie").unwrap();
    let slot = SlotKey {
        region: region.clone(),
        location: crate::model::Location::parse("warszawa-narodowy").unwrap(),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).unwrap(),
    };
    let id = RegistrationId::parse("mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f").unwrap();
    let at = DateTime::parse_from_rfc3339("2027-02-01T08:00:00.123Z")
        .unwrap()
        .with_timezone(&Utc);
    let events = vec![
        Event::RegistrationSubmitted(RegistrationSubmitted {
            registration_id: id.clone(),
            slot: slot.clone(),
            citizen_key: "5f2b9c0e7a4d1c3b8e6f0a9d2c4b7e1f".into(),
            request_hash: "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b".into(),
            language: "pl".into(),
            personal: Sealed {
                key_id: "k1".into(),
                nonce: "AAECAwQFBgcICQoL".into(),
                ciphertext: "c2VhbGVkIHBlcnNvbmFsIGRhdGE".into(),
            },
        }),
        Event::CancellationRequested(CancellationRequested {
            registration_id: id.clone(),
        }),
        Event::CapacitySet(CapacitySet {
            slot: slot.clone(),
            capacity: 120,
        }),
        Event::WindowSet(WindowSet {
            region: region.clone(),
            opens_at: at,
            closes_at: at + chrono::Duration::hours(90),
        }),
        Event::VerificationPassed(VerificationPassed {
            registration_id: id.clone(),
            reviewer: None,
        }),
        Event::VerificationFailed(VerificationFailed {
            registration_id: id.clone(),
            reason: RegistryRefusal::NotFound,
            reviewer: Some(Reviewer {
                operator: "a.nowak".into(),
                note: "the registry office confirmed by phone".into(),
            }),
        }),
        Event::VerificationInconclusive(VerificationInconclusive {
            registration_id: id.clone(),
            attempts: 8,
            last_error: "the registry answered an HTTP error status without a usable fault".into(),
            error_code: "registry_http_503".into(),
        }),
        Event::ReviewRequeued(ReviewRequeued {
            registration_id: id.clone(),
            reviewer: Reviewer {
                operator: "a.nowak".into(),
                note: "the registry is back".into(),
            },
        }),
        Event::WaitlistClosed(WaitlistClosed {
            slot: slot.clone(),
            reason: CloseReason::DatePassed,
            window_closes_at: None,
        }),
        Event::RecoveryRequested(RecoveryRequested {
            registration_id: id.clone(),
        }),
        Event::NotificationRedriveRequested(NotificationRedriveRequested {
            registration_id: id.clone(),
            decision_seq: 18,
            channel: "webhook".into(),
            reviewer: Reviewer {
                operator: "a.nowak".into(),
                note: "the gateway is back".into(),
            },
        }),
        Event::SlotReserved(SlotReserved {
            registration_id: id.clone(),
            citizen_key: "5f2b9c0e7a4d1c3b8e6f0a9d2c4b7e1f".into(),
            slot: slot.clone(),
            intake_seq: 42,
            reserved: 7,
            capacity: 120,
        }),
        Event::SlotRejected(SlotRejected {
            registration_id: id.clone(),
            citizen_key: "5f2b9c0e7a4d1c3b8e6f0a9d2c4b7e1f".into(),
            slot: slot.clone(),
            intake_seq: 42,
            reason: RejectReason::SlotFull,
            waiting: None,
            submission_seq: 42,
        }),
        Event::SlotReleased(SlotReleased {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 57,
            reason: ReleaseReason::Cancelled,
            reserved: 6,
            capacity: 120,
        }),
        Event::RegistrationWaitlisted(RegistrationWaitlisted {
            registration_id: id.clone(),
            citizen_key: "5f2b9c0e7a4d1c3b8e6f0a9d2c4b7e1f".into(),
            slot: slot.clone(),
            intake_seq: 42,
            position: 3,
            waiting: 3,
        }),
        Event::WaitlistPromoted(WaitlistPromoted {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 57,
            submission_seq: 42,
            reserved: 120,
            capacity: 120,
            waiting: 2,
        }),
        Event::ReviewRequired(ReviewRequired {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 61,
            attempts: 8,
            last_error: "the registry answered an HTTP error status without a usable fault".into(),
            error_code: "registry_http_503".into(),
            submission_seq: 42,
        }),
        Event::VerificationRequeued(VerificationRequeued {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 62,
            submission_seq: 42,
        }),
        Event::RegistrationConfirmed(RegistrationConfirmed {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 63,
            submission_seq: 42,
        }),
        Event::RecoveryLinkIssued(RecoveryLinkIssued {
            registration_id: id.clone(),
            slot: slot.clone(),
            intake_seq: 70,
            submission_seq: 42,
        }),
        Event::RegistrationCancelled(RegistrationCancelled {
            registration_id: id.clone(),
            citizen_key: "5f2b9c0e7a4d1c3b8e6f0a9d2c4b7e1f".into(),
            slot,
            intake_seq: 57,
            waiting: None,
            submission_seq: 42,
        }),
        Event::NotificationSent(NotificationSent {
            notification_id: "7c1f0b2a9e4d6c3b8a5f1e0d2c4b6a8e".into(),
            registration_id: id.clone(),
            channel: "email".into(),
            template: "reserved".into(),
            decision_seq: 17,
        }),
        Event::NotificationFailed(NotificationFailed {
            notification_id: "7c1f0b2a9e4d6c3b8a5f1e0d2c4b6a8e".into(),
            registration_id: id.clone(),
            channel: "webhook".into(),
            template: "confirmed".into(),
            decision_seq: 18,
            attempts: 10,
            last_error: "the gateway answered an HTTP error status".into(),
            error_code: "webhook_http_503".into(),
        }),
        // Contract 1.2's, after the others so that theirs keep their event ids.
        Event::ErasureRequested(ErasureRequested {
            registration_id: id.clone(),
            reviewer: Reviewer {
                operator: "a.nowak".into(),
                note: "the citizen's request of 2027-03-02, ref. 4411".into(),
            },
        }),
        Event::PersonalDataErased(PersonalDataErased {
            registration_id: id.clone(),
            intake_seq: 51,
        }),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| Envelope {
            event_id: Uuid::from_u128(0x0190f3c2_a1b2_7c3e_8d4f_000000000000 + i as u128),
            occurred_at: at,
            correlation_id: id.to_string(),
            version: event.event_version(),
            event,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_round_trips() {
        for envelope in samples() {
            let decoded = Envelope::decode(&envelope.encode()).unwrap();
            assert_eq!(decoded, envelope);
        }
    }

    #[test]
    fn a_newer_version_is_refused_not_guessed() {
        let mut json: serde_json::Value = serde_json::from_slice(&samples()[0].encode()).unwrap();
        json["version"] = 2.into();
        let err = Envelope::decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnknownVersion { version: 2, .. }
        ));
    }

    #[test]
    fn decisions_written_before_submission_seq_existed_still_decode() {
        let bytes = br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000009","occurred_at":"2027-02-01T08:00:00.123Z","correlation_id":"x","version":1,"type":"RegistrationConfirmed","data":{"registration_id":"mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f","slot":{"region":"mazowieckie","location":"warszawa-narodowy","date":"2027-03-01"},"intake_seq":63}}"#;
        match Envelope::decode(bytes).unwrap().event {
            Event::RegistrationConfirmed(e) => {
                assert_eq!((e.intake_seq, e.submission_seq), (63, 0))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_type_is_malformed() {
        let bytes = br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000000","occurred_at":"2027-02-01T08:00:00Z","correlation_id":"x","version":1,"type":"SlotStolen","data":{}}"#;
        assert!(matches!(
            Envelope::decode(bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
