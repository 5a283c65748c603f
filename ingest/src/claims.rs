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
//! the same request was accepted before (answered with the same registration, for as long as
//! the claim remembers it: an `Idempotency-Key` keeps its registration after that one ended),
//! the key was used for another body, the citizen holds another registration, or their last
//! registration ended (claim again behind that release).

use streams::appender::{AppendError, Appender, Outgoing};
pub use streams::claims::Claim;
use streams::claims::{ClaimRecord, Step};

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
/// claim relates to this request. Optimistic: the subject is assumed empty (most citizens
/// have never claimed), so a first registration costs no read.
pub async fn claim_and_append(
    appender: &Appender,
    citizen_key: &str,
    wanted: Claim,
    event: Outgoing,
) -> Result<Claimed, AppendError> {
    streams::claims::update(appender, None, |record| match relate(&wanted, record) {
        Some(answer) => Step::Answer(answer),
        None => Step::Append(
            vec![
                ClaimRecord::held(wanted.clone(), record).message(citizen_key),
                event.clone(),
            ],
            Claimed::New(wanted.clone()),
        ),
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
