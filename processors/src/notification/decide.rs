//! The notification rules, pure: which decisions a citizen is told of, on which channels,
//! under which deterministic id, and in which words (templates in `processors/templates/`,
//! English and Polish, chosen by the registration's language).

use streams::crypto::sha256_hex;
use streams::events::{Event, RejectReason};
use streams::model::{RegistrationId, SlotKey};

/// What a message tells the citizen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A place is held (also after waiting in line); verification follows.
    Reserved,
    /// In line, at this position when it joined.
    Waitlisted {
        /// 1 = next in line.
        position: u32,
    },
    /// Place held and verified.
    Confirmed,
    /// No place, for this reason.
    Rejected(RejectReason),
    /// An operator will decide.
    ManualReview,
    /// Cancelled.
    Cancelled,
    /// A fresh link, asked for by a citizen who lost theirs.
    Recovery,
}

impl Kind {
    /// The template's name (and the `template` of the `NotificationSent` record).
    pub fn template(self) -> &'static str {
        match self {
            Kind::Reserved => "reserved",
            Kind::Waitlisted { .. } => "waitlisted",
            Kind::Confirmed => "confirmed",
            Kind::Rejected(_) => "rejected",
            Kind::ManualReview => "manual_review",
            Kind::Cancelled => "cancelled",
            Kind::Recovery => "recovery",
        }
    }
}

/// A decision a citizen is told of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot.
    pub slot: SlotKey,
    /// Where its sealed submission (the contact) is.
    pub submission_seq: u64,
    /// What to say.
    pub kind: Kind,
}

/// The notice of a reservation decision, if the citizen is told of it. A release is not
/// (the cancellation or refusal that caused it is), nor is a requeued verification.
pub fn notice(event: &Event) -> Option<Notice> {
    let (registration_id, slot, submission_seq, kind) = match event {
        Event::SlotReserved(e) => (&e.registration_id, &e.slot, e.intake_seq, Kind::Reserved),
        Event::WaitlistPromoted(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::Reserved,
        ),
        Event::RegistrationWaitlisted(e) => (
            &e.registration_id,
            &e.slot,
            e.intake_seq,
            Kind::Waitlisted {
                position: e.position,
            },
        ),
        Event::RegistrationConfirmed(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::Confirmed,
        ),
        Event::SlotRejected(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::Rejected(e.reason),
        ),
        Event::ReviewRequired(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::ManualReview,
        ),
        Event::RegistrationCancelled(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::Cancelled,
        ),
        Event::RecoveryLinkIssued(e) => (
            &e.registration_id,
            &e.slot,
            e.submission_seq,
            Kind::Recovery,
        ),
        _ => return None,
    };
    // Written before decisions named their submission: there is no contact to reach.
    (submission_seq > 0).then(|| Notice {
        registration_id: registration_id.clone(),
        slot: slot.clone(),
        submission_seq,
        kind,
    })
}

/// A way to reach the citizen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// E-mail over SMTP.
    Email,
    /// A signed webhook to the text-message gateway.
    Webhook,
}

impl Channel {
    /// The name in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Webhook => "webhook",
        }
    }
}

/// The channels the citizen's contact data allow: e-mail if they gave an address, the text
/// gateway if they gave a phone.
pub fn channels(email: Option<&str>, phone: Option<&str>) -> Vec<Channel> {
    let mut channels = Vec::new();
    if email.is_some_and(|e| !e.is_empty()) {
        channels.push(Channel::Email);
    }
    if phone.is_some_and(|p| !p.is_empty()) {
        channels.push(Channel::Webhook);
    }
    channels
}

/// The notification's id: the same for every delivery of one decision on one channel, so the
/// provider (and this processor's record) can tell a retry from a new message.
pub fn notification_id(id: &RegistrationId, decision_seq: u64, channel: Channel) -> String {
    sha256_hex(format!("notification/v1/{id}/{decision_seq}/{}", channel.as_str()).as_bytes())[..32]
        .to_owned()
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject line.
    pub subject: String,
    /// Plain text.
    pub text: String,
    /// HTML, the same words.
    pub html: String,
}

