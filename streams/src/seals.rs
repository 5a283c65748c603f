//! Registrations' own data keys: what makes one citizen's personal data erasable from an
//! immutable log (contract 1.2, retention and erasure).
//!
//! Since contract 1.2 the edge seals each registration's personal data under a random key of
//! its own ([`Keys::seal_own`]) and appends that key, wrapped under the server's data key, on
//! the registration's own subject ([`subjects::seal`]) in the same atomic batch as the
//! registration: the registration is never stored without its key. Readers that need the
//! personal data (the registry's questions, the contact for messages, an analyst's export)
//! read the key back ([`open`]). To erase, the key's message is deleted with JetStream's
//! secure erase, which overwrites it on disk ([`erase`]): the sealed block stays in the log,
//! and nothing can open it again. Blocks sealed before contract 1.2 under the data key
//! itself open as they did.

use async_nats::jetstream;
use async_nats::jetstream::stream::DirectGetErrorKind;

use crate::appender::Outgoing;
use crate::crypto::Keys;
use crate::events::{PersonalData, Sealed};
use crate::model::RegistrationId;
use crate::subjects;

/// The message that stores registration `id`'s own key, `wrapped` as [`Keys::seal_own`]
/// returned it: appended with the registration, in the same unit.
pub fn message(id: &RegistrationId, wrapped: Vec<u8>) -> Outgoing {
    Outgoing {
        subject: subjects::seal(id),
        headers: async_nats::HeaderMap::new(),
        payload: wrapped.into(),
    }
}

/// Why a registration's personal data did not open.
#[derive(Debug, thiserror::Error)]
pub enum Unopenable {
    /// Its key was destroyed: the data is erased, for good.
    #[error("the personal data was erased")]
    Erased,
    /// The block or its key does not open with this replica's secret.
    #[error(transparent)]
    Key(#[from] crate::crypto::OpenError),
    /// The key could not be read (NATS away): try again.
    #[error("the registration's key could not be read: {0}")]
    Read(String),
}

impl Unopenable {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Unopenable::Read(_))
    }
}

/// Opens registration `id`'s `sealed` personal data, reading its own key from the intake
/// stream when it was sealed under one.
pub async fn open(
    js: &jetstream::Context,
    keys: &Keys,
    id: &RegistrationId,
    sealed: &Sealed,
) -> Result<PersonalData, Unopenable> {
    if !Keys::needs_own_key(sealed) {
        return Ok(keys.open(id, sealed)?);
    }
    let wrapped = fetch(js, id).await?.ok_or(Unopenable::Erased)?;
    Ok(keys.open_own(id, sealed, &wrapped)?)
}

/// Registration `id`'s wrapped own key and its stream sequence, `None` once erased.
async fn fetch_with_seq(
    js: &jetstream::Context,
    id: &RegistrationId,
) -> Result<Option<(Vec<u8>, u64)>, Unopenable> {
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .map_err(|err| Unopenable::Read(err.to_string()))?;
    match stream.direct_get_last_for_subject(subjects::seal(id)).await {
        Ok(message) => Ok(Some((message.payload.to_vec(), message.sequence))),
        Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(err) => Err(Unopenable::Read(err.to_string())),
    }
}

/// Registration `id`'s wrapped own key, `None` once erased.
pub async fn fetch(
    js: &jetstream::Context,
    id: &RegistrationId,
) -> Result<Option<Vec<u8>>, Unopenable> {
    Ok(fetch_with_seq(js, id).await?.map(|(key, _)| key))
}

/// Erases registration `id`'s personal data: deletes every message of its key's subject with
/// JetStream's secure erase (the stored bytes are overwritten). Returns how many there were:
/// 0 when it was erased already (erasing is idempotent).
pub async fn erase(js: &jetstream::Context, id: &RegistrationId) -> anyhow::Result<u32> {
    use anyhow::Context as _;
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let mut erased = 0;
    while let Some((_, seq)) = fetch_with_seq(js, id)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?
    {
        // `delete_message` asks for the server's default, a secure erase (`no_erase` unset).
        stream
            .delete_message(seq)
            .await
            .with_context(|| format!("Failed to erase the key of {id}"))?;
        erased += 1;
    }
    Ok(erased)
}

/// Ends the retention of `region`'s personal data: erases every registration's own key in
/// the region (as [`erase`] does one), calling `progress(erased, total)` as it goes. Run by
/// an operator with the admin identity once the campaign's retention is over
/// (docs/retention.md); the services' identities may not. Returns how many keys it erased.
pub async fn end_retention(
    js: &jetstream::Context,
    region: &crate::model::Region,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use futures::StreamExt as _;
    let filter = subjects::seal_filter(&subjects::RegionFilter::One(region.clone()));
    let (mut keys, total) = crate::replay::ordered(js, subjects::INTAKE_STREAM, filter, 1).await?;
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let mut erased = 0;
    let mut left = total;
    while left > 0 {
        let Some(message) = keys.next().await else {
            break;
        };
        let message = message.context("Failed to read a key")?;
        left = message.info().map(|info| info.pending).unwrap_or(0);
        let seq = message
            .info()
            .map_err(|err| anyhow::anyhow!("a key without its stream position: {err}"))?
            .stream_sequence;
        stream
            .delete_message(seq)
            .await
            .with_context(|| format!("Failed to erase the key at {seq}"))?;
        erased += 1;
        progress(erased, total);
    }
    Ok(erased)
}
