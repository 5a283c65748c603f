//! Start-up of the projections process: the workers and the read API.

use std::net::TcpListener;

use anyhow::Context as _;
use streams::config::Replication;
use streams::crypto::Keys;
use streams::subjects;
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
    let writer = runtime.handle().spawn(write_while_leased(
        js.clone(),
        store.clone(),
        settings.linger,
        metrics.clone(),
        shutdown.clone(),
    ));
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
    runtime
        .handle()
        .spawn(api::keep_slot_table(reader.clone(), shutdown.clone()));
    let served = streams::http::serve(
        listener,
        settings.workers,
        reader,
        api::configure,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Err(err) = writer.await {
        tracing::error!(error = %err, "The projection writer ended abnormally.");
    }
    drop(runtime);
    served
}

/// Runs the projection workers while this replica holds the writer lease
/// ([`subjects::PROJECTIONS_WRITER_LEASE`]), standing by while another does, until `shutdown`.
///
/// Every replica serves reads; one at a time applies the streams, and a standby takes over
/// within a lease's TTL when the writer dies, from the checkpoints in the store. The lease is
/// for efficiency (a standby reads and writes nothing); safety is the checkpoint condition of
/// [`crate::store::Store::apply`]: a writer paused past its lease that wakes up beside the new
/// one has its next batch refused, so no row and no checkpoint goes backwards.
async fn write_while_leased(
    js: async_nats::jetstream::Context,
    store: Store,
    linger: std::time::Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let holder = format!("projections-{}", uuid::Uuid::now_v7());
    let Some(leases) = streams::lease::open(&js, &shutdown).await else {
        return;
    };
    while let Some(lease) = streams::lease::acquire(
        &leases,
        subjects::PROJECTIONS_WRITER_LEASE,
        &holder,
        &shutdown,
    )
    .await
    {
        metrics.writer.set(1);
        let workers = worker::projected_streams().map(|(stream, filter)| {
            let worker = tokio::spawn(worker::project(
                js.clone(),
                store.clone(),
                stream,
                filter,
                linger,
                metrics.clone(),
                lease.active().clone(),
            ));
            (stream, worker)
        });
        for (stream, worker) in workers {
            if let Err(err) = worker.await {
                tracing::error!(stream, error = %err, "A projection worker ended abnormally.");
            }
        }
        metrics.writer.set(0);
        lease.release().await;
    }
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
