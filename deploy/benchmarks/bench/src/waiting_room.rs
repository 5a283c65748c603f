//! The opening minute, measured (`bench waiting-room`): the system as deploy/up starts it,
//! one region's waiting room on at an admission rate, and simulated citizens who follow the
//! protocol (take a ticket, poll when told to, with jitter, submit with the ticket once
//! admitted) arriving at `surge` times that rate, some of them before the opening.
//!
//! Reported, beside a run of the same registrations at the admission rate without the room
//! (the latency to compare with) and a bare ntex handler (the cost to compare with): the
//! accepted rate second by second against the admission rate; every answer by status (`503`s
//! counted); that every citizen was admitted and registered exactly once; how far admission
//! order follows arrival order (the share of neighbours in arrival swapped, Spearman's rank
//! correlation) after the opening, and that it does not among the early (a lottery); the
//! edge's CPU per ticket and per poll.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Value, json};
use streams::model::SlotKey;

use crate::contention::report::Percentiles;
use crate::deployed::Deployment;

/// Command-line options of `bench waiting-room`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Admissions per second the room is set to: the cap under headroom pacing.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// `headroom` (the controller paces by what it measures, up to the rate) or `fixed`.
    #[arg(long, default_value = "headroom")]
    pub pacing: String,
    /// Citizens arrive at this many times the admission rate...
    #[arg(long, default_value_t = 20)]
    pub surge: u32,
    /// ...or at this many per second (e.g. twenty times what the pipeline sustains, when the
    /// rate is a cap above it).
    #[arg(long)]
    pub arrivals: Option<f64>,
    /// The registrations per second of the run without a room (default: the rate).
    #[arg(long)]
    pub baseline_rate: Option<u32>,
    /// Seconds of arrivals after the opening.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds before the opening during which the early arrive (the pre-queue), at the same
    /// arrival rate.
    #[arg(long, default_value_t = 3.0)]
    pub early_seconds: f64,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/waiting-room.json")]
    pub out: PathBuf,
    /// Also write each citizen's course as CSV here (place, arrival, first seen admitted,
    /// accepted, the `202`'s latency, polls): for tracing who came late, and why.
    #[arg(long)]
    pub citizens_csv: Option<PathBuf>,
}

/// What one citizen met.
#[derive(Debug, Clone, Default)]
struct Citizen {
    /// Arrived before the opening.
    early: bool,
    /// When it asked for a ticket (since the run started).
    arrived: Duration,
    /// Its place, as the ticket says (ms, tie-breaker).
    place: (i64, u32),
    /// When a poll first told it it was admitted (since the run started).
    seen_admitted: Option<Duration>,
    /// When its submission was accepted (since the run started).
    accepted: Option<Duration>,
    /// The `202`'s latency.
    latency: Option<Duration>,
    /// Registrations it got (must be one).
    registrations: u32,
    /// Polls it sent.
    polls: u32,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// The admission rate set (the cap under headroom pacing).
    pub admission_rate: u32,
    /// `headroom` or `fixed`.
    pub pacing: String,
    /// The rate the room admitted at, sampled each second after the opening
    /// (`GET /v1/admin/queues`'s `admitting`).
    pub admitting_per_second: Vec<f64>,
    /// Places the room admitted in each second after the opening, as the edge saw them (the
    /// change of `GET /v1/admin/queues`'s `admitted` between samples): beside
    /// `seen_admitted_per_second` and `accepted_per_second` it tells a pace that stalls from
    /// admissions found late.
    pub admitted_per_second: Vec<f64>,
    /// Citizens a poll first told they were admitted, per second after the opening.
    pub seen_admitted_per_second: Vec<u64>,
    /// Admitted submissions whose `202` took more than 100 ms, per second (of their acceptance)
    /// after the opening.
    pub slow_202_per_second: Vec<u64>,
    /// Polls sent per second, counted in whole seconds since the run started with the seconds
    /// before the opening's dropped: offset from the other series (counted from the opening
    /// itself) by the fraction of a second the opening lies past the run's start.
    pub polls_per_second: Vec<u64>,
    /// Seconds the pace was held below the rate, by what held it (numbers taken out).
    pub limited_by: BTreeMap<String, u64>,
    /// The registrations per second of the run without a room.
    pub baseline_rate: u32,
    /// Citizens, of whom early (before the opening).
    pub citizens: u64,
    /// Of them, before the opening.
    pub early: u64,
    /// Arrivals per second during the surge.
    pub arrival_rate: f64,
    /// Citizens registered exactly once / not at all / more than once.
    pub registered_once: u64,
    /// Citizens never registered.
    pub not_registered: u64,
    /// Citizens registered more than once.
    pub registered_twice: u64,
    /// Answers by route and status.
    pub answers: BTreeMap<String, u64>,
    /// `503` answers, every route.
    pub unavailable: u64,
    /// Registrations accepted in each second after the opening.
    pub accepted_per_second: Vec<u64>,
    /// The highest of them, and their mean over the seconds the line took to drain.
    pub accepted_peak: u64,
    /// Mean accepted per second from the opening to the last registration.
    pub accepted_mean: f64,
    /// Latency of the admitted submissions' `202`, ms.
    pub admitted_202_ms: Percentiles,
    /// The same, of the submissions sent while citizens were still arriving (the door taking
    /// every ticket on the same cores)...
    pub admitted_during_arrivals_202_ms: Percentiles,
    /// ...and of those sent after the last arrival.
    pub admitted_after_arrivals_202_ms: Percentiles,
    /// Latency of the same submissions at the admission rate without a room, ms.
    pub baseline_202_ms: Percentiles,
    /// The room's mean accepted rate, run straight (no room) once the pipeline caught up.
    pub same_rate: u32,
    /// Those registrations' `202` latency: the surge's at the same load.
    pub same_rate_202_ms: Percentiles,
    /// After the opening: share of arrival-order neighbours whose places are swapped.
    pub places_out_of_order: f64,
    /// After the opening: Spearman's rank correlation of arrival and place.
    pub places_rank_correlation: f64,
    /// After the opening: the same for arrival and acceptance (the citizens' polling included).
    pub accepted_rank_correlation: f64,
    /// Among the early: Spearman's rank correlation of arrival and place (a lottery: near 0).
    pub early_rank_correlation: f64,
    /// The edge's CPU per request and its rate, closed loop, beside a bare ntex handler.
    pub cost: Vec<Cost>,
    /// Seconds from the opening until every citizen was registered.
    pub drained_seconds: f64,
    /// CPU over the surge (from the first citizen to the last answer), by who spent it.
    pub surge_cpu: SurgeCpu,
    /// CPU over the arrivals alone (from the first citizen to the last one's arrival): the
    /// seconds the door takes every ticket.
    pub arrivals_cpu: SurgeCpu,
}

