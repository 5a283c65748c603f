//! Start-up of the projections process: the workers and the read API.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context as _;
use streams::config::Replication;
use streams::crypto::Keys;
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
    /// The operators' bearer token.
    pub admin_token: String,
    /// Availability cache lifetime (the staleness bound).
    pub cache_ttl: Duration,
    /// How long a projection batch waits for more events after its first (see
    /// [`worker::project`]).
    pub linger: Duration,
    /// HTTP worker threads.
    pub workers: usize,
    /// Stream replication.
    pub replicas: usize,
    /// Origins whose pages may read availability and status (CORS): the citizens' page.
    pub cors_origins: Vec<String>,
    /// Where the SMART Scheduling Links publication points.
    pub publication: crate::smart::Publication,
    /// Each region's time zone: availability lists no slot whose day is over there.
    pub calendar: streams::calendar::Calendar,
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
    // The workers get a runtime of their own, a thread per worker. The binary's runtime is
    // ntex's single thread, and the embedded SurrealDB runs each transaction inside the task
    // that awaits it: there, the intake and decisions workers took turns on one core, and
    // the projections fell seconds behind a saturated edge with the second core idle after.
    let runtime = WorkerRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("projection")
            .enable_all()
            .build()
            .context("Failed to start the projection workers' runtime")?,
    ));
    let workers = worker::projected_streams().map(|(stream, filter)| {
        let worker = runtime.handle().spawn(worker::project(
            js.clone(),
            store.clone(),
            stream,
            filter,
            settings.linger,
            metrics.clone(),
            shutdown.clone(),
        ));
        (stream, worker)
    });
    let reader = Reader::new(
        store,
        Keys::from_secret(&settings.secret),
        metrics,
        client,
        crate::rebuild::Rebuilds::new(js.clone(), runtime.handle().clone()),
        api::ReaderSettings {
            ttl: settings.cache_ttl,
            admin_token: settings.admin_token.clone(),
            cors_origins: settings.cors_origins.clone(),
            publication: settings.publication.clone(),
            calendar: settings.calendar.clone(),
        },
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
    for (stream, worker) in workers {
        if let Err(err) = worker.await {
            tracing::error!(stream, error = %err, "A projection worker ended abnormally.");
        }
    }
    drop(runtime);
    served
}

/// The projection workers' runtime, shut down without blocking when dropped (a runtime
/// dropped the ordinary way blocks, which an async context must not), on every path out of
/// [`run`].
struct WorkerRuntime(Option<tokio::runtime::Runtime>);

impl WorkerRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the runtime lives until dropped")
            .handle()
    }
}

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
