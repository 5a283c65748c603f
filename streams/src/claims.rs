//! The citizen claim: at most one active registration per citizen, and the memory of every
//! idempotency key the citizen used.
//!
//! A claim is a small record on the citizen's own subject, [`crate::subjects::claim`], in the
//! intake stream. The last record on that subject is the citizen's state: [`ClaimRecord::Held`]
//! (the edge wrote it in the same atomic batch as the registration) or
//! [`ClaimRecord::Released`] (the claims releaser in `processors` wrote it when the
//! registration ended, so the citizen may register again). Every writer goes through
//! [`update`], which fences on the subject's last sequence
//! (`Nats-Expected-Last-Subject-Sequence`), so two edges cannot both claim one citizen and a
//! release never overwrites a newer claim.
//!
//! Each record carries the citizen's earlier registrations of the campaign (at most
//! [`MAX_HISTORY`]), so the last record alone answers most retried requests: the same
//! `Idempotency-Key` keeps answering its original registration after that registration was
//! rejected or cancelled, and after the citizen registered again.
//!
//! The history is capped, so it is not what makes a key last the campaign: a key's answer is
//! also written, once, on a subject of its own ([`crate::subjects::idempotency_key`], named by
//! the key's digest), in the same atomic batch as the claim and the registration
//! ([`Claim::key_message`]). Nothing the citizen does later pushes it out; [`key_record`] reads
//! it back.

use async_nats::jetstream::message::StreamMessage;
use serde::{Deserialize, Serialize};

use crate::appender::{AppendError, Appender, Outgoing, Unit};
use crate::model::RegistrationId;

/// What a claim records of one registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Keyed hash of the canonical request that created it.
    pub request_hash: String,
    /// Keyed hash of its `Idempotency-Key`, if one was sent.
    pub idempotency_key_hash: Option<String>,
}

/// Header value of [`CLAIM_STATE_HEADER`] on a key's record.
const KEY_STATE: &str = "key";

impl Claim {
    /// The message that records, on the key's own subject, which registration this request's
    /// `Idempotency-Key` created (`None` without a key). Appended in the same unit as the
    /// claim that holds it, after it: the unit's fence is the claim's.
    pub fn key_message(&self) -> Option<Outgoing> {
        let key = self.idempotency_key_hash.as_deref()?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(CLAIM_STATE_HEADER, KEY_STATE);
        Some(Outgoing {
            subject: crate::subjects::idempotency_key(key),
            headers,
            payload: serde_json::to_vec(self).expect("claims serialize").into(),
        })
    }
}

/// The registration the key digested as `key_hash` created, read from the stream's leader
/// (`None`: the key never created one). A key's record is written with the claim that
/// followed it, so a replica still catching up could miss it; a request that reads it is a
/// returning citizen's, rare enough to pay for the leader's answer.
pub async fn key_record(
    js: &async_nats::jetstream::Context,
    key_hash: &str,
) -> Result<Option<Claim>, AppendError> {
    let intake = intake(js).await?;
    let subject = crate::subjects::idempotency_key(key_hash);
    match crate::appender::last_message_from_leader(&intake, &subject).await? {
        None => Ok(None),
        Some(message) => serde_json::from_slice(&message.payload)
            .map(Some)
            .map_err(|err| {
                AppendError::Refused(format!(
                    "the key record at {} is unreadable: {err}",
                    message.sequence
                ))
            }),
    }
}

/// How many of a citizen's registrations a claim remembers (oldest forgotten first): enough to
/// answer most retries from the claim alone; an older key is answered from its own record
/// ([`key_record`]).
pub const MAX_HISTORY: usize = 32;

/// One record on a claim subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClaimRecord {
    /// The citizen holds this registration.
    Held {
        /// The registration held.
        #[serde(flatten)]
        claim: Claim,
        /// The citizen's earlier registrations, oldest first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        earlier: Vec<Claim>,
    },
    /// The registration ended; the citizen holds nothing.
    Released {
        /// The registration that ended.
        registration_id: RegistrationId,
        /// Every registration of the citizen, the ended one last.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        history: Vec<Claim>,
    },
}

/// Header naming the record's state, so a reader can tell held from released at a glance.
pub const CLAIM_STATE_HEADER: &str = "Reg-Claim";

/// Keeps the newest [`MAX_HISTORY`] entries.
fn capped(mut history: Vec<Claim>) -> Vec<Claim> {
    let excess = history.len().saturating_sub(MAX_HISTORY);
    history.drain(..excess);
    history
}

