//! Leases: among any number of replicas started for the same work, one is active and the
//! others stand by, ready to take over within about one [`LEASE_TTL`] when it dies.
//!
//! A lease is a key in the [`subjects::LEASES_BUCKET`] key-value bucket, whose entries
//! expire after [`LEASE_TTL`] unless renewed. [`acquire`] creates the key (only one replica
//! can), then renews it every third of the TTL with a revision check; a failed renewal, or
//! none that succeeded for a whole TTL (NATS unreachable), means the lease may have passed to
//! another replica, and [`Lease::active`] fires.
//!
//! A lease is about efficiency, never about safety: a paused holder can believe it still
//! holds a lease that expired on the server. Writers that must never conflict also fence
//! their writes (the reservation processor's expected-last-subject-sequence), so two holders
//! at once cost a refused write, not a wrong one.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;

use crate::subjects;

/// How long a lease survives its holder's silence: the takeover time after a crash.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// The lease bucket's configuration: entries expire after [`LEASE_TTL`].
pub fn leases_bucket(replicas: crate::config::Replication) -> kv::Config {
    kv::Config {
        bucket: subjects::LEASES_BUCKET.to_owned(),
        description: "one active replica per piece of work (e.g. a region's reservations)".into(),
        history: 1,
        max_age: LEASE_TTL,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.0,
        ..Default::default()
    }
}

/// A held lease. Dropping it stops renewing (the key then expires); [`Lease::release`] hands
/// it over at once.
pub struct Lease {
    kv: kv::Store,
    key: String,
    active: CancellationToken,
    renewer: tokio::task::JoinHandle<Option<u64>>,
}

impl Lease {
    /// Fires when the lease is lost (or `shutdown`, given to [`acquire`], fired): the holder
    /// must stop its work.
    pub fn active(&self) -> &CancellationToken {
        &self.active
    }

    /// Stops renewing and deletes the key if this holder still owns it, so a standby takes
    /// over without waiting for the TTL.
    pub async fn release(mut self) {
        self.active.cancel();
        if let Ok(Some(revision)) = (&mut self.renewer).await {
            match self
                .kv
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                Ok(()) => tracing::info!(key = %self.key, "Lease released."),
                Err(err) => {
                    tracing::debug!(key = %self.key, error = %err, "Lease not released; it expires by itself.")
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.active.cancel();
    }
}

/// Opens the lease bucket (created by [`crate::config::ensure_streams`]).
pub async fn bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    js.get_key_value(subjects::LEASES_BUCKET)
        .await
        .context("Failed to open the leases bucket")
}

/// Opens the lease bucket, waiting through a NATS outage (a replica started while
/// nats-server restarts must not exit); `None` when `shutdown` fires first.
pub async fn open(js: &jetstream::Context, shutdown: &CancellationToken) -> Option<kv::Store> {
    open_bucket(js, subjects::LEASES_BUCKET, shutdown).await
}

/// Opens the key-value bucket `name`, waiting through a NATS outage or a bucket the admin
/// identity has not created yet; `None` when `shutdown` fires first.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<kv::Store> {
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        match js.get_key_value(name).await {
            Ok(store) => return Some(store),
            Err(err) => {
                tracing::warn!(bucket = name, error = %err, "A key-value bucket cannot be opened yet; trying again.")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Waits until this replica holds the lease `key` (`holder` names it in the bucket, for
/// operators), or returns `None` when `shutdown` fires first. Standbys poll four times per
/// TTL.
pub async fn acquire(
    kv: &kv::Store,
    key: &str,
    holder: &str,
    shutdown: &CancellationToken,
) -> Option<Lease> {
    let mut waiting_logged = false;
    while !shutdown.is_cancelled() {
        match kv.create(key, holder.to_owned().into()).await {
            Ok(revision) => {
                tracing::info!(key, holder, "Lease acquired; this replica is active.");
                let active = shutdown.child_token();
                let renewer = tokio::spawn(renew(
                    kv.clone(),
                    key.to_owned(),
                    holder.to_owned(),
                    revision,
                    active.clone(),
                ));
                return Some(Lease {
                    kv: kv.clone(),
                    key: key.to_owned(),
                    active,
                    renewer,
                });
            }
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                if !waiting_logged {
                    tracing::info!(key, "Another replica holds the lease; standing by.");
                    waiting_logged = true;
                }
            }
            Err(err) => tracing::warn!(key, error = %err, "Could not try the lease; retrying."),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(LEASE_TTL / 4) => {}
        }
    }
    None
}

/// Renews until `active` is cancelled or the lease is lost; returns the last revision this
/// holder wrote when it still owns the key.
async fn renew(
    kv: kv::Store,
    key: String,
    holder: String,
    mut revision: u64,
    active: CancellationToken,
) -> Option<u64> {
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            _ = active.cancelled() => return Some(revision),
            _ = tokio::time::sleep(LEASE_TTL / 3) => {}
        }
        let attempt = Instant::now();
        match kv.update(&key, holder.clone().into(), revision).await {
            Ok(next) => {
                revision = next;
                last_renewed = attempt;
            }
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(key, "The lease expired and moved on; stepping down.");
                active.cancel();
                return None;
            }
            Err(err) if last_renewed.elapsed() >= LEASE_TTL => {
                tracing::warn!(key, error = %err, "The lease could not be renewed for a whole TTL; stepping down.");
                active.cancel();
                return None;
            }
            Err(err) => tracing::debug!(key, error = %err, "Lease renewal failed; retrying."),
        }
    }
}