/// CPU seconds over the surge: the load generator (this process, the simulated citizens)
/// against the system's (every process deploy/up started, the stand-ins included), on the
/// same cores.
#[derive(Debug, Default, Serialize)]
pub struct SurgeCpu {
    /// Wall seconds of the surge.
    pub seconds: f64,
    /// The load generator's CPU seconds.
    pub load_generator: f64,
    /// The system's CPU seconds.
    pub system: f64,
}

impl SurgeCpu {
    /// The report's row: `what` it covers, and what the system's share is called.
    fn row(&self, what: &str, system: &str) -> String {
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let share = |cpu: f64| 100.0 * cpu / (self.seconds * cores).max(1e-9);
        format!(
            "| CPU {what} ({:.0} s on {cores} cores): the load generator / {system} | {:.0} / {:.0} core-seconds ({:.0} % / {:.0} % of the machine) |\n",
            self.seconds,
            self.load_generator,
            self.system,
            share(self.load_generator),
            share(self.system)
        )
    }

    /// CPU seconds so far: (this process, the processes `pids`).
    fn now(pids: &[u32]) -> (f64, f64) {
        let cpu = |pid| crate::procstat::sample(pid).map_or(0.0, |s| s.cpu_seconds);
        (cpu(std::process::id()), pids.iter().map(|&p| cpu(p)).sum())
    }
}

/// One request kind's cost at the edge.
#[derive(Debug, Serialize)]
pub struct Cost {
    /// What was asked.
    pub request: String,
    /// Requests per second, closed loop.
    pub per_second: f64,
    /// The edge's CPU per request, µs (the bare handler's own process for the bare handler).
    pub cpu_us: f64,
}

/// Runs the whole measurement.
pub async fn measure(options: &Options, log_dir: &std::path::Path) -> anyhow::Result<Figures> {
    let deployment = Deployment::start(log_dir).await?;
    let result = run(options, &deployment, log_dir).await;
    deployment.stop();
    result
}

