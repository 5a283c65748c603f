//! The ingest edge end to end against a bare ntex handler, driven by the same closed-loop
//! load generator in the same run: how many valid 4 kB registrations per second the edge
//! accepts durably (202 after the group commit), and how close that is to what ntex alone
//! answers on this machine.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
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
    /// Server CPU per answered request, µs, by process (the target and, for the edge, its
    /// nats-server); measured for the wrk runs only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_us_per_request: BTreeMap<String, f64>,
}

impl EdgeFigure {
    /// One line on stdout as the figure is known, `detail` at its end.
    fn print(&self, detail: &str) {
        println!(
            "edge: {:<44} {:>8.0} accepted/s, p50 {:.1} ms, p99 {:.1} ms ({} of {} accepted), {detail}",
            self.target,
            self.accepted_per_second,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.accepted,
            self.requests,
        );
    }
}

/// The figures as a Markdown table (for `deploy/benchmarks/reports/results.md` and `bench edge`).
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
    figure.print(&format!("peak RSS {:.1} MiB", figure.peak_rss_mib));
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
    // Connections first, untimed: `concurrency` new connections at once stall the first
    // requests (in every target, bare handler included: the load generator's cost, not the
    // target's), a large share of a short run (docs/write-path.md).
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
        cpu_us_per_request: BTreeMap::new(),
    };
    Ok(figure)
}

/// The wrk script that sends valid ~3.8 kB registrations, a new citizen each request.
const WRK_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../wrk/registrations.lua");

/// What the script's `done` hook prints on its last line.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct WrkSummary {
    /// Requests answered.
    pub(crate) requests: u64,
    /// Answers other than 2xx/3xx.
    pub(crate) non_2xx: u64,
    socket_errors: u64,
    duration_us: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

impl WrkSummary {
    /// The run's wall seconds.
    pub(crate) fn seconds(&self) -> f64 {
        self.duration_us as f64 / 1e6
    }

    /// Request latency, milliseconds.
    pub(crate) fn latency_ms(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(self.p50_us),
            p90: ms(self.p90_us),
            p99: ms(self.p99_us),
            p999: ms(self.p999_us),
            max: ms(self.max_us),
        }
    }
}

/// Whether wrk can be started here (`deploy/bench` installs it).
pub fn wrk_available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