impl ClaimRecord {
    /// A claim held by `claim`, remembering what `previous` (the subject's last record, if
    /// any) knew.
    pub fn held(claim: Claim, previous: Option<&ClaimRecord>) -> Self {
        ClaimRecord::Held {
            claim,
            earlier: capped(previous.map(ClaimRecord::history).unwrap_or_default()),
        }
    }

    /// Every registration this record knows of the citizen, oldest first (the held one last).
    pub fn history(&self) -> Vec<Claim> {
        match self {
            ClaimRecord::Held { claim, earlier } => {
                let mut all = earlier.clone();
                all.push(claim.clone());
                all
            }
            ClaimRecord::Released { history, .. } => history.clone(),
        }
    }

    /// The citizen's latest registration: the one held, or the one that ended last.
    pub fn latest(&self) -> &RegistrationId {
        match self {
            ClaimRecord::Held { claim, .. } => &claim.registration_id,
            ClaimRecord::Released {
                registration_id, ..
            } => registration_id,
        }
    }

    /// The registration this record holds, if it holds one.
    pub fn holder(&self) -> Option<&Claim> {
        match self {
            ClaimRecord::Held { claim, .. } => Some(claim),
            ClaimRecord::Released { .. } => None,
        }
    }

    /// The record that releases `id`, when this record still holds it; `None` when it was
    /// released already or a newer registration holds the claim (nothing to do).
    pub fn release(&self, id: &RegistrationId) -> Option<ClaimRecord> {
        match self {
            ClaimRecord::Held { claim, .. } if &claim.registration_id == id => {
                Some(ClaimRecord::Released {
                    registration_id: id.clone(),
                    history: capped(self.history()),
                })
            }
            _ => None,
        }
    }

