//! The ingest edge end to end against a bare ntex handler, driven by the same closed-loop
//! load generator in the same run: how many valid 4 kB registrations per second the edge
//! accepts durably (202 after the group commit), and how close that is to what ntex alone
//! answers on this machine.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chaos::{self, load, services};
use crate::contention::report::Percentiles;

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeFigure {
    /// What answered.
    pub target: String,
    /// Requests sent.
    pub requests: u64,
    /// `202` answers.
    pub accepted: u64,
    /// Wall time.
    pub seconds: f64,
    /// `202`s per second.
    pub accepted_per_second: f64,
    /// Request latency percentiles, milliseconds.
    pub latency_ms: Percentiles,
    /// Highest resident memory of the process that answered, MiB, during the run.
    pub peak_rss_mib: f64,
}

/// Sends `registrations` valid registrations to `base`, `concurrency` at a time (closed
/// loop), citizens numbered from `first`.
async fn drive(
    target: &str,
    base: &str,
    pid: u32,
    registrations: u32,
    concurrency: usize,
    first: u32,
) -> anyhow::Result<EdgeFigure> {
    let watched = [crate::procstat::Watched {
        name: target.to_owned(),
        pid,
    }];
    let (figure, usage) = crate::procstat::watch(
        &watched,
        Duration::from_millis(100),
        drive_load(target, base, registrations, concurrency, first),
    )
    .await;
    let mut figure = figure?;
    figure.peak_rss_mib = usage.peak_rss_mib.get(target).copied().unwrap_or(0.0);
    println!(
        "edge: {:<44} {:>8.0} accepted/s, p50 {:.1} ms, p99 {:.1} ms ({} of {} accepted), peak RSS {:.1} MiB",
        figure.target,
        figure.accepted_per_second,
        figure.latency_ms.p50,
        figure.latency_ms.p99,
        figure.accepted,
        figure.requests,
        figure.peak_rss_mib
    );
    Ok(figure)
}

async fn drive_load(
    target: &str,
    base: &str,
    registrations: u32,
    concurrency: usize,
    first: u32,
) -> anyhow::Result<EdgeFigure> {
    let http = ntex::client::Client::builder()
        .connector::<()>(ntex::client::Connector::new().limit(concurrency + 16))
        .build(ntex::SharedCfg::default())
        .await
        .map_err(|e| anyhow::anyhow!("an HTTP client: {e:?}"))?;
    let pool = chaos::pool(1_000);
    let next = Rc::new(Cell::new(0u32));
    let accepted = Rc::new(Cell::new(0u64));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(registrations as usize)));
    let url: Rc<str> = format!("{base}/v1/registrations").into();
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, pool, next, accepted, latencies, url) = (
            http.clone(),
            pool.clone(),
            next.clone(),
            accepted.clone(),
            latencies.clone(),
            url.clone(),
        );
        workers.push(ntex::rt::spawn(async move {
            loop {
                let i = next.get();
                if i >= registrations {
                    return;
                }
                next.set(i + 1);
                let citizen = first + i;
                let body = load::registration(citizen, &pool[citizen as usize % pool.len()].0);
                let sent = Instant::now();
                let response = http
                    .post(&*url)
                    .timeout(Duration::from_secs(30))
                    .send_json(&body)
                    .await;
                if let Ok(response) = response {
                    if response.status() == 202 {
                        accepted.set(accepted.get() + 1);
                    }
                    let _ = response.body().limit(1 << 16).await;
                }
                latencies.borrow_mut().push(sent.elapsed());
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let figure = EdgeFigure {
        target: target.to_owned(),
        requests: u64::from(registrations),
        accepted: accepted.get(),
        seconds,
        accepted_per_second: accepted.get() as f64 / seconds,
        latency_ms: Percentiles::of(latencies.take()),
        peak_rss_mib: 0.0,
    };
    Ok(figure)
}

/// Measures the bare handler, then the edge alone (nats-server with fsync always and the
/// edge: the ingest hop by itself, as when processors and projections run elsewhere), then the
/// edge with the whole system running beside it on this machine (one reservation replica,
/// the projections), all driven by the same load generator.
pub async fn measure(
    registrations: u32,
    concurrency: usize,
    log_dir: &Path,
) -> anyhow::Result<Vec<EdgeFigure>> {
    let exe = std::env::current_exe()?;
    let http = ntex::client::Client::new().await;
    let mut bare = services::spawn(&exe, "nats://127.0.0.1:1", log_dir, "bare", "bare")?;
    services::wait_ready(&http, &mut bare).await?;
    let bare_figure = drive(
        "bare ntex handler (reads the body, 202)",
        &bare.base,
        bare.pid(),
        registrations,
        concurrency,
        0,
    )
    .await?;
    bare.kill();

    let nats = testkit::NatsServer::start();
    let mut alone = services::spawn(&exe, &nats.url(), log_dir, "ingest-alone", "ingest")?;
    services::wait_ready(&http, &mut alone).await?;
    let alone_figure = drive(
        "ingest edge alone (validate, claim, durable append)",
        &alone.base,
        alone.pid(),
        registrations,
        concurrency,
        0,
    )
    .await?;
    alone.kill();
    drop(nats);

    let nats = testkit::NatsServer::start();
    let system = services::System::start(&nats.url(), log_dir, 1).await?;
    let ingest = system
        .processes()
        .find(|p| p.name() == "ingest")
        .map(|p| p.pid())
        .unwrap_or_default();
    let edge_figure = drive(
        "ingest edge, whole pipeline running beside it",
        system.ingest_url(),
        ingest,
        registrations,
        concurrency,
        0,
    )
    .await?;
    system.stop().await;
    Ok(vec![bare_figure, alone_figure, edge_figure])
}