/// The languages with templates; any other falls back to English.
fn supported(language: &str) -> &'static str {
    match language {
        "pl" => "pl",
        _ => "en",
    }
}

fn template(language: &str, kind: Kind) -> &'static str {
    macro_rules! t {
        ($lang:literal, $name:literal) => {
            include_str!(concat!("../../templates/", $lang, "/", $name, ".txt"))
        };
    }
    match (language, kind) {
        ("pl", Kind::Reserved) => t!("pl", "reserved"),
        ("pl", Kind::Waitlisted { .. }) => t!("pl", "waitlisted"),
        ("pl", Kind::Confirmed) => t!("pl", "confirmed"),
        ("pl", Kind::Rejected(_)) => t!("pl", "rejected"),
        ("pl", Kind::ManualReview) => t!("pl", "manual_review"),
        ("pl", Kind::Cancelled) => t!("pl", "cancelled"),
        ("pl", Kind::Recovery) => t!("pl", "recovery"),
        (_, Kind::Reserved) => t!("en", "reserved"),
        (_, Kind::Waitlisted { .. }) => t!("en", "waitlisted"),
        (_, Kind::Confirmed) => t!("en", "confirmed"),
        (_, Kind::Rejected(_)) => t!("en", "rejected"),
        (_, Kind::ManualReview) => t!("en", "manual_review"),
        (_, Kind::Cancelled) => t!("en", "cancelled"),
        (_, Kind::Recovery) => t!("en", "recovery"),
    }
}

fn layout(language: &str) -> &'static str {
    match language {
        "pl" => include_str!("../../templates/pl/layout.html"),
        _ => include_str!("../../templates/en/layout.html"),
    }
}

/// Why a registration was rejected, in plain words.
fn reason(language: &str, reason: RejectReason) -> &'static str {
    match (language, reason) {
        ("pl", RejectReason::SlotFull) => "Wszystkie miejsca i lista oczekujących są pełne.",
        ("pl", RejectReason::UnknownSlot) => "W tym miejscu i dniu nie ma szczepień.",
        ("pl", RejectReason::WaitlistClosed) => {
            "Lista oczekujących została zamknięta, zanim zwolniło się miejsce."
        }
        ("pl", RejectReason::DataMismatch) => {
            "Imię, nazwisko lub data urodzenia nie zgadzają się z rejestrem państwowym."
        }
        ("pl", RejectReason::Deceased | RejectReason::NotFound) => {
            "Rejestr państwowy nie potwierdził Twoich danych."
        }
        (_, RejectReason::SlotFull) => "Every place and the waiting list are full.",
        (_, RejectReason::UnknownSlot) => "There are no vaccinations at that place on that day.",
        (_, RejectReason::WaitlistClosed) => "The waiting list closed before a place was freed.",
        (_, RejectReason::DataMismatch) => {
            "Your name or birth date does not match the national registry."
        }
        (_, RejectReason::Deceased | RejectReason::NotFound) => {
            "The national registry could not confirm your details."
        }
    }
}

