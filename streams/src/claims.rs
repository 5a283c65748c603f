//! The citizen claim: at most one active registration per citizen.
//!
//! A claim is a small record on the citizen's own subject, [`crate::subjects::claim`], in the
//! intake stream. The last record on that subject is the citizen's state: [`ClaimRecord::Held`]
//! (the edge wrote it in the same atomic batch as the registration) or
//! [`ClaimRecord::Released`] (the claims releaser in `processors` wrote it when the
//! registration ended, so the citizen may register again). Every writer fences on the
//! subject's last sequence (`Nats-Expected-Last-Subject-Sequence`), so two edges cannot both
//! claim one citizen and a release never overwrites a newer claim.

use serde::{Deserialize, Serialize};

use crate::appender::Outgoing;
use crate::model::RegistrationId;

/// What a held claim records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The registration that holds the claim.
    pub registration_id: RegistrationId,
    /// Hash of the canonical request that created it.
    pub request_hash: String,
    /// Hash of its `Idempotency-Key`, if one was sent.
    pub idempotency_key_hash: Option<String>,
}

/// One record on a claim subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ClaimRecord {
    /// The citizen holds this registration.
    Held(Claim),
    /// The registration ended; the citizen holds nothing.
    Released {
        /// The registration that ended.
        registration_id: RegistrationId,
    },
}

/// Header naming the record's state, so a reader can tell held from released at a glance.
pub const CLAIM_STATE_HEADER: &str = "Reg-Claim";

impl ClaimRecord {
    /// The message that appends this record for `citizen_key` (unfenced: the appender adds the
    /// fence).
    pub fn message(&self, citizen_key: &str) -> Outgoing {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            CLAIM_STATE_HEADER,
            match self {
                ClaimRecord::Held(_) => "held",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_name_their_state() {
        let id = RegistrationId::generate(&crate::model::Region::parse("mazowieckie").unwrap());
        let held = ClaimRecord::Held(Claim {
            registration_id: id.clone(),
            request_hash: "ab".into(),
            idempotency_key_hash: None,
        });
        let released = ClaimRecord::Released {
            registration_id: id,
        };
        for record in [held, released] {
            let msg = record.message("c0ffee");
            assert_eq!(msg.subject, "reg.claim.c0ffee");
            let decoded = ClaimRecord::decode(&msg.payload).unwrap();
            assert_eq!(decoded, record);
            let state = msg.headers.get(CLAIM_STATE_HEADER).unwrap().as_str();
            assert_eq!(state == "held", matches!(record, ClaimRecord::Held(_)));
        }
    }
}