async fn run(
    options: &Options,
    deployment: &Deployment,
    log_dir: &std::path::Path,
) -> anyhow::Result<Figures> {
    let http = e2e::chaos::load::http_client(4096).await?;
    let slots = crate::deployed::slots();
    for slot in &slots {
        crate::deployed::set_capacity(&http, &deployment.ingest_url, "dev-admin-token", slot)
            .await?;
    }
    let slot = slots[0].clone();
    let ingest = deployment.ingest_url.clone();
    let edge_pid = deployment
        .watched
        .iter()
        .find(|w| w.name == "ingest")
        .map(|w| w.pid)
        .context("deploy/up runs an edge")?;

    // The same submissions at the admission rate, no room: the latency to compare with.
    let baseline_rate = options.baseline_rate.unwrap_or(options.rate).max(1);
    eprintln!("waiting-room: 1/3 the baseline, {baseline_rate} registrations/s without a room");

    let baseline = straight(&http, &ingest, &slot, baseline_rate, 9_000_000).await;

    // The surge.
    let arrival_rate = arrival_rate(options);
    let early = (arrival_rate * options.early_seconds) as u32;
    let late = (arrival_rate * options.seconds) as u32;
    let opens_in = Duration::from_secs_f64(options.early_seconds + 2.0);
    let opens_at = chrono::Utc::now() + opens_in;
    admin_queue(
        &http,
        &ingest,
        &slot,
        json!({"enabled": true, "rate": options.rate, "opens_at": opens_at, "pacing": options.pacing}),
    )
    .await?;
    eprintln!(
        "waiting-room: 2/3 {} citizens ({early} before the opening), {arrival_rate}/s for {} s, admitted at {}/s ({})",
        early + late,
        options.seconds,
        options.rate,
        options.pacing
    );
    let answers: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    // Polls sent, by second since the run started.
    let polls: Arc<Mutex<Vec<u64>>> = Arc::default();
    let system: Vec<u32> = deployment.watched.iter().map(|w| w.pid).collect();
    let cpu_before = SurgeCpu::now(&system);
    let started = Instant::now();
    let opening = started + opens_in;
    let first_early = opening - Duration::from_secs_f64(options.early_seconds);
    let arrivals_cpu = {
        let (system, arrived) = (
            system.clone(),
            opening + Duration::from_secs_f64(options.seconds),
        );
        ntex::rt::spawn(async move {
            tokio::time::sleep_until(first_early.into()).await;
            let before = SurgeCpu::now(&system);
            tokio::time::sleep_until(arrived.into()).await;
            let after = SurgeCpu::now(&system);
            SurgeCpu {
                seconds: arrived.duration_since(first_early).as_secs_f64(),
                load_generator: after.0 - before.0,
                system: after.1 - before.1,
            }
        })
    };
    // A headroom-paced room may admit well below its cap: give it four times as long.
    let give_up = opening
        + Duration::from_secs_f64(f64::from(early + late) / f64::from(options.rate) * 8.0 + 60.0);
    let done = tokio_util::sync::CancellationToken::new();
    let trace = ntex::rt::spawn(pace_trace(
        http.clone(),
        ingest.clone(),
        slot.region.to_string(),
        opening,
        done.clone(),
    ));
    let mut citizens = Vec::new();
    for i in 0..early + late {
        let at = if i < early {
            first_early + Duration::from_secs_f64(f64::from(i) / arrival_rate)
        } else {
            opening + Duration::from_secs_f64(f64::from(i - early) / arrival_rate)
        };
        let (http, ingest, slot, answers, polls) = (
            http.clone(),
            ingest.clone(),
            slot.clone(),
            answers.clone(),
            polls.clone(),
        );
        citizens.push(ntex::rt::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            // A citizen gives up at twice the line's expected drain plus a minute: a run whose
            // room stopped admitting ends, and its report says who was not registered.
            let citizen = Citizen {
                early: i < early,
                arrived: started.elapsed(),
                ..Default::default()
            };
            tokio::time::timeout_at(
                give_up.into(),
                follow(
                    &http,
                    &ingest,
                    i,
                    i < early,
                    &slot,
                    started,
                    (&answers, &polls),
                ),
            )
            .await
            .unwrap_or(citizen)
        }));
    }
    let mut met = Vec::new();
    for citizen in citizens {
        met.push(citizen.await.unwrap_or_default());
    }
    let cpu_after = SurgeCpu::now(&system);
    let surge_cpu = SurgeCpu {
        seconds: started.elapsed().as_secs_f64(),
        load_generator: cpu_after.0 - cpu_before.0,
        system: cpu_after.1 - cpu_before.1,
    };
    done.cancel();
    let trace = trace.await.unwrap_or_default();
    admin_queue(
        &http,
        &ingest,
        &slot,
        json!({"enabled": false, "rate": options.rate}),
    )
    .await?;

    eprintln!(
        "waiting-room: 3/3 the cost of tickets and polls at the edge, beside a bare ntex handler"
    );
    let arrivals_cpu = arrivals_cpu.await.unwrap_or_default();
    let cost = costs(&http, &ingest, edge_pid, &slot, log_dir).await?;
    if let Some(path) = &options.citizens_csv {
        write_citizens(path, &met, opens_in)?;
    }
    let mut figures = figures(options, met, answers, baseline, opens_in, cost);
    figures.polls_per_second = polls
        .lock()
        .expect("lock")
        .iter()
        .skip(opens_in.as_secs() as usize)
        .copied()
        .collect();
    figures.baseline_rate = baseline_rate;
    figures.surge_cpu = surge_cpu;
    figures.arrivals_cpu = arrivals_cpu;
    // The rate the room actually admitted at, straight, once the surge's backlogs are gone:
    // the latency the surge's is to be compared with at the same load.
    let same_rate = figures.accepted_mean.round().max(1.0) as u32;
    eprintln!("waiting-room: and {same_rate} registrations/s without a room, once caught up");
    let region = slot.region.clone();
    let waited = async { caught_up(&deployment.connect().await?, &region).await }.await;
    if let Err(err) = waited {
        eprintln!(
            "waiting-room: could not tell whether the pipeline caught up ({err:#}); going on"
        );
    }
    figures.same_rate = same_rate;
    figures.same_rate_202_ms =
        Percentiles::of(straight(&http, &ingest, &slot, same_rate, 9_500_000).await);
    figures.admitting_per_second = trace.iter().map(|(admitting, ..)| *admitting).collect();
    figures.admitted_per_second = trace.windows(2).map(|pair| pair[1].2 - pair[0].2).collect();
    for (_, why, _) in trace {
        if let Some(why) = why {
            *figures.limited_by.entry(why).or_default() += 1;
        }
    }
    Ok(figures)
}