/// Renders the message for `notice` in `language`, with `link` (the citizen page, the token
/// in its fragment) as the way back to the registration.
pub fn render(notice: &Notice, language: &str, link: &str) -> Message {
    let language = supported(language);
    let position = match notice.kind {
        Kind::Waitlisted { position } => position.to_string(),
        _ => String::new(),
    };
    let why = match notice.kind {
        Kind::Rejected(r) => reason(language, r),
        _ => "",
    };
    let fill = |text: &str, escape: fn(&str) -> String| {
        text.replace("{{location}}", &escape(notice.slot.location.as_str()))
            .replace("{{region}}", &escape(notice.slot.region.as_str()))
            .replace("{{date}}", &notice.slot.date.to_string())
            .replace("{{position}}", &position)
            .replace("{{reason}}", &escape(why))
            .replace("{{link}}", &escape(link))
    };
    let raw = template(language, notice.kind);
    let (subject, body) = raw
        .split_once('\n')
        .map(|(first, rest)| (first.trim_start_matches("Subject: "), rest.trim()))
        .expect("a template starts with its subject line");
    let subject = fill(subject, |s| s.to_owned());
    let text = fill(body, |s| s.to_owned()) + "\n";
    let paragraphs: String = body
        .split("\n\n")
        .map(|p| format!("<p>{}</p>\n", fill(&p.replace('\n', " "), html_escape)))
        .collect();
    let html = layout(language)
        .replace("{{subject}}", &html_escape(&subject))
        .replace("{{link}}", &html_escape(link))
        .replace("{{body}}", paragraphs.trim_end());
    Message {
        subject,
        text,
        html,
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The link a message carries: the citizen page with the registration and its token in the
/// URL fragment, so a person can click it and the token never reaches a server log or a
/// referrer.
pub fn status_link(page: &str, id: &RegistrationId, token: &str) -> String {
    format!("{}#registration={id}&token={token}", page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use streams::events::samples;

    fn told(kind: &str) -> Notice {
        samples()
            .into_iter()
            .find(|e| e.event.event_type() == kind)
            .and_then(|e| notice(&e.event))
            .unwrap()
    }

    #[test]
    fn the_citizen_is_told_of_every_decision_but_releases_and_requeues() {
        let told: Vec<&str> = samples()
            .iter()
            .filter_map(|e| notice(&e.event).map(|n| (e.event.event_type(), n)))
            .map(|(t, n)| {
                assert_eq!(n.submission_seq, 42, "{t} points at the submission");
                t
            })
            .collect();
        assert_eq!(
            told,
            [
                "SlotReserved",
                "SlotRejected",
                "RegistrationWaitlisted",
                "WaitlistPromoted",
                "ReviewRequired",
                "RegistrationConfirmed",
                "RecoveryLinkIssued",
                "RegistrationCancelled"
            ]
        );
    }

    #[test]
    fn ids_are_stable_per_decision_and_channel_and_differ_otherwise() {
        let n = told("SlotReserved");
        let id = |seq, ch| notification_id(&n.registration_id, seq, ch);
        assert_eq!(id(7, Channel::Email), id(7, Channel::Email));
        assert_ne!(id(7, Channel::Email), id(7, Channel::Webhook));
        assert_ne!(id(7, Channel::Email), id(8, Channel::Email));
        assert_eq!(id(7, Channel::Email).len(), 32);
        assert_eq!(channels(Some("a@b.pl"), None), [Channel::Email]);
        assert_eq!(
            channels(Some("a@b.pl"), Some("+48600000000")),
            [Channel::Email, Channel::Webhook]
        );
        assert!(channels(None, Some("")).is_empty());
    }

    #[test]
    fn every_kind_renders_in_both_languages_with_the_link_and_no_placeholder_left() {
        let link = status_link(
            "http://127.0.0.1:8080/",
            &told("SlotReserved").registration_id,
            "t0k<en>",
        );
        for kind in [
            "SlotReserved",
            "RegistrationWaitlisted",
            "RegistrationConfirmed",
            "SlotRejected",
            "ReviewRequired",
            "RegistrationCancelled",
            "RecoveryLinkIssued",
        ] {
            for language in ["en", "pl", "de"] {
                let m = render(&told(kind), language, &link);
                for part in [&m.subject, &m.text, &m.html] {
                    assert!(!part.contains("{{"), "{kind}/{language}: {part}");
                }
                assert!(m.text.contains(&link), "{kind}/{language}");
                assert!(
                    m.html.contains("t0k&lt;en&gt;"),
                    "escaped in HTML: {}",
                    m.html
                );
                assert!(
                    m.subject.contains("warszawa-narodowy") && m.subject.contains("2027-03-01")
                );
            }
        }
        let waiting = render(&told("RegistrationWaitlisted"), "pl", &link);
        assert!(
            waiting.text.contains("numer 3 w kolejce"),
            "{}",
            waiting.text
        );
        let rejected = render(&told("SlotRejected"), "en", &link);
        assert!(
            rejected.text.contains("waiting list are full"),
            "{}",
            rejected.text
        );
        assert!(link.contains("#registration=") && link.contains("&token="));
    }
}
