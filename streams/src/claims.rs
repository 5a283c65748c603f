//! The citizen claim: what the `reg_claims` bucket holds under a citizen key. The edge creates
//! claims; the claims releaser in `processors` deletes them when the registration ends
//! (rejected or cancelled), so the citizen may register again.

use serde::{Deserialize, Serialize};

use crate::model::RegistrationId;

/// What a claim records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The registration that holds the claim.
    pub registration_id: RegistrationId,
    /// Hash of the canonical request that created it.
    pub request_hash: String,
    /// Hash of its `Idempotency-Key`, if one was sent.
    pub idempotency_key_hash: Option<String>,
}