/// `rate` registrations a second for five seconds, straight to the edge without a room (the
/// citizens `first`, `first + 1`, …): the latency of each accepted one.
async fn straight(
    http: &ntex::client::Client,
    ingest: &str,
    slot: &SlotKey,
    rate: u32,
    first: u32,
) -> Vec<Duration> {
    let started = Instant::now();
    let mut sends = Vec::new();
    for i in 0..rate * 5 {
        let at = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        let (http, ingest, slot) = (http.clone(), ingest.to_owned(), slot.clone());
        sends.push(ntex::rt::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let t = Instant::now();
            let status = submit(&http, &ingest, first + i, &slot, None, None).await.0;
            (status, t.elapsed())
        }));
    }
    let mut latencies = Vec::new();
    for send in sends {
        if let Ok((202, latency)) = send.await {
            latencies.push(latency);
        }
    }
    latencies
}

/// Waits (up to ten minutes) until `region`'s verification and notification consumers, the
/// slowest stages, have nothing left to do: the pipeline has caught up with the surge. (The
/// analysts' identity the benchmark reads with may look consumers up by name, not list them.)
async fn caught_up(
    client: &async_nats::Client,
    region: &streams::model::Region,
) -> anyhow::Result<()> {
    use streams::subjects;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(subjects::DECISIONS_STREAM).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut left = 0;
        for name in [
            subjects::verification_consumer(region),
            subjects::notification_consumer(region),
        ] {
            let info = stream.consumer_info(&name).await?;
            left += info.num_pending + info.num_ack_pending as u64;
        }
        if left == 0 || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The citizens' arrival rate.
fn arrival_rate(options: &Options) -> f64 {
    options
        .arrivals
        .unwrap_or(f64::from(options.rate * options.surge))
}

/// `why` with each run of digits as `N`, so that reasons group.
fn numbers_out(why: &str) -> String {
    let mut out = String::with_capacity(why.len());
    for c in why.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('N') {
            out.push('N');
        }
    }
    out
}

