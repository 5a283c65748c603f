//! The reviews bucket ([`subjects::REVIEWS_BUCKET`]): the registrations of a region in manual
//! review, one key each, kept by the replica that decides the region so the edge can refuse an
//! operator's decision on any other registration (`409 not_in_review`).
//!
//! It is a view of the decision log, never an input of the rule (which ignores an operator's
//! verdict outside review by itself), so keeping it never stops deciding: a failed write is
//! logged and the region's keys are rewritten from the state after the next batch, as they
//! are whenever a replica takes a region over ([`Reviews::reconcile`]). A registration that
//! leaves review is purged (one marker per key, whatever its history).

use std::collections::HashSet;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use streams::model::{Region, RegistrationId};
use streams::subjects;

/// The bucket's header saying a key was deleted or purged.
const KV_OPERATION: &str = "KV-Operation";

/// The reviews bucket, opened.
#[derive(Clone)]
pub struct Reviews {
    js: jetstream::Context,
    store: kv::Store,
}

impl Reviews {
    /// Opens the bucket (created by `ensure_streams`), waiting through a NATS outage or a
    /// bucket not created yet; `None` when `shutdown` fires first.
    pub async fn open(
        js: &jetstream::Context,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Option<Self> {
        let store = streams::lease::open_bucket(js, subjects::REVIEWS_BUCKET, shutdown).await?;
        Some(Reviews {
            js: js.clone(),
            store,
        })
    }

    /// Records that each registration entered (`true`) or left manual review, all at once.
    pub async fn record(&self, changes: &[(RegistrationId, bool)]) -> anyhow::Result<()> {
        let writes = changes.iter().map(|(id, in_review)| async move {
            let key = subjects::review_key(id);
            if *in_review {
                self.store
                    .put(&key, "manual_review".into())
                    .await
                    .map(drop)
                    .map_err(anyhow::Error::from)
            } else {
                self.store.purge(&key).await.map_err(anyhow::Error::from)
            }
            .with_context(|| format!("Failed to record in the reviews bucket that {id} changed"))
        });
        futures::future::try_join_all(writes).await.map(drop)
    }

    /// Makes `region`'s keys exactly `in_review`: what a replica that died between a batch and
    /// its record left out of date. Lists the region's keys with a stream request (no
    /// consumer), reads the last record of each key that should not be there, and writes only
    /// what differs.
    pub async fn reconcile(
        &self,
        region: &Region,
        in_review: impl Iterator<Item = &RegistrationId>,
    ) -> anyhow::Result<()> {
        let prefix = format!("$KV.{}.", subjects::REVIEWS_BUCKET);
        let stream = self
            .js
            .get_stream_no_info(format!("KV_{}", subjects::REVIEWS_BUCKET))
            .await
            .context("Failed to open the reviews bucket's stream")?;
        let mut listed = Vec::new();
        let mut subjects_found = stream
            .info_with_subjects(format!("{prefix}{region}.>"))
            .await
            .context("Failed to list the reviews bucket")?;
        while let Some(found) = subjects_found.next().await {
            let (subject, _) = found.context("Failed to list the reviews bucket")?;
            listed.push(subject);
        }
        let mut wanted: HashSet<String> = in_review.map(subjects::review_key).collect();
        let mut changes = Vec::new();
        for subject in listed {
            let key = subject.trim_start_matches(&prefix).to_owned();
            let Ok(id) = RegistrationId::parse(&key) else {
                tracing::warn!(%key, "A key in the reviews bucket is not a registration id; leaving it.");
                continue;
            };
            let last = stream
                .get_last_raw_message_by_subject(&subject)
                .await
                .with_context(|| format!("Failed to read the reviews bucket's key {key}"))?;
            let present = !last
                .headers
                .get(KV_OPERATION)
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            match (wanted.remove(&key), present) {
                (true, true) | (false, false) => {}
                (true, false) => changes.push((id, true)),
                (false, true) => changes.push((id, false)),
            }
        }
        for key in wanted {
            changes.push((
                RegistrationId::parse(&key).context("a registration id")?,
                true,
            ));
        }
        self.record(&changes).await
    }
}
