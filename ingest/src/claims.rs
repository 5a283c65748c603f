//! One claim per citizen: the durable record that a citizen holds a registration.
//!
//! The claim is created atomically (`create` fails if the key exists) in a JetStream
//! key-value bucket keyed by the citizen key (a MAC of the national id), before the
//! submission is appended. Whoever creates it owns the registration id in it; everyone else
//! is either the same request again (same body or same idempotency key: replayed with the
//! same id) or a second registration of the same citizen (refused).

use async_nats::jetstream::kv;
pub use streams::claims::Claim;

/// The outcome of trying to claim.
#[derive(Debug)]
pub enum Claimed {
    /// This request created the claim.
    New(Claim),
    /// The same request was claimed before: answer with the same registration.
    Replay(Claim),
    /// Same idempotency key, different body.
    KeyReused,
    /// The citizen already holds another registration.
    AlreadyRegistered,
}

/// Why claiming failed for reasons other than the outcomes above.
#[derive(Debug, thiserror::Error)]
#[error("the claims bucket is unavailable: {0}")]
pub struct ClaimsUnavailable(pub String);

/// Creates the claim, or tells how the existing one relates to this request.
pub async fn claim(
    bucket: &kv::Store,
    citizen_key: &str,
    wanted: Claim,
) -> Result<Claimed, ClaimsUnavailable> {
    let value = serde_json::to_vec(&wanted).expect("claims serialize");
    // Two rounds: a claim released between our create and get is retried once.
    for _ in 0..2 {
        match bucket.create(citizen_key, value.clone().into()).await {
            Ok(_) => return Ok(Claimed::New(wanted)),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(err) => return Err(ClaimsUnavailable(err.to_string())),
        }
        let existing = bucket
            .get(citizen_key)
            .await
            .map_err(|e| ClaimsUnavailable(e.to_string()))?;
        let Some(existing) = existing else { continue };
        let Ok(existing) = serde_json::from_slice::<Claim>(&existing) else {
            return Err(ClaimsUnavailable("a stored claim is unreadable".into()));
        };
        let same_key = wanted.idempotency_key_hash.is_some()
            && wanted.idempotency_key_hash == existing.idempotency_key_hash;
        return Ok(
            if same_key && existing.request_hash != wanted.request_hash {
                Claimed::KeyReused
            } else if same_key || existing.request_hash == wanted.request_hash {
                Claimed::Replay(existing)
            } else {
                Claimed::AlreadyRegistered
            },
        );
    }
    Err(ClaimsUnavailable(
        "the claim changed while being read".into(),
    ))
}