/// Samples the room's pace once a second from the opening until `done`: (admitting, what
/// held it below the rate with its numbers taken out).
async fn pace_trace(
    http: ntex::client::Client,
    ingest: String,
    region: String,
    opening: Instant,
    done: tokio_util::sync::CancellationToken,
) -> Vec<(f64, Option<String>, f64)> {
    let mut trace = Vec::new();
    let mut next = opening;
    loop {
        tokio::select! {
            _ = done.cancelled() => return trace,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next += Duration::from_secs(1);
        let response = http
            .get(format!("{ingest}/v1/admin/queues"))
            .bearer_auth("dev-admin-token")
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let (_, body, _) = answer(response).await;
        let room = body["queues"]
            .as_array()
            .and_then(|rooms| rooms.iter().find(|r| r["region"] == region.as_str()));
        let admitting = room
            .and_then(|r| r["admitting"].as_f64())
            .unwrap_or(f64::NAN);
        let why = room.and_then(|r| r["limited_by"].as_str()).map(numbers_out);
        let admitted = room
            .and_then(|r| r["admitted"].as_f64())
            .unwrap_or(f64::NAN);
        trace.push((admitting, why, admitted));
    }
}

/// One citizen following the protocol: a ticket, polls when told (with jitter), the
/// submission with the ticket once admitted, sent again on a refusal that invites it and on
/// no answer at all, under the same `Idempotency-Key` (as the citizens' page does: a retry of
/// a submission that did land is answered from its claim, never registered twice).
async fn follow(
    http: &ntex::client::Client,
    ingest: &str,
    n: u32,
    early: bool,
    slot: &SlotKey,
    started: Instant,
    (answers, polls): (&Mutex<BTreeMap<String, u64>>, &Mutex<Vec<u64>>),
) -> Citizen {
    let mut citizen = Citizen {
        early,
        arrived: started.elapsed(),
        ..Default::default()
    };
    let count = |route: &str, status: u16| {
        *answers
            .lock()
            .expect("lock")
            .entry(format!("{route} {status}"))
            .or_default() += 1;
    };
    let jitter = |d: Duration| d.mul_f64(0.8 + rand::random::<f64>() * 0.4);
    // A ticket (retrying as told on a refusal).
    let mut view = loop {
        let (status, body, retry) = post_json(
            http,
            &format!("{ingest}/v1/queue"),
            &json!({"region": slot.region}),
        )
        .await;
        count("ticket", status);
        if status == 200 {
            break body;
        }
        tokio::time::sleep(jitter(retry.unwrap_or(Duration::from_secs(2)))).await;
    };
    let ticket = view["ticket"].as_str().unwrap_or_default().to_owned();
    let key = format!("bench-{n}-{}", uuid::Uuid::now_v7());
    if let Ok(t) = streams::waiting_room::Ticket::decode(&ticket, development_keys()) {
        citizen.place = (t.place.ms, t.place.tie);
    }
    loop {
        if view["state"] == "admitted" {
            if citizen.seen_admitted.is_none() {
                citizen.seen_admitted = Some(started.elapsed());
            }
            let t = Instant::now();
            let (status, _) = submit(http, ingest, n, slot, Some(&ticket), Some(&key)).await;
            count("submit", status);
            match status {
                202 => {
                    citizen.registrations += 1;
                    citizen.accepted = Some(started.elapsed());
                    citizen.latency = Some(t.elapsed());
                    return citizen;
                }
                // No answer (the generator's own timeout, a dropped connection): whether it
                // landed is unknown, so it is sent again under the same key.
                0 | 503 | 429 => {}
                _ => return citizen,
            }
        }
        let wait = view["poll_after_seconds"].as_u64().unwrap_or(2).max(1);
        tokio::time::sleep(jitter(Duration::from_secs(wait))).await;
        citizen.polls += 1;
        {
            let second = started.elapsed().as_secs() as usize;
            let mut polls = polls.lock().expect("lock");
            if polls.len() <= second {
                polls.resize(second + 1, 0);
            }
            polls[second] += 1;
        }
        let (status, body, _) = get_json(http, &format!("{ingest}/v1/queue/{ticket}")).await;
        count("poll", status);
        if status == 200 {
            view = body;
        }
        if view["state"] == "expired" {
            return citizen;
        }
    }
}

/// Each citizen's course as CSV, times in seconds since the opening (empty: never).
fn write_citizens(
    path: &std::path::Path,
    met: &[Citizen],
    opens_in: Duration,
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let since = |at: Option<Duration>| {
        at.map(|at| format!("{:.3}", at.as_secs_f64() - opens_in.as_secs_f64()))
            .unwrap_or_default()
    };
    let mut out = String::from(
        "place_ms,place_tie,early,arrived_s,seen_admitted_s,accepted_s,latency_ms,polls\n",
    );
    for c in met {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            c.place.0,
            c.place.1,
            c.early,
            since(Some(c.arrived)),
            since(c.seen_admitted),
            since(c.accepted),
            c.latency
                .map(|l| format!("{:.2}", l.as_secs_f64() * 1000.0))
                .unwrap_or_default(),
            c.polls
        );
    }
    std::fs::write(path, out).with_context(|| format!("Failed to write {}", path.display()))
}

/// The keys deploy/up's development secret derives (the system the benchmark starts), derived
/// once rather than per citizen (the load generator's CPU shares the machine).
fn development_keys() -> &'static streams::crypto::Keys {
    static KEYS: std::sync::OnceLock<streams::crypto::Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| streams::crypto::Keys::from_secret(streams::crypto::DEVELOPMENT_SECRET))
}

