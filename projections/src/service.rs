//! Start-up of the projections process: the workers and the read API.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context as _;
use ntex::web::{self, App};
use streams::config::{Replication, ensure_streams};
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
    let client = streams::runtime::connect(&settings.nats, &shutdown).await?;
    let js = async_nats::jetstream::new(client.clone());
    ensure_streams(&js, Replication(settings.replicas)).await?;
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
    let server = web::HttpServer::new(async move || {
        App::new()
            .state(reader.clone())
            .configure(api::configure)
            .default_service(web::to(api::not_found_route))
    })
    .workers(settings.workers.max(1))
    .disable_signals()
    .listen(listener)
    .context("Failed to listen")?
    .run();
    let stopper = server.clone();
    tokio::select! {
        _ = shutdown.cancelled() => stopper.stop(true).await,
        _ = server => {}
    }
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}