    /// The message that appends this record for `citizen_key` (unfenced: [`update`] adds the
    /// fence).
    pub fn message(&self, citizen_key: &str) -> Outgoing {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            CLAIM_STATE_HEADER,
            match self {
                ClaimRecord::Held { .. } => "held",
                ClaimRecord::Released { .. } => "released",
            },
        );
        Outgoing {
            subject: crate::subjects::claim(citizen_key),
            headers,
            payload: serde_json::to_vec(self).expect("claims serialize").into(),
        }
    }

    /// Decodes a stored record.
    pub fn decode(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

/// The last message on `citizen_key`'s claim subject (`None`: the citizen never claimed):
/// what [`update`] is fenced on, and what answers a replayed request.
pub async fn last(
    js: &async_nats::jetstream::Context,
    citizen_key: &str,
) -> Result<Option<StreamMessage>, AppendError> {
    let intake = intake(js).await?;
    crate::appender::last_message(&intake, &crate::subjects::claim(citizen_key)).await
}

/// [`last`], answered by the stream's leader: what a writer reads before it acts on "there
/// is nothing to do", which a fence cannot check (a direct get may be answered by a replica
/// still catching up).
pub async fn last_from_leader(
    js: &async_nats::jetstream::Context,
    citizen_key: &str,
) -> Result<Option<StreamMessage>, AppendError> {
    let intake = intake(js).await?;
    crate::appender::last_message_from_leader(&intake, &crate::subjects::claim(citizen_key)).await
}

/// The intake stream, where claims are.
async fn intake(
    js: &async_nats::jetstream::Context,
) -> Result<async_nats::jetstream::stream::Stream<()>, AppendError> {
    js.get_stream_no_info(crate::subjects::INTAKE_STREAM)
        .await
        .map_err(|e| AppendError::Unavailable(e.to_string()))
}

/// What a claim update does once it knows the subject's last record.
#[derive(Debug)]
pub enum Step<T> {
    /// Append these messages (a claim record first, then e.g. the registration) in one
    /// durable write, fenced on the record that was seen; then answer `T`.
    Append(Vec<Outgoing>, T),
    /// Append nothing; answer `T`.
    Answer(T),
}

/// Rounds of read-decide-append before an update gives up (the subject kept changing: a
/// release racing a new claim, or two edges claiming one citizen at once).
const ROUNDS: usize = 4;

/// The one fenced update of a citizen's claim, for the edge and the claims releaser alike.
///
/// `decide` is called with the subject's last record (`None`: empty) and says what to append;
/// the append is fenced on that record, and when the subject moved on meanwhile `decide` is
/// called again with what is there now. `last` is what the caller already knows of the
/// subject: `Some(message)` read before, or `None` to assume it empty (most citizens have
/// never claimed, so the edge saves the read). An unreadable record is refused, never
/// overwritten.
pub async fn update<T>(
    appender: &Appender,
    last: Option<StreamMessage>,
    decide: impl FnMut(Option<&ClaimRecord>) -> Step<T>,
) -> Result<T, AppendError> {
    update_once(appender, last, None, decide).await
}

/// [`update`], with `once` (e.g. a waiting-room ticket's use) appended in the same unit only if
/// its subject is still empty ([`Unit::once`]): a claim that moved is decided again first; a
/// `once` subject already written fails the update with [`AppendError::Taken`].
pub async fn update_once<T>(
    appender: &Appender,
    last: Option<StreamMessage>,
    once: Option<&Outgoing>,
    mut decide: impl FnMut(Option<&ClaimRecord>) -> Step<T>,
) -> Result<T, AppendError> {
    let mut last = last;
    for _ in 0..ROUNDS {
        let (record, sequence) = match &last {
            None => (None, 0),
            Some(message) => match ClaimRecord::decode(&message.payload) {
                Ok(record) => (Some(record), message.sequence),
                Err(err) => {
                    return Err(AppendError::Refused(format!(
                        "the claim record at {} is unreadable: {err}",
                        message.sequence
                    )));
                }
            },
        };
        let (messages, answer) = match decide(record.as_ref()) {
            Step::Answer(answer) => return Ok(answer),
            Step::Append(messages, answer) => (messages, answer),
        };
        let mut unit = Unit::fenced(messages, sequence);
        if let Some(once) = once {
            unit = unit.once(once.clone());
        }
        match appender.append_unit(unit).await {
            Ok(_) => return Ok(answer),
            Err(AppendError::Moved { last: now }) => last = now.map(|m| *m),
            Err(err) => return Err(err),
        }
    }
    Err(AppendError::Unavailable(
        "the citizen's claim kept changing while being written".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(n: u8) -> Claim {
        Claim {
            registration_id: RegistrationId::generate(
                &crate::model::Region::parse("mazowieckie").unwrap(),
            ),
            request_hash: format!("request-{n}"),
            idempotency_key_hash: Some(format!("key-{n}")),
        }
    }

    #[test]
    fn records_round_trip_and_name_their_state() {
        let held = ClaimRecord::held(claim(1), None);
        let released = held.release(&claim(1).registration_id);
        assert!(released.is_none(), "another registration is not released");
        let id = held.holder().unwrap().registration_id.clone();
        let released = held.release(&id).expect("the holder is released");
        for record in [held, released] {
            let msg = record.message("c0ffee");
            assert_eq!(msg.subject, "reg.claim.c0ffee");
            let decoded = ClaimRecord::decode(&msg.payload).unwrap();
            assert_eq!(decoded, record);
            let state = msg.headers.get(CLAIM_STATE_HEADER).unwrap().as_str();
            assert_eq!(state == "held", matches!(record, ClaimRecord::Held { .. }));
        }
    }

    #[test]
    fn a_key_record_names_its_key_and_round_trips() {
        let c = claim(1);
        let msg = c.key_message().expect("a claim with a key");
        assert_eq!(msg.subject, "reg.key.key-1");
        assert_eq!(serde_json::from_slice::<Claim>(&msg.payload).unwrap(), c);
        let keyless = Claim {
            idempotency_key_hash: None,
            ..c
        };
        assert!(keyless.key_message().is_none());
    }

    #[test]
    fn a_record_of_the_previous_format_still_reads() {
        let old = br#"{"state":"held","registration_id":"mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f","request_hash":"ab","idempotency_key_hash":null}"#;
        let record = ClaimRecord::decode(old).unwrap();
        assert_eq!(record.holder().unwrap().request_hash, "ab");
        assert_eq!(record.history().len(), 1);
        let old = br#"{"state":"released","registration_id":"mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f"}"#;
        assert!(ClaimRecord::decode(old).unwrap().history().is_empty());
    }

    #[test]
    fn history_follows_the_citizen_across_releases_and_is_capped() {
        let mut record: Option<ClaimRecord> = None;
        let mut all = Vec::new();
        for n in 0..(MAX_HISTORY + 5) as u8 {
            let c = claim(n);
            all.push(c.clone());
            let held = ClaimRecord::held(c.clone(), record.as_ref());
            let released = held.release(&c.registration_id).unwrap();
            assert_eq!(released.history().last(), Some(&c));
            record = Some(released);
        }
        let history = record.unwrap().history();
        assert_eq!(history.len(), MAX_HISTORY);
        assert_eq!(history[..], all[all.len() - MAX_HISTORY..]);
    }
}