async fn submit(
    http: &ntex::client::Client,
    ingest: &str,
    n: u32,
    slot: &SlotKey,
    ticket: Option<&str>,
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{ingest}/v1/registrations"))
        .timeout(Duration::from_secs(30))
        .content_type("application/json");
    if let Some(ticket) = ticket {
        request = request.header(streams::waiting_room::TICKET_HEADER, ticket);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let body = e2e::chaos::load::registration(n, slot);
    match request.send_json(&body).await {
        Ok(response) => {
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(_) => (0, Value::Null),
    }
}

async fn post_json(
    http: &ntex::client::Client,
    url: &str,
    body: &Value,
) -> (u16, Value, Option<Duration>) {
    answer(
        http.post(url)
            .timeout(Duration::from_secs(30))
            .send_json(body)
            .await,
    )
    .await
}

async fn get_json(http: &ntex::client::Client, url: &str) -> (u16, Value, Option<Duration>) {
    answer(http.get(url).timeout(Duration::from_secs(30)).send().await).await
}

async fn answer<E>(
    response: Result<ntex::client::ClientResponse, E>,
) -> (u16, Value, Option<Duration>) {
    match response {
        Ok(response) => {
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .map(Duration::from_secs);
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            (response.status().as_u16(), body, retry)
        }
        Err(_) => (0, Value::Null, None),
    }
}

async fn admin_queue(
    http: &ntex::client::Client,
    ingest: &str,
    slot: &SlotKey,
    body: Value,
) -> anyhow::Result<()> {
    let response = http
        .put(format!("{ingest}/v1/admin/queues/{}", slot.region))
        .bearer_auth("dev-admin-token")
        .send_json(&body)
        .await
        .map_err(|e| anyhow::anyhow!("PUT /v1/admin/queues: {e:?}"))?;
    anyhow::ensure!(
        response.status().as_u16() == 200,
        "the room's settings were refused: {}",
        response.status()
    );
    Ok(())
}

/// The edge's CPU per ticket and per poll (closed loop, 64 in flight), and a bare ntex
/// handler's per request.
async fn costs(
    http: &ntex::client::Client,
    ingest: &str,
    edge_pid: u32,
    slot: &SlotKey,
    log_dir: &std::path::Path,
) -> anyhow::Result<Vec<Cost>> {
    const REQUESTS: u32 = 20_000;
    // The room on, far from opening: tickets wait, polls answer "waiting".
    let opens_at = chrono::Utc::now() + chrono::Duration::hours(1);
    admin_queue(
        http,
        ingest,
        slot,
        json!({"enabled": true, "rate": 1, "opens_at": opens_at}),
    )
    .await?;
    let (_, first, _) = post_json(
        http,
        &format!("{ingest}/v1/queue"),
        &json!({"region": slot.region}),
    )
    .await;
    let ticket = first["ticket"].as_str().unwrap_or_default().to_owned();
    let ticket_url = format!("{ingest}/v1/queue");
    let poll_url = format!("{ingest}/v1/queue/{ticket}");
    let body = json!({"region": slot.region});
    let tickets = closed_loop(edge_pid, REQUESTS, || {
        let (http, url, body) = (http.clone(), ticket_url.clone(), body.clone());
        async move { post_json(&http, &url, &body).await.0 }
    })
    .await;
    let polls = closed_loop(edge_pid, REQUESTS, || {
        let (http, url) = (http.clone(), poll_url.clone());
        async move { get_json(&http, &url).await.0 }
    })
    .await;
    admin_queue(http, ingest, slot, json!({"enabled": false, "rate": 1})).await?;
    let mut bare = crate::started(crate::NO_NATS, log_dir, "bare-waiting-room", "bare").await?;
    let bare_url = format!("{}/v1/registrations", bare.base);
    let bare_cost = closed_loop(bare.pid(), REQUESTS, || {
        let (http, url, body) = (http.clone(), bare_url.clone(), body.clone());
        async move { post_json(&http, &url, &body).await.0 }
    })
    .await;
    bare.kill();
    Ok(vec![
        Cost {
            request: "bare ntex handler (reads the body, 202)".into(),
            per_second: bare_cost.0,
            cpu_us: bare_cost.1,
        },
        Cost {
            request: "POST /v1/queue: a ticket (sign, count)".into(),
            per_second: tickets.0,
            cpu_us: tickets.1,
        },
        Cost {
            request: "GET /v1/queue/{ticket}: a poll (check, position)".into(),
            per_second: polls.0,
            cpu_us: polls.1,
        },
    ])
}

/// `requests` requests, 64 at a time: (per second, CPU µs of process `pid` per request).
async fn closed_loop<F, Fut>(pid: u32, requests: u32, request: F) -> (f64, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16> + 'static,
{
    use futures::StreamExt as _;
    let before = crate::procstat::sample(pid).unwrap_or_default().cpu_seconds;
    let started = Instant::now();
    futures::stream::iter((0..requests).map(|_| request()))
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::procstat::sample(pid).unwrap_or_default().cpu_seconds - before;
    (
        f64::from(requests) / seconds,
        cpu * 1e6 / f64::from(requests),
    )
}

fn figures(
    options: &Options,
    met: Vec<Citizen>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
    baseline: Vec<Duration>,
    opens_in: Duration,
    cost: Vec<Cost>,
) -> Figures {
    let answers = answers.lock().expect("lock").clone();
    let unavailable = answers
        .iter()
        .filter(|(k, _)| k.ends_with(" 503"))
        .map(|(_, n)| n)
        .sum();
    // The last arrival, since the run started.
    let arrived = opens_in + Duration::from_secs_f64(options.seconds);
    let sent_in = |met: &[Citizen], after: bool| -> Vec<Duration> {
        met.iter()
            .filter_map(|c| Some((c.accepted? - c.latency?, c.latency?)))
            .filter(|(sent, _)| (*sent >= arrived) == after)
            .map(|(_, latency)| latency)
            .collect()
    };
    let per_second_of = |at: &mut dyn Iterator<Item = Duration>| {
        let mut counts: Vec<u64> = Vec::new();
        for at in at {
            let second = at.saturating_sub(opens_in).as_secs() as usize;
            if counts.len() <= second {
                counts.resize(second + 1, 0);
            }
            counts[second] += 1;
        }
        counts
    };
    let per_second = per_second_of(&mut met.iter().filter_map(|c| c.accepted));
    let seen_admitted_per_second = per_second_of(&mut met.iter().filter_map(|c| c.seen_admitted));
    let slow_202_per_second = per_second_of(&mut met.iter().filter_map(|c| {
        c.accepted
            .filter(|_| c.latency.is_some_and(|l| l > Duration::from_millis(100)))
    }));
    let last = met
        .iter()
        .filter_map(|c| c.accepted)
        .max()
        .unwrap_or(Duration::ZERO);
    let drained = last.saturating_sub(opens_in).as_secs_f64();
    let registered: u64 = met.iter().map(|c| u64::from(c.registrations)).sum();
    let late: Vec<&Citizen> = met.iter().filter(|c| !c.early).collect();
    let early: Vec<&Citizen> = met.iter().filter(|c| c.early).collect();
    let arrival = |c: &&Citizen| c.arrived;
    let place = |c: &&Citizen| c.place;
    let accepted = |c: &&Citizen| c.accepted.unwrap_or(Duration::MAX);
    Figures {
        admission_rate: options.rate,
        pacing: options.pacing.clone(),
        admitting_per_second: Vec::new(),
        admitted_per_second: Vec::new(),
        seen_admitted_per_second,
        slow_202_per_second,
        polls_per_second: Vec::new(),
        limited_by: BTreeMap::new(),
        baseline_rate: options.rate,
        citizens: met.len() as u64,
        early: early.len() as u64,
        arrival_rate: arrival_rate(options),
        registered_once: met.iter().filter(|c| c.registrations == 1).count() as u64,
        not_registered: met.iter().filter(|c| c.registrations == 0).count() as u64,
        registered_twice: met.iter().filter(|c| c.registrations > 1).count() as u64,
        answers,
        unavailable,
        accepted_peak: per_second.iter().copied().max().unwrap_or(0),
        accepted_mean: if drained > 0.0 {
            registered as f64 / drained
        } else {
            0.0
        },
        accepted_per_second: per_second,
        admitted_202_ms: Percentiles::of(met.iter().filter_map(|c| c.latency).collect()),
        admitted_during_arrivals_202_ms: Percentiles::of(sent_in(&met, false)),
        admitted_after_arrivals_202_ms: Percentiles::of(sent_in(&met, true)),
        baseline_202_ms: Percentiles::of(baseline),
        same_rate: 0,
        same_rate_202_ms: Percentiles::of(Vec::new()),
        places_out_of_order: swapped(&late, arrival, place),
        places_rank_correlation: spearman(&late, arrival, place),
        accepted_rank_correlation: spearman(&late, arrival, accepted),
        early_rank_correlation: spearman(&early, arrival, place),
        cost,
        drained_seconds: drained,
        surge_cpu: SurgeCpu::default(),
        arrivals_cpu: SurgeCpu::default(),
    }
}

/// Ranks of `key` over `items` (0 = smallest).
fn ranks<T, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<f64> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|i| key(&items[*i]));
    let mut rank = vec![0.0; items.len()];
    for (r, i) in order.into_iter().enumerate() {
        rank[i] = r as f64;
    }
    rank
}

/// Spearman's rank correlation of `a` and `b` over `items`.
fn spearman<T, A: Ord, B: Ord>(items: &[T], a: impl Fn(&T) -> A, b: impl Fn(&T) -> B) -> f64 {
    let n = items.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(items, a), ranks(items, b));
    let d2: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - y).powi(2)).sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