/// Runs wrk (one thread, `connections` connections, `seconds`) with the registrations script
/// against `base`, `script_args` after `--` (the script's slot and `phone`), and reads its
/// summary.
pub(crate) async fn run_wrk(
    connections: usize,
    seconds: u32,
    base: &str,
    script_args: &[String],
) -> anyhow::Result<WrkSummary> {
    let mut command = tokio::process::Command::new("wrk");
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-s", WRK_SCRIPT, base]);
    if !script_args.is_empty() {
        command.arg("--").args(script_args);
    }
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .context("Failed to run wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_SUMMARY "))
        .with_context(|| {
            format!(
                "wrk printed no summary: {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .and_then(|json| serde_json::from_str(json).context("Failed to read wrk's summary"))
}

/// Drives `process` with wrk (one thread, `connections` connections, `seconds`) and the
/// registrations script, watching the CPU and memory of `process` and of `also` (its
/// nats-server).
async fn drive_wrk(
    target: &str,
    short: &str,
    process: &services::Process,
    also: Option<crate::procstat::Watched>,
    connections: usize,
    seconds: u32,
    script_args: &[String],
) -> anyhow::Result<EdgeFigure> {
    let mut watched = vec![crate::procstat::Watched {
        name: short.to_owned(),
        pid: process.pid(),
    }];
    watched.extend(also);
    let run = run_wrk(connections, seconds, &process.base, script_args);
    let (summary, usage) = crate::procstat::watch(&watched, Duration::from_millis(100), run).await;
    let summary = summary?;
    let seconds = summary.seconds();
    let accepted = summary.requests.saturating_sub(summary.non_2xx);
    let figure = EdgeFigure {
        target: target.to_owned(),
        requests: summary.requests,
        accepted,
        seconds,
        accepted_per_second: accepted as f64 / seconds,
        latency_ms: summary.latency_ms(),
        peak_rss_mib: usage.peak_rss_mib.get(short).copied().unwrap_or(0.0),
        cpu_us_per_request: usage
            .cpu_seconds
            .iter()
            .map(|(name, cpu)| (name.clone(), cpu * 1e6 / summary.requests.max(1) as f64))
            .collect(),
    };
    figure.print(&format!(
        "{} socket errors, CPU µs per request {:?}",
        summary.socket_errors, figure.cpu_us_per_request
    ));
    Ok(figure)
}

/// The bare handler and the edge alone, each driven by wrk for `seconds` with 256
/// connections: the generator that is not the bare handler's limit (the harness's own
/// ntex-client generator tops out near a third of what wrk gets from the bare handler).
pub async fn measure_wrk(seconds: u32, log_dir: &Path) -> anyhow::Result<Vec<EdgeFigure>> {
    let bare = crate::started(crate::NO_NATS, log_dir, "bare-wrk", "bare").await?;
    let bare_figure = drive_wrk(
        "bare ntex handler, wrk",
        "bare",
        &bare,
        None,
        256,
        seconds,
        &[],
    )
    .await?;
    drop(bare);
    let nats = testkit::NatsServer::start_beside_services("");
    let edge = crate::started(&nats.url(), log_dir, "ingest-wrk", "ingest").await?;
    let slot = configure(&edge.base).await?;
    let nats_watched = nats.pid().map(|pid| crate::procstat::Watched {
        name: "nats-server".into(),
        pid,
    });
    let edge_figure = drive_wrk(
        "ingest edge alone, wrk",
        "edge",
        &edge,
        nats_watched,
        256,
        seconds,
        &slot,
    )
    .await?;
    drop(edge);
    drop(nats);
    Ok(vec![bare_figure, edge_figure])
}

/// Opens a slot on the edge alone at `base` (the edge refuses regions no operator
/// configured) and waits until the edge accepts a registration for it (it learns the region
/// from the log); returns the slot as the wrk script's arguments.
async fn configure(base: &str) -> anyhow::Result<Vec<String>> {
    let region = chaos::region();
    let slot = streams::model::SlotKey {
        date: streams::calendar::Calendar::default().days_ahead(&region, 60),
        location: streams::model::Location::parse("narodowy").expect("a valid location"),
        region,
    };
    let http = load::http_client(4).await?;
    crate::deployed::set_capacity(&http, base, services::ADMIN_TOKEN, &slot).await?;
    let url = format!("{base}/v1/registrations");
    let mut last = 0;
    for probe in 0..600u32 {
        let body = load::registration(3_900_000 + probe, &slot);
        if let Ok(response) = http
            .post(&url)
            .timeout(Duration::from_secs(5))
            .send_json(&body)
            .await
        {
            last = response.status().as_u16();
            let _ = response.body().limit(1 << 16).await;
            if last == 202 {
                return Ok(vec![
                    slot.region.to_string(),
                    slot.location.to_string(),
                    slot.date.to_string(),
                ]);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the edge alone did not accept a registration for {slot} (last answer {last})")
}

/// [`measure_wrk`] when wrk is installed; otherwise nothing, with a note on stderr.
pub async fn measure_wrk_if_installed(
    seconds: u32,
    log_dir: &Path,
) -> anyhow::Result<Vec<EdgeFigure>> {
    if wrk_available() {
        measure_wrk(seconds, log_dir).await
    } else {
        eprintln!(
            "bench: wrk is not installed (deploy/bench installs it); the edge is compared with the harness's generator only"
        );
        Ok(Vec::new())
    }
}

/// The edge alone over the bare handler in [`measure_wrk`]'s figures, if it ran.
pub fn wrk_ratio(wrk: &[EdgeFigure]) -> Option<f64> {
    match wrk {
        [bare, edge] => Some(edge.accepted_per_second / bare.accepted_per_second),
        _ => None,
    }
}

/// [`measure_wrk`]'s figures as a Markdown section (empty if it did not run).
pub fn wrk_markdown(wrk: &[EdgeFigure]) -> String {
    let Some(ratio) = wrk_ratio(wrk) else {
        return String::new();
    };
    let mut md = String::from(
        "\n### The same, driven by wrk (one thread, 256 connections, `deploy/benchmarks/wrk/registrations.lua`)\n\n\
         | target | accepted/s | p50 ms | p99 ms | peak RSS MiB | server CPU µs per request |\n\
         | --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for f in wrk {
        md.push_str(&format!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} |\n",
            f.target,
            f.accepted_per_second,
            f.latency_ms.p50,
            f.latency_ms.p99,
            f.peak_rss_mib,
            f.cpu_us_per_request
                .iter()
                .map(|(p, us)| format!("{p} {us:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    md.push_str(&format!(
        "\nEdge alone ÷ bare handler, both driven by wrk: **{ratio:.3}×**.\n"
    ));
    md
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
    // One service on its own: started, driven, stopped.
    let alone = async |nats_url: &str, name: &str, service: &str, target: &str| {
        let process = crate::started(nats_url, log_dir, name, service).await?;
        drive(target, &process, registrations, concurrency).await
    };
    let bare_figure = alone(
        crate::NO_NATS,
        "bare",
        "bare",
        "bare ntex handler (reads the body, 202)",
    )
    .await?;
    let nats = testkit::NatsServer::start_beside_services("");
    let alone_figure = alone(
        &nats.url(),
        "ingest-alone",
        "ingest",
        "ingest edge alone (validate, claim, durable append)",
    )
    .await?;
    drop(nats);

    let nats = testkit::NatsServer::start_beside_services("");
    let system = crate::system(&nats.url(), log_dir).await?;
    let ingest = system
        .processes()
        .find(|p| p.name() == "ingest")
        .context("the system runs an edge")?;
    let edge_figure = drive(
        "ingest edge, partial pipeline (no verification, no notifications) beside it",
        ingest,
        registrations,
        concurrency,
    )
    .await?;
    system.stop().await;
    crate::remove_store(log_dir);
    Ok(vec![bare_figure, alone_figure, edge_figure])
}
