//! Reading a registration's sealed submission back from intake by its sequence: the
//! processors that need the citizen's personal data (the registry's questions, the contact
//! for messages) find it where the decisions point (`submission_seq`).

use anyhow::Context as _;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use streams::events::{Envelope, Event, RegistrationSubmitted};
use streams::model::RegistrationId;
use streams::subjects;

/// The submission of `id` at intake sequence `seq`, and when the edge accepted it. An error
/// if the stream cannot be read, or the record there is not that registration's submission.
pub async fn read(
    js: &jetstream::Context,
    seq: u64,
    id: &RegistrationId,
) -> anyhow::Result<(DateTime<Utc>, RegistrationSubmitted)> {
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let message = stream
        .direct_get(seq)
        .await
        .with_context(|| format!("Failed to read intake sequence {seq}"))?;
    match Envelope::decode_from(&message.subject, &message.payload) {
        Ok(Envelope {
            event: Event::RegistrationSubmitted(submission),
            occurred_at,
            ..
        }) if submission.registration_id == *id => Ok((occurred_at, submission)),
        Ok(_) => anyhow::bail!("intake sequence {seq} is not the submission of {id}"),
        Err(err) => Err(err).context("Failed to decode a submission"),
    }
}