/// Share of neighbours in `a`'s order whose `b` order is the other way round.
fn swapped<T, A: Ord, B: Ord>(items: &[T], a: impl Fn(&T) -> A, b: impl Fn(&T) -> B) -> f64 {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|t| a(t));
    let pairs = sorted.len().saturating_sub(1);
    if pairs == 0 {
        return 0.0;
    }
    let out = sorted.windows(2).filter(|w| b(w[0]) > b(w[1])).count();
    out as f64 / pairs as f64
}

/// The report's Markdown body.
pub fn markdown(f: &Figures) -> String {
    let pacing = if f.pacing == "headroom" {
        format!(
            "paced by the pipeline's headroom under a cap of {} admissions/s",
            f.admission_rate
        )
    } else {
        format!("at a fixed {} admissions/s", f.admission_rate)
    };
    let mut md = format!(
        " One region's waiting room {pacing}; {} simulated citizens ({} of them in the \
         seconds before the opening) arriving at {:.0}/s, each taking a ticket, polling when told \
         (with ±20 % jitter) and submitting with its ticket once admitted. The system as deploy/up \
         starts it, every stage on, provider limits off.\n\n",
        f.citizens, f.early, f.arrival_rate
    );
    md += "| figure | value |\n| --- | ---: |\n";
    md += &format!(
        "| registered exactly once | {} of {} (none: {}, twice: {}) |\n",
        f.registered_once, f.citizens, f.not_registered, f.registered_twice
    );
    md += &format!(
        "| accepted per second after the opening: peak / mean until drained | {} / {:.1} (admission rate {}) |\n",
        f.accepted_peak, f.accepted_mean, f.admission_rate
    );
    md += &format!(
        "| drained (every citizen registered) after the opening | {:.0} s |\n",
        f.drained_seconds
    );
    let sampled: Vec<f64> = f
        .admitting_per_second
        .iter()
        .copied()
        .filter(|a| a.is_finite())
        .collect();
    if !sampled.is_empty() {
        let mean = sampled.iter().sum::<f64>() / sampled.len() as f64;
        let low = sampled.iter().copied().fold(f64::INFINITY, f64::min);
        md += &format!(
            "| the room's pace, sampled each second until drained: mean / lowest | {mean:.1} / {low:.1} per s |\n"
        );
    }
    md += &format!("| `503` answers | {} |\n", f.unavailable);
    md += &f.surge_cpu.row(
        "over the surge",
        "deploy/up's processes (stand-ins included)",
    );
    md += &f
        .arrivals_cpu
        .row("over the arrivals alone", "deploy/up's processes");
    md += &format!(
        "| admitted submissions' `202`, p50 / p99 | {:.1} / {:.1} ms |\n",
        f.admitted_202_ms.p50, f.admitted_202_ms.p99
    );
    md += &format!(
        "| of them sent while citizens were arriving, p50 / p99 | {:.1} / {:.1} ms |\n",
        f.admitted_during_arrivals_202_ms.p50, f.admitted_during_arrivals_202_ms.p99
    );
    md += &format!(
        "| of them sent after the last arrival, p50 / p99 | {:.1} / {:.1} ms |\n",
        f.admitted_after_arrivals_202_ms.p50, f.admitted_after_arrivals_202_ms.p99
    );
    md += &format!(
        "| the same registrations at {}/s without a room, p50 / p99 | {:.1} / {:.1} ms |\n",
        f.baseline_rate, f.baseline_202_ms.p50, f.baseline_202_ms.p99
    );
    md += &format!(
        "| the same at the room's mean rate, {}/s, without a room once caught up, p50 / p99 | {:.1} / {:.1} ms |\n",
        f.same_rate, f.same_rate_202_ms.p50, f.same_rate_202_ms.p99
    );
    md += &format!(
        "| after the opening: neighbours in arrival order whose places are swapped | {:.2} % |\n",
        f.places_out_of_order * 100.0
    );
    md += &format!(
        "| after the opening: rank correlation arrival ↔ place / arrival ↔ acceptance | {:.4} / {:.4} |\n",
        f.places_rank_correlation, f.accepted_rank_correlation
    );
    md += &format!(
        "| before the opening: rank correlation arrival ↔ place (a lottery: near 0) | {:.3} |\n",
        f.early_rank_correlation
    );
    if !f.limited_by.is_empty() {
        md += "\nSeconds the pace was below the cap, by what held it there:\n\n| held by | seconds |\n| --- | ---: |\n";
        for (why, n) in &f.limited_by {
            md += &format!("| {why} | {n} |\n");
        }
    }
    md += "\nAnswers by route and status:\n\n| route status | answers |\n| --- | ---: |\n";
    for (k, n) in &f.answers {
        md += &format!("| {k} | {n} |\n");
    }
    md += "\nThe edge's cost per request, closed loop (64 in flight), beside a bare ntex handler in the same run:\n\n| request | requests/s | CPU µs per request | ÷ bare |\n| --- | ---: | ---: | ---: |\n";
    let bare = f.cost.first().map_or(f64::NAN, |c| c.cpu_us);
    for c in &f.cost {
        md += &format!(
            "| {} | {:.0} | {:.1} | {:.2}× |\n",
            c.request,
            c.per_second,
            c.cpu_us,
            c.cpu_us / bare
        );
    }
    md
}
