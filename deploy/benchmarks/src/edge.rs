//! The ingest edge end to end against a bare ntex handler, driven by the same closed-loop
//! load generator in the same run: how many valid 4 kB registrations per second the edge
//! accepts durably (202 after the group commit), and how close that is to what ntex alone
//! answers on this machine.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::contention::report::Percentiles;
use e2e::chaos::{self, load, services};

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

/// The figures as a Markdown table (for `bench/results.md` and `bench edge`).
pub fn table(figures: &[EdgeFigure]) -> String {
    let mut md = String::from(
        "| target | accepted/s | p50 ms | p99 ms | peak RSS MiB |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for f in figures {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            f.target, f.accepted_per_second, f.latency_ms.p50, f.latency_ms.p99, f.peak_rss_mib
        ));
    }
    md
}

/// Sends `registrations` valid registrations to `base`, `concurrency` at a time (closed
/// loop), and watches `process`'s memory meanwhile.
async fn drive(
    target: &str,
    process: &services::Process,
    registrations: u32,
    concurrency: usize,
) -> anyhow::Result<EdgeFigure> {
    let watched = [crate::procstat::Watched {
        name: target.to_owned(),
        pid: process.pid(),
    }];
    let (figure, usage) = crate::procstat::watch(
        &watched,
        Duration::from_millis(100),
        drive_load(target, &process.base, registrations, concurrency),
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
) -> anyhow::Result<EdgeFigure> {
    let http = load::http_client(concurrency + 16).await?;
    let pool = chaos::pool(1_000);
    let next = Rc::new(Cell::new(0u32));
    let accepted = Rc::new(Cell::new(0u64));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(registrations as usize)));
    let url: Rc<str> = format!("{base}/v1/registrations").into();
    // Connections first, untimed: `concurrency` new connections at once stalled the first
    // requests about a second (seen in every target, bare handler included: the load
    // generator's cost, not the target's), up to a fifth of a short run.
    let warm: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (http, url) = (http.clone(), format!("{base}/readyz"));
            ntex::rt::spawn(async move {
                // The body read, so the connection goes back to the pool.
                if let Ok(response) = http.get(&url).timeout(Duration::from_secs(30)).send().await {
                    let _ = response.body().limit(1 << 16).await;
                }
            })
        })
        .collect();
    for connected in warm {
        let _ = connected.await;
    }
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
                let citizen = i;
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
    // One service on its own: started, driven, stopped.
    let alone = async |nats_url: &str, name: &str, service: &str, target: &str| {
        let http = ntex::client::Client::new().await;
        let mut process = services::spawn(&exe, nats_url, log_dir, name, service)?;
        services::wait_ready(&http, &mut process).await?;
        drive(target, &process, registrations, concurrency).await
    };
    let bare_figure = alone(
        "nats://127.0.0.1:1",
        "bare",
        "bare",
        "bare ntex handler (reads the body, 202)",
    )
    .await?;
    let nats = testkit::NatsServer::start();
    let alone_figure = alone(
        &nats.url(),
        "ingest-alone",
        "ingest",
        "ingest edge alone (validate, claim, durable append)",
    )
    .await?;
    drop(nats);

    let nats = testkit::NatsServer::start();
    let system = crate::system(&nats.url(), log_dir).await?;
    let ingest = system
        .processes()
        .find(|p| p.name() == "ingest")
        .context("the system runs an edge")?;
    let edge_figure = drive(
        "ingest edge, whole pipeline running beside it",
        ingest,
        registrations,
        concurrency,
    )
    .await?;
    system.stop().await;
    crate::remove_store(log_dir);
    Ok(vec![bare_figure, alone_figure, edge_figure])
}
