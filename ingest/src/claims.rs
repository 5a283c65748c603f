//! One claim per citizen, written in the same durable write as the registration.
//!
//! The edge appends the citizen's [`ClaimRecord::Held`] and the `RegistrationSubmitted` event
//! as one fenced unit of the intake stream's group commit ([`streams::claims::update`]): both
//! are stored, in one atomic batch with the other requests of the moment, only if the
//! citizen's claim subject is where the edge believed it to be (empty at first). A claim
//! therefore never exists without its registration, and claiming costs no durable write of
//! its own.
//!
//! When the subject holds a record, [`relate`] (pure) says how it relates to this request:
//! the same request was accepted before (answered with the same registration: an
//! `Idempotency-Key` keeps its registration after that one ended), the key was used for
//! another body, the citizen holds another registration, or their last registration ended
//! (claim again behind that release).
//!
//! A claim remembers only the citizen's recent keys, so each new registration made under a key
//! also writes the key's own record ([`Claim::key_message`]), in the same unit. A returning
//! citizen's key that their claim does not remember is looked up there before anything is
//! claimed ([`relate_key`]): a key answers its registration for the whole campaign. A citizen
//! with no claim yet has no key record either (the two are written together), so a first
//! registration still costs no read.

use streams::appender::{AppendError, Appender, Outgoing};
pub use streams::claims::Claim;
use streams::claims::{ClaimRecord, Step};

/// How an `Idempotency-Key`'s own record answers a request (`None`: the key created nothing).
pub fn relate_key(wanted: &Claim, recorded: Option<Claim>) -> Option<Claimed> {
    let recorded = recorded?;
    Some(if recorded.request_hash == wanted.request_hash {
        Claimed::Replay(recorded)
    } else {
        Claimed::KeyReused
    })
}

/// The answer of the key `wanted` carries, read from the key's own record (`None`: no key, or
/// it created nothing).
pub async fn answer_from_key(
    js: &async_nats::jetstream::Context,
    wanted: &Claim,
) -> Result<Option<Claimed>, AppendError> {
    let Some(key) = &wanted.idempotency_key_hash else {
        return Ok(None);
    };
    Ok(relate_key(
        wanted,
        streams::claims::key_record(js, key).await?,
    ))
}

/// Whether `wanted` carries a key that `record` (a returning citizen's claim) does not
/// remember: only its own record can tell whether it created a registration.
pub fn remembers_not(wanted: &Claim, record: Option<&ClaimRecord>) -> bool {
    match (&wanted.idempotency_key_hash, record) {
        (Some(key), Some(record)) => !record
            .history()
            .iter()
            .any(|c| c.idempotency_key_hash.as_ref() == Some(key)),
        _ => false,
    }
}

/// What a new registration appends: its claim (fenced, first), its key's record if it has a
/// key, and its event.
fn claim_messages(
    wanted: &Claim,
    previous: Option<&ClaimRecord>,
    citizen_key: &str,
    registration: &[Outgoing],
) -> Vec<Outgoing> {
    let mut messages = vec![ClaimRecord::held(wanted.clone(), previous).message(citizen_key)];
    messages.extend(wanted.key_message());
    messages.extend_from_slice(registration);
    messages
}

/// The outcome of a submission.
#[derive(Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This request's claim and registration were stored.
    New(Claim),
    /// The same request was accepted before: answer with that registration.
    Replay(Claim),
    /// Same idempotency key, different body.
    KeyReused,
    /// The citizen already holds another registration.
    AlreadyRegistered,
}

/// How a claim subject's last record relates to a new request: an answer, or `None` when the
/// request may claim (the subject is empty or its last registration ended).
pub fn relate(wanted: &Claim, last: Option<&ClaimRecord>) -> Option<Claimed> {
    let last = last?;
    if let Some(key) = &wanted.idempotency_key_hash
        && let Some(earlier) = last
            .history()
            .into_iter()
            .rev()
            .find(|c| c.idempotency_key_hash.as_ref() == Some(key))
    {
        return Some(if earlier.request_hash == wanted.request_hash {
            Claimed::Replay(earlier)
        } else {
            Claimed::KeyReused
        });
    }
    match last.holder() {
        // The same body again without a key (a refresh) is the same registration.
        Some(held) if held.request_hash == wanted.request_hash => {
            Some(Claimed::Replay(held.clone()))
        }
        Some(_) => Some(Claimed::AlreadyRegistered),
        None => None,
    }
}

