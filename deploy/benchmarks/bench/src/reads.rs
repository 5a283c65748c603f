//! The read API's availability endpoint against a bare ntex handler, same load generator,
//! same run: hot (a few keys, answered from the moka cache), cold (a new key each request,
//! so each is a SurrealDB read), and how many SurrealDB reads the hot load caused per key
//! per second (the contract: at most one per key per cache period, whatever the load).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::contention::report::Percentiles;
use e2e::chaos::services;

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigure {
    /// What answered.
    pub target: String,
    /// Requests answered `200`.
    pub ok: u64,
    /// Requests sent.
    pub requests: u64,
    /// Wall time.
    pub seconds: f64,
    /// `200`s per second.
    pub per_second: f64,
    /// Request latency percentiles, milliseconds.
    pub latency_ms: Percentiles,
    /// Distinct keys asked for (0: a new key every request).
    pub keys: usize,
    /// SurrealDB reads the read API made meanwhile (`read_availability_loads_total`).
    pub database_loads: Option<u64>,
    /// Those reads per key per second.
    pub loads_per_key_per_second: Option<f64>,
}

/// Which URL the `n`th request asks for.
pub type Urls = Rc<dyn Fn(u64) -> String>;

/// Sends GETs for `seconds`, `concurrency` at a time (closed loop).
pub async fn drive(
    target: &str,
    urls: Urls,
    keys: usize,
    seconds: f64,
    concurrency: usize,
    read_api: Option<&str>,
) -> anyhow::Result<ReadFigure> {
    let http = e2e::chaos::load::http_client(concurrency + 16).await?;
    // SurrealDB reads the read API made so far (`None` for a target without the counter).
    let loads = async |http: &ntex::client::Client| match read_api {
        Some(base) => services::scrape(http, base)
            .await
            .get("read_availability_loads_total")
            .copied(),
        None => None,
    };
    let loads_before = loads(&http).await;
    let next = Rc::new(Cell::new(0u64));
    let ok = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (http, urls, next, ok) = (http.clone(), urls.clone(), next.clone(), ok.clone());
        workers.push(ntex::rt::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = next.get();
                next.set(n + 1);
                let sent = Instant::now();
                if let Ok(response) = http
                    .get(urls(n))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                {
                    let good = response.status() == 200;
                    if response.body().limit(1 << 20).await.is_ok() && good {
                        ok.set(ok.get() + 1);
                    }
                }
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    let seconds = start.elapsed().as_secs_f64();
    let database_loads = match (loads_before, loads(&http).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let figure = ReadFigure {
        target: target.to_owned(),
        ok: ok.get(),
        requests: next.get(),
        seconds,
        per_second: ok.get() as f64 / seconds,
        latency_ms: Percentiles::of(latencies),
        keys,
        database_loads,
        loads_per_key_per_second: database_loads
            .filter(|_| keys > 0)
            .map(|loads| loads as f64 / keys as f64 / seconds),
    };
    eprintln!(
        "reads: {:<40} {:>8.0}/s, p50 {:.2} ms, p99 {:.2} ms{}",
        figure.target,
        figure.per_second,
        figure.latency_ms.p50,
        figure.latency_ms.p99,
        figure
            .database_loads
            .map(|l| format!(", {l} SurrealDB reads"))
            .unwrap_or_default()
    );
    Ok(figure)
}
