//! Stream and bucket configurations, created or updated idempotently at start-up
//! ([`ensure_streams`]) by every service that manages them (all of them on a development
//! machine without per-service identities), so no start order is required. Services running
//! under their own NATS identities only bind ([`bind_streams`]); the admin identity creates.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use crate::subjects;

/// How many copies JetStream keeps: 1 on a development machine (made durable by
/// `sync_interval: always` in the server config), 3 in a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Replication(pub usize);

/// Largest message the streams accept: one registration is at most 16 KiB of request plus
/// envelope; decision batches are many small messages.
pub const MAX_MESSAGE_BYTES: i32 = 64 * 1024;

fn log_stream(name: &str, subjects: Vec<String>, replicas: Replication) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        // The log is the system of record: nothing is discarded by age or size.
        max_message_size: MAX_MESSAGE_BYTES,
        num_replicas: replicas.0,
        // Many registrations per durable write (group commit, docs/write-path.md).
        allow_atomic_publish: true,
        // Status reads and the edge's claim checks use direct gets.
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The intake stream's configuration.
pub fn intake_stream(replicas: Replication) -> stream::Config {
    log_stream(
        subjects::INTAKE_STREAM,
        subjects::intake_stream_subjects(),
        replicas,
    )
}

/// The decisions stream's configuration.
pub fn decisions_stream(replicas: Replication) -> stream::Config {
    log_stream(
        subjects::DECISIONS_STREAM,
        subjects::decisions_stream_subjects(),
        replicas,
    )
}

/// The snapshots bucket's configuration: one object per region (a new snapshot replaces the
/// old one), kept until replaced. A snapshot is only ever a shortcut: losing the bucket costs
/// a full fold of the decision log at the next takeover, never a wrong decision.
pub fn snapshots_bucket(replicas: Replication) -> jetstream::object_store::Config {
    jetstream::object_store::Config {
        bucket: subjects::SNAPSHOTS_BUCKET.to_owned(),
        description: Some(
            "the reservation processor's state per region, to take over in bounded time".into(),
        ),
        storage: stream::StorageType::File,
        num_replicas: replicas.0,
        ..Default::default()
    }
}

/// The reviews bucket's configuration ([`subjects::REVIEWS_BUCKET`]): a key per registration
/// in manual review, deleted when it leaves review. Only a view of the decision log, which
/// the reservation processor rewrites from its state when it takes a region over.
pub fn reviews_bucket(replicas: Replication) -> jetstream::kv::Config {
    jetstream::kv::Config {
        bucket: subjects::REVIEWS_BUCKET.to_owned(),
        description:
            "the registrations in manual review, for the edge's check of an operator's decision"
                .into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas.0,
        ..Default::default()
    }
}

/// The waiting rooms' bucket ([`subjects::WAITING_ROOM_BUCKET`]): per region, what an
/// operator set, the controller's serving place and each edge's ticket counts
/// ([`crate::waiting_room`]). Small, rewritten often, the last value of each key is all that
/// matters.
pub fn waiting_room_bucket(replicas: Replication) -> jetstream::kv::Config {
    jetstream::kv::Config {
        bucket: subjects::WAITING_ROOM_BUCKET.to_owned(),
        description: "waiting rooms: settings, serving places and ticket counts per region".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas.0,
        ..Default::default()
    }
}

/// Creates every stream and bucket, or updates them to this code's configuration. This
/// module is the one place stream configuration comes from; a service never changes an
/// existing stream's replication: started with a `REG_REPLICAS` other than the stream's
/// (say, without it against a cluster's R3 streams), it refuses to start instead of
/// shrinking them.
pub async fn ensure_streams(js: &jetstream::Context, replicas: Replication) -> anyhow::Result<()> {
    for config in [intake_stream(replicas), decisions_stream(replicas)] {
        let name = config.name.clone();
        match js.get_stream(&name).await {
            Ok(existing) => {
                // get_stream read the stream's info already: no second request.
                let have = existing.cached_info().config.num_replicas;
                if have != replicas.0 {
                    anyhow::bail!(
                        "stream {name} has {have} replica(s) but this service was started with \
                         REG_REPLICAS={}; start it with REG_REPLICAS={have} (a service never \
                         changes an existing stream's replication)",
                        replicas.0
                    );
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(e)
                        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) => {}
            Err(err) => {
                return Err(err).with_context(|| format!("Failed to look up stream {name}"));
            }
        }
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("Failed to create or update stream {name}"))?;
    }
    js.create_or_update_key_value(crate::lease::leases_bucket(replicas))
        .await
        .context("Failed to create or update the leases bucket")?;
    js.create_or_update_key_value(reviews_bucket(replicas))
        .await
        .context("Failed to create or update the reviews bucket")?;
    js.create_or_update_key_value(waiting_room_bucket(replicas))
        .await
        .context("Failed to create or update the waiting-room bucket")?;
    // Creating a stream that exists with the same configuration succeeds, so every service
    // may do it; a racing creator's error is fine if the bucket is there afterwards.
    if let Err(err) = js.create_object_store(snapshots_bucket(replicas)).await {
        js.get_object_store(subjects::SNAPSHOTS_BUCKET)
            .await
            .map_err(|_| err)
            .context("Failed to create the snapshots bucket")?;
    }
    Ok(())
}

/// Checks that the streams exist with `replicas` copies, changing nothing: how a service
/// starts when it runs under its own NATS identity (which may not create or update streams,
/// see [`crate::accounts`]); the admin identity ran [`ensure_streams`] before. The leases
/// bucket is the reservation processor's to open ([`crate::lease::open`] waits for it).
pub async fn bind_streams(js: &jetstream::Context, replicas: Replication) -> anyhow::Result<()> {
    for name in [subjects::INTAKE_STREAM, subjects::DECISIONS_STREAM] {
        let stream = js.get_stream(name).await.with_context(|| {
            format!(
                "Failed to find stream {name} (it is created by the admin identity: \
                 `nats-accounts streams`)"
            )
        })?;
        let have = stream.cached_info().config.num_replicas;
        if have != replicas.0 {
            anyhow::bail!(
                "stream {name} has {have} replica(s) but this service was started with \
                 REG_REPLICAS={}; start it with REG_REPLICAS={have}",
                replicas.0
            );
        }
    }
    Ok(())
}