/// Appends `wanted` and `event` together if the citizen may claim, or tells how the existing
/// claim (or the key's own record) relates to this request. Optimistic: the subject is assumed
/// empty (most citizens have never claimed), so a first registration costs no read.
pub async fn claim_and_append(
    appender: &Appender,
    js: &async_nats::jetstream::Context,
    citizen_key: &str,
    wanted: Claim,
    registration: Vec<Outgoing>,
    ticket: Option<Outgoing>,
) -> Result<Claimed, AppendError> {
    let ticket = ticket.as_ref();
    let first = streams::claims::update_once(appender, None, ticket, |record| {
        // A returning citizen's key their claim does not remember: it may be older than the
        // claim's history, so its own record answers before the claim does.
        if remembers_not(&wanted, record) {
            return Step::Answer(None);
        }
        match relate(&wanted, record) {
            Some(answer) => Step::Answer(Some(answer)),
            None => Step::Append(
                claim_messages(&wanted, record, citizen_key, &registration),
                Some(Claimed::New(wanted.clone())),
            ),
        }
    })
    .await?;
    if let Some(answer) = first {
        return Ok(answer);
    }
    if let Some(answer) = answer_from_key(js, &wanted).await? {
        return Ok(answer);
    }
    // The key created nothing: claim behind the citizen's last record. If another request
    // with this key claimed meanwhile, the fence fails and the claim it wrote answers.
    let last = streams::claims::last(js, citizen_key).await?;
    streams::claims::update_once(appender, last, ticket, |record| {
        match relate(&wanted, record) {
            Some(answer) => Step::Answer(answer),
            None => Step::Append(
                claim_messages(&wanted, record, citizen_key, &registration),
                Claimed::New(wanted.clone()),
            ),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use streams::model::{Region, RegistrationId};

    fn claim(request: &str, key: Option<&str>) -> Claim {
        Claim {
            registration_id: RegistrationId::generate(&Region::parse("lodzkie").unwrap()),
            request_hash: request.into(),
            idempotency_key_hash: key.map(Into::into),
        }
    }

    #[test]
    fn an_existing_claim_is_a_replay_a_reused_key_or_another_registration() {
        let existing = claim("body-a", Some("key-1"));
        let held = ClaimRecord::held(existing.clone(), None);
        let same = relate(&claim("body-a", Some("key-1")), Some(&held));
        assert_eq!(same, Some(Claimed::Replay(existing.clone())));
        assert_eq!(
            relate(&claim("body-b", Some("key-1")), Some(&held)),
            Some(Claimed::KeyReused)
        );
        // The same body again without a key (a refresh) is the same registration.
        assert_eq!(
            relate(&claim("body-a", None), Some(&held)),
            Some(Claimed::Replay(existing))
        );
        assert_eq!(
            relate(&claim("body-b", Some("key-2")), Some(&held)),
            Some(Claimed::AlreadyRegistered)
        );
        assert_eq!(relate(&claim("body-b", Some("key-2")), None), None);
    }

    #[test]
    fn a_key_record_answers_the_same_body_and_refuses_another() {
        let recorded = claim("body-a", Some("key-1"));
        assert_eq!(
            relate_key(&claim("body-a", Some("key-1")), Some(recorded.clone())),
            Some(Claimed::Replay(recorded.clone()))
        );
        assert_eq!(
            relate_key(&claim("body-b", Some("key-1")), Some(recorded)),
            Some(Claimed::KeyReused)
        );
        assert_eq!(relate_key(&claim("body-a", Some("key-1")), None), None);
    }

    #[test]
    fn a_new_registration_writes_its_claim_first_then_its_key_then_its_event() {
        let event = Outgoing {
            subject: "reg.intake.lodzkie.submitted".into(),
            headers: Default::default(),
            payload: Default::default(),
        };
        let keyed = claim("body-a", Some("key-1"));
        let subjects: Vec<String> =
            claim_messages(&keyed, None, "c0ffee", std::slice::from_ref(&event))
                .into_iter()
                .map(|m| m.subject)
                .collect();
        assert_eq!(
            subjects,
            [
                "reg.claim.c0ffee",
                "reg.key.key-1",
                "reg.intake.lodzkie.submitted"
            ]
        );
        let keyless = claim("body-a", None);
        assert_eq!(
            claim_messages(&keyless, None, "c0ffee", std::slice::from_ref(&event)).len(),
            2
        );
    }

    #[test]
    fn a_key_keeps_answering_its_registration_after_it_ended_and_after_a_new_one() {
        let first = claim("body-a", Some("key-1"));
        let released = ClaimRecord::held(first.clone(), None)
            .release(&first.registration_id)
            .unwrap();
        // After the release: the same key and body is the original registration, another
        // body under that key is refused, and a new request may claim.
        assert_eq!(
            relate(&claim("body-a", Some("key-1")), Some(&released)),
            Some(Claimed::Replay(first.clone()))
        );
        assert_eq!(
            relate(&claim("body-b", Some("key-1")), Some(&released)),
            Some(Claimed::KeyReused)
        );
        assert_eq!(
            relate(&claim("body-b", Some("key-2")), Some(&released)),
            None
        );
        // The citizen registers again: the old key still answers its own registration.
        let second = claim("body-b", Some("key-2"));
        let held = ClaimRecord::held(second.clone(), Some(&released));
        assert_eq!(
            relate(&claim("body-a", Some("key-1")), Some(&held)),
            Some(Claimed::Replay(first))
        );
        assert_eq!(
            relate(&claim("body-b", Some("key-2")), Some(&held)),
            Some(Claimed::Replay(second))
        );
        assert_eq!(
            relate(&claim("body-c", Some("key-3")), Some(&held)),
            Some(Claimed::AlreadyRegistered)
        );
    }
}
