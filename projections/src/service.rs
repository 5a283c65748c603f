//! Start-up of the projections process: the workers and the read API.

use std::net::TcpListener;

use anyhow::Context as _;
use streams::config::Replication;
use streams::crypto::Keys;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Reader};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::store::Store;
use crate::worker;

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
        Keys::from_secret(settings.secret.expose()),
        metrics,
        client,
        crate::rebuild::Rebuilds::new(js.clone(), runtime.handle().clone()),
        api::ReaderSettings {
            ttl: settings.cache_ttl,
            admin_token: settings.admin_token.expose().to_owned(),
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
