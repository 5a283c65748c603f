//! One claim per citizen, written in the same durable write as the registration.
//!
//! The edge appends the citizen's [`ClaimRecord::Held`] and the `RegistrationSubmitted` event
//! as one fenced [`Unit`] of the intake stream's group commit: both are stored, in one atomic
//! batch with the other requests of the moment, only if the citizen's claim subject is where
//! the edge believed it to be (empty at first). A claim therefore never exists without its
//! registration, and claiming costs no durable write of its own.
//!
//! When the fence fails, the appender hands back the claim subject's last record, which tells
//! what happened: the same request was accepted before (replayed with the same
//! registration), the idempotency key was used for another body, the citizen holds another
//! registration, or their last registration was released (claim again behind that release).

use streams::appender::{AppendError, Appender, Outgoing, Unit};
pub use streams::claims::Claim;
use streams::claims::ClaimRecord;

/// The outcome of a submission.
#[derive(Debug)]
pub enum Claimed {
    /// This request's claim and registration were stored; `sequence` is the registration's.
    New {
        /// The claim written.
        claim: Claim,
        /// Intake sequence of the `RegistrationSubmitted` event.
        sequence: u64,
    },
    /// The same request was accepted before: answer with the same registration.
    Replay(Claim),
    /// Same idempotency key, different body.
    KeyReused,
    /// The citizen already holds another registration.
    AlreadyRegistered,
}

/// How often the edge writes again behind a claim that changed under it before giving up
/// (a release racing a new claim, or two edges claiming one citizen at once).
const ROUNDS: usize = 4;

/// Appends `wanted` and `event` together if the citizen holds no registration, or tells how
/// the existing claim relates to this request.
pub async fn claim_and_append(
    appender: &Appender,
    citizen_key: &str,
    wanted: Claim,
    event: Outgoing,
) -> Result<Claimed, AppendError> {
    let held = ClaimRecord::Held(wanted.clone()).message(citizen_key);
    // Optimistic: most citizens have never claimed.
    let mut expected = 0;
    for _ in 0..ROUNDS {
        let unit = Unit::fenced(vec![held.clone(), event.clone()], expected);
        let last = match appender.append_unit(unit).await {
            Ok(seqs) => {
                return Ok(Claimed::New {
                    claim: wanted,
                    sequence: seqs[1],
                });
            }
            Err(AppendError::Moved { last }) => last,
            Err(err) => return Err(err),
        };
        let Some(last) = last else {
            expected = 0;
            continue;
        };
        match ClaimRecord::decode(&last.payload) {
            Ok(ClaimRecord::Released { .. }) => expected = last.sequence,
            Ok(ClaimRecord::Held(existing)) => return Ok(relate(&wanted, existing)),
            Err(_) => {
                return Err(AppendError::Refused(format!(
                    "the claim record at {} is unreadable",
                    last.sequence
                )));
            }
        }
    }
    Err(AppendError::Unavailable(
        "the citizen's claim kept changing while being written".into(),
    ))
}

/// How a held claim relates to a new request for the same citizen.
fn relate(wanted: &Claim, existing: Claim) -> Claimed {
    let same_key = wanted.idempotency_key_hash.is_some()
        && wanted.idempotency_key_hash == existing.idempotency_key_hash;
    if same_key && existing.request_hash != wanted.request_hash {
        Claimed::KeyReused
    } else if same_key || existing.request_hash == wanted.request_hash {
        Claimed::Replay(existing)
    } else {
        Claimed::AlreadyRegistered
    }
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
        let same = relate(&claim("body-a", Some("key-1")), existing.clone());
        assert!(matches!(same, Claimed::Replay(c) if c == existing));
        assert!(matches!(
            relate(&claim("body-b", Some("key-1")), existing.clone()),
            Claimed::KeyReused
        ));
        // The same body again without a key (a refresh) is the same registration.
        assert!(matches!(
            relate(&claim("body-a", None), existing.clone()),
            Claimed::Replay(_)
        ));
        assert!(matches!(
            relate(&claim("body-b", Some("key-2")), existing),
            Claimed::AlreadyRegistered
        ));
    }
}
