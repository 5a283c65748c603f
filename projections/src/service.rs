//! Start-up of the projections process: the workers and the read API.

use std::net::TcpListener;
use std::time::Duration;

use streams::config::Replication;
use streams::crypto::Keys;
use streams::subjects::{self, RegionFilter};
use tokio_util::sync::CancellationToken;

use crate::api::{self, Reader};
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};
use crate::worker;

/// Everything the projections process needs besides its listener and shutdown signal.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How to reach NATS.
    pub nats: streams::runtime::NatsOptions,
    /// Where SurrealDB is.
    pub store: StoreOptions,
    /// The server secret (tokens).
    pub secret: String,
    /// Availability cache lifetime (the staleness bound).
    pub cache_ttl: Duration,
    /// How long a projection batch waits for more events after its first (see
    /// [`worker::project`]).
    pub linger: Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// Stream replication.
    pub replicas: usize,
}

/// Runs the workers and the read API on `listener` until `shutdown` fires.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (client, js) = streams::runtime::start_jetstream(
        &settings.nats,
        Replication(settings.replicas),
        &shutdown,
    )
    .await?;
    let store = Store::open(&settings.store).await?;
    let metrics = Metrics::new();
    let workers = [
        (
            subjects::INTAKE_STREAM,
            subjects::intake_filter(&RegionFilter::All),
        ),
        (
            subjects::DECISIONS_STREAM,
            subjects::decisions_filter(&RegionFilter::All),
        ),
    ]
    .map(|(stream, filter)| {
        tokio::spawn(worker::project(
            js.clone(),
            store.clone(),
            stream,
            filter,
            settings.linger,
            metrics.clone(),
            shutdown.clone(),
        ))
    });
    let reader = Reader::new(
        store,
        Keys::from_secret(&settings.secret),
        metrics,
        client,
        settings.cache_ttl,
    );
    let served = streams::http::serve(
        listener,
        settings.workers,
        reader,
        api::configure,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    served
}
