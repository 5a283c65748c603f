//! The whole pipeline at a fixed arrival rate (open loop), with latency from each request's
//! *scheduled* send time to its answer and to its reservation decision.
//!
//! Open loop: request `i` is due at `start + i / rate` whatever happened to the earlier ones,
//! and its latency counts from that moment, so a slow answer cannot hold back the next
//! requests and hide its own cost (coordinated omission). A decision is observed when it is
//! *stored* in the decisions stream (an ordered consumer), not when a replica staged it.
//!
//! Also measured here, over the same interval: CPU seconds of every server process (the cost
//! line) and their resident memory over time (the memory targets).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use streams::events::{Envelope, Event};
use streams::model::SlotKey;
use streams::subjects::{self, RegionFilter};

use crate::contention::report::Percentiles;
use crate::procstat::{self, Usage, Watched};
use e2e::chaos::load;

/// One open-loop run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Its name in reports.
    pub name: String,
    /// Submissions per second.
    pub rate: u32,
    /// How long submissions arrive.
    pub seconds: f64,
    /// Citizen numbers start here (each run uses fresh citizens).
    pub first_citizen: u32,
    /// Requests the generator keeps open at most; beyond it a due request is counted as
    /// not sent (the generator, not the system, is then the limit, and the report says so).
    pub max_outstanding: usize,
    /// Reservation replicas to pause (SIGSTOP) while submissions arrive and resume after:
    /// the backlog run, which shows memory staying flat and how fast the backlog drains.
    pub pause: Vec<u32>,
    /// nats-server's monitoring port, for its message counters ([`crate::traffic`]).
    pub monitor_port: Option<u16>,
}

/// A latency histogram bucket: samples above the previous bound and at most `upper_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound, milliseconds.
    pub upper_ms: f64,
    /// Samples in the bucket.
    pub count: u64,
}

/// What happened in one second of a run (seconds since the first scheduled request).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start.
    pub second: u32,
    /// Requests due in this second.
    pub submitted: u64,
    /// `202`s received in this second.
    pub accepted: u64,
    /// Decisions stored in this second.
    pub decided: u64,
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Its name.
    pub name: String,
    /// Arrival rate asked for, per second.
    pub rate_per_second: u32,
    /// How long submissions arrived, seconds.
    pub seconds: f64,
    /// Requests due.
    pub submitted: u64,
    /// Requests the generator could not send (too many open; see [`Options`]).
    pub not_sent: u64,
    /// `202` answers.
    pub accepted: u64,
    /// Answers by status code.
    pub answers: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer.
    pub transport_errors: u64,
    /// Accepted registrations whose decision was observed.
    pub decided: u64,
    /// Accepted registrations with no decision by the end of the wait.
    pub undecided: u64,
    /// `202`s per second, from the first due request to the last `202` (later than the
    /// arrivals' end when the edge is overloaded and answers from a queue).
    pub accepted_per_second: f64,
    /// Decisions per second from the first to the last one observed.
    pub decided_per_second: f64,
    /// `202` → decision stored, milliseconds: how far the processors are behind the edge.
    /// When it stays small at a rate the edge cannot keep up with, the processors keep up
    /// with everything the edge accepts.
    pub accept_to_decision_ms: Percentiles,
    /// Seconds from the last decision until the projections (the status API) had applied
    /// the decisions stream up to it; `None` if they had not within 30 s.
    pub projected_after_seconds: Option<f64>,
    /// Scheduled send → `202`, milliseconds.
    pub latency_to_accept_ms: Percentiles,
    /// Scheduled send → decision stored, milliseconds.
    pub latency_to_decision_ms: Percentiles,
    /// The same, as a histogram.
    pub latency_histogram: Vec<Bucket>,
    /// Per-second counts.
    pub timeline: Vec<Second>,
    /// CPU and memory of every server process over the run (submission and drain).
    pub usage: Usage,
    /// Server CPU seconds per accepted registration (nats-server and every service).
    pub cpu_seconds_per_registration: f64,
    /// Server CPU microseconds per accepted registration, per process.
    pub cpu_us_per_registration: BTreeMap<String, f64>,
    /// CPU seconds of the benchmark's own process over the same interval: the load
    /// generator, its decision watcher and its projection checks, on the same cores.
    pub generator_cpu_seconds: f64,
    /// Wall seconds of the interval the CPU figures cover (arrivals and drain).
    pub watched_seconds: f64,
    /// Messages and bytes nats-server stored and moved per accepted registration.
    pub traffic: crate::traffic::Traffic,
    /// Seconds from the last scheduled request until every accepted registration was
    /// decided (the backlog's drain).
    pub drain_seconds: f64,
}

fn histogram(samples: &[Duration]) -> Vec<Bucket> {
    // Quarter-octave buckets from 0.25 ms to about a minute.
    let mut bounds: Vec<f64> = (0..72).map(|k| 0.25 * 2f64.powf(k as f64 / 4.0)).collect();
    bounds.push(f64::MAX);
    let mut counts = vec![0u64; bounds.len()];
    for s in samples {
        let ms = s.as_secs_f64() * 1000.0;
        let i = bounds.partition_point(|b| *b < ms);
        counts[i.min(bounds.len() - 1)] += 1;
    }
    bounds
        .into_iter()
        .zip(counts)
        .map(|(upper_ms, count)| Bucket { upper_ms, count })
        .collect()
}

/// The slot a citizen asks for: seven in ten on the two hot locations, the rest spread.
pub fn slot_of(citizen: u32, slots: &[SlotKey]) -> &SlotKey {
    let r = (u64::from(citizen).wrapping_mul(2_654_435_761) >> 7) % 100;
    if r < 70 || slots.len() <= 2 {
        &slots[(r as usize) % 2.min(slots.len())]
    } else {
        &slots[2 + (r as usize) % (slots.len() - 2)]
    }
}

/// What the open-loop generator ([`arrive`]) and a decision watcher note as a run goes.
#[derive(Default)]
pub(crate) struct Shared {
    /// Accepted registrations: when each was due and when its `202` arrived.
    pub(crate) scheduled: RefCell<HashMap<String, (Instant, Instant)>>,
    /// When each registration's first decision (reserved or rejected) was stored.
    pub(crate) decided: RefCell<HashMap<String, Instant>>,
    /// Scheduled send → `202`, each accepted request.
    pub(crate) accept_latency: RefCell<Vec<Duration>>,
    /// Answers by status code.
    pub(crate) answers: RefCell<BTreeMap<u16, u64>>,
    /// Requests that got no HTTP answer.
    pub(crate) transport_errors: Cell<u64>,
    /// Requests sent and not answered yet.
    pub(crate) outstanding: Cell<usize>,
    /// Messages and bytes the decision watcher received (taken off the server's counters).
    pub(crate) watched: Cell<(u64, u64)>,
}

/// When each request of a run is due: request `i` at `start + i * interval`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// When the first request is due.
    pub(crate) start: Instant,
    /// Between two due requests.
    interval: Duration,
    /// Requests due in all.
    pub(crate) total: u32,
}

impl Schedule {
    /// The schedule of `options`, starting shortly after now.
    pub(crate) fn of(options: &Options) -> Self {
        Schedule {
            start: Instant::now() + Duration::from_millis(50),
            interval: Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1))),
            total: (f64::from(options.rate) * options.seconds) as u32,
        }
    }

    /// When request `i` is due.
    pub(crate) fn due(&self, i: u32) -> Instant {
        self.start + self.interval * i
    }

    /// When the last request was due: the arrivals' end.
    pub(crate) fn end(&self) -> Instant {
        self.due(self.total)
    }
}

/// Sends `signal` (as `kill` spells it: `-STOP`, `-CONT`) to each of `pids`.
pub fn signal(pids: &[u32], signal: &str) {
    for pid in pids {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
}

/// The decisions stream's last sequence.
pub(crate) async fn decisions_end(js: &async_nats::jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(subjects::DECISIONS_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence)
}

/// When the projections behind `read_url` have applied the decisions stream up to its
/// current end (polled on their `/metrics`); `None` if not within 30 s.
async fn projected(
    js: &async_nats::jetstream::Context,
    http: &ntex::client::Client,
    read_url: &str,
) -> anyhow::Result<Option<Instant>> {
    let end = decisions_end(js).await?;
    let gauge = format!(
        "projection_checkpoint{{stream=\"{}\"}}",
        subjects::DECISIONS_STREAM
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let metrics = e2e::chaos::services::scrape(http, read_url).await;
        if metrics.get(&gauge).is_some_and(|&seq| seq >= end) {
            return Ok(Some(Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(None)
}

/// Runs one open-loop load against `ingest_url`, observing decisions through `nats_url` and
/// the projections through `read_url`.
pub async fn run(
    ingest_url: &str,
    read_url: &str,
    nats_url: &str,
    watched: &[Watched],
    slots: &[SlotKey],
    options: &Options,
) -> anyhow::Result<Run> {
    let client = async_nats::connect(nats_url)
        .await
        .context("Failed to connect to nats-server")?;
    let js = async_nats::jetstream::new(client);
    let traffic_mark = crate::traffic::mark(&js, options.monitor_port).await?;
    let shared = Rc::new(Shared::default());
    let watcher = watch_decisions(&js, shared.clone()).await?;
    let http = load::http_client(options.max_outstanding.min(512)).await?;

    let load = async {
        signal(&options.pause, "-STOP");
        let schedule = Schedule::of(options);
        let not_sent = arrive(&http, ingest_url, slots, options, schedule, &shared).await;
        signal(&options.pause, "-CONT");
        drain(&shared, &options.name).await;
        (schedule, not_sent)
    };
    let generator_before = procstat::sample(std::process::id()).unwrap_or_default();
    let watch_start = Instant::now();
    let ((schedule, not_sent), usage) =
        procstat::watch(watched, Duration::from_millis(250), load).await;
    let watched_seconds = watch_start.elapsed().as_secs_f64();
    let generator_cpu_seconds = procstat::sample(std::process::id())
        .unwrap_or_default()
        .cpu_seconds
        - generator_before.cpu_seconds;
    let projected = projected(&js, &http, read_url).await?;
    watcher.stop().await;

    let accepted = shared.scheduled.borrow().len() as u64;
    let traffic = crate::traffic::since(
        &js,
        options.monitor_port,
        &traffic_mark,
        accepted,
        shared.watched.get(),
    )
    .await?;
    let run = figures(
        options,
        schedule,
        not_sent,
        &shared,
        Measured {
            projected,
            usage,
            generator_cpu_seconds,
            watched_seconds,
            traffic,
        },
    );
    eprintln!(
        "pipeline: {}: {} accepted/s, to decision p50 {:.1} ms p99 {:.1} ms, {} undecided, {:.2} ms CPU per registration",
        run.name,
        run.accepted_per_second as u64,
        run.latency_to_decision_ms.p50,
        run.latency_to_decision_ms.p99,
        run.undecided,
        run.cpu_seconds_per_registration * 1000.0
    );
    Ok(run)
}

/// An ordered consumer of the decisions stream (the subjects `filter` matches) from its
/// current end, handing each stored message to a callback with the moment it arrived, until
/// stopped: how the benchmarks see decisions when they are stored.
pub struct Watcher {
    stop: tokio_util::sync::CancellationToken,
    task: ntex::rt::JoinHandle<()>,
}

impl Watcher {
    /// Starts watching; `each` gets every message from now on.
    pub async fn start(
        js: &async_nats::jetstream::Context,
        filter: String,
        mut each: impl FnMut(&async_nats::jetstream::Message, Instant) + 'static,
    ) -> anyhow::Result<Watcher> {
        let last = decisions_end(js).await?;
        let (mut decisions, _) =
            streams::replay::ordered(js, subjects::DECISIONS_STREAM, filter, last + 1).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = ntex::rt::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stopped.cancelled() => return,
                    next = decisions.next() => match next {
                        Some(Ok(message)) => message,
                        _ => return,
                    },
                };
                each(&message, Instant::now());
            }
        });
        Ok(Watcher { stop, task })
    }

    /// Stops watching.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Watches the reservation decisions, noting when each registration's first decision
/// (reserved or rejected) was stored.
async fn watch_decisions(
    js: &async_nats::jetstream::Context,
    shared: Rc<Shared>,
) -> anyhow::Result<Watcher> {
    Watcher::start(
        js,
        subjects::reservation_decisions_filter(&RegionFilter::All),
        move |message, now| {
            let (n, bytes) = shared.watched.get();
            shared.watched.set((n + 1, bytes + message.length as u64));
            let id = match Envelope::decode(&message.payload).map(|e| e.event) {
                Ok(Event::SlotReserved(e)) => e.registration_id,
                Ok(Event::SlotRejected(e)) => e.registration_id,
                _ => return,
            };
            shared.decided.borrow_mut().insert(id.to_string(), now);
        },
    )
    .await
}

/// The open loop: sends each request when it is due, whatever happened to the earlier ones
/// (counting it as not sent while `max_outstanding` are open), then waits for every answer.
/// Returns how many were not sent.
pub(crate) async fn arrive(
    http: &ntex::client::Client,
    ingest_url: &str,
    slots: &[SlotKey],
    options: &Options,
    schedule: Schedule,
    shared: &Rc<Shared>,
) -> u64 {
    let url: Rc<str> = format!("{ingest_url}/v1/registrations").into();
    let total = schedule.total;
    let mut not_sent = 0u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let mut i = 0u32;
    let mut shown = Instant::now();
    while i < total {
        ticker.tick().await;
        let due = ((Instant::now().saturating_duration_since(schedule.start)).as_secs_f64()
            * f64::from(options.rate)) as u32;
        while i < due.min(total) {
            let scheduled = schedule.due(i);
            let citizen = options.first_citizen + i;
            i += 1;
            if shared.outstanding.get() >= options.max_outstanding {
                not_sent += 1;
                continue;
            }
            shared.outstanding.set(shared.outstanding.get() + 1);
            let body = load::registration(citizen, slot_of(citizen, slots));
            tasks.push(ntex::rt::spawn(submit(
                http.clone(),
                url.clone(),
                body,
                scheduled,
                shared.clone(),
            )));
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            eprintln!(
                "pipeline: {}: {i} of {total} due, {} open, {} accepted, {} decided",
                options.name,
                shared.outstanding.get(),
                shared.scheduled.borrow().len(),
                shared.decided.borrow().len()
            );
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    not_sent
}

/// Sends one submission due at `scheduled` and notes its answer.
async fn submit(
    http: ntex::client::Client,
    url: Rc<str>,
    body: serde_json::Value,
    scheduled: Instant,
    shared: Rc<Shared>,
) {
    let response = http
        .post(&*url)
        .timeout(Duration::from_secs(60))
        .send_json(&body)
        .await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            *shared.answers.borrow_mut().entry(status).or_default() += 1;
            let body = response.body().limit(1 << 16).await.unwrap_or_default();
            if status == 202 {
                shared.accept_latency.borrow_mut().push(scheduled.elapsed());
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(id) = v["registration_id"].as_str()
                {
                    shared
                        .scheduled
                        .borrow_mut()
                        .insert(id.to_owned(), (scheduled, Instant::now()));
                }
            }
        }
        Err(_) => shared
            .transport_errors
            .set(shared.transport_errors.get() + 1),
    }
    shared.outstanding.set(shared.outstanding.get() - 1);
}

/// Waits until every accepted registration is decided, or no decision came for 30 s.
async fn drain(shared: &Shared, name: &str) {
    let mut progress = (0usize, Instant::now());
    let mut shown = Instant::now();
    loop {
        let (accepted, decided) = {
            let scheduled = shared.scheduled.borrow();
            let decided = shared.decided.borrow();
            let done = scheduled
                .keys()
                .filter(|id| decided.contains_key(*id))
                .count();
            (scheduled.len(), done)
        };
        if decided == accepted || progress.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        if decided != progress.0 {
            progress = (decided, Instant::now());
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            eprintln!("pipeline: {name}: draining, {decided} of {accepted} decided");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What was measured beside the requests and decisions: the projections' catch-up, the
/// processes' CPU and memory, and nats-server's traffic.
struct Measured {
    projected: Option<Instant>,
    usage: Usage,
    generator_cpu_seconds: f64,
    watched_seconds: f64,
    traffic: crate::traffic::Traffic,
}

/// Each accepted registration's latencies and the per-second counts, from when each request
/// was due, answered and decided.
struct Latencies {
    to_decision: Vec<Duration>,
    behind_edge: Vec<Duration>,
    timeline: Vec<Second>,
    first_decision: Option<Instant>,
    last_decision: Option<Instant>,
    last_accept: Instant,
}

impl Latencies {
    fn of(
        schedule: Schedule,
        seconds: f64,
        scheduled: &HashMap<String, (Instant, Instant)>,
        decided: &HashMap<String, Instant>,
    ) -> Self {
        let seconds_of =
            |t: Instant| t.saturating_duration_since(schedule.start).as_secs() as usize;
        let mut timeline: Vec<Second> = Vec::new();
        let mut bump = |t: Instant, f: fn(&mut Second)| {
            let s = seconds_of(t);
            while timeline.len() <= s {
                let second = timeline.len() as u32;
                timeline.push(Second {
                    second,
                    ..Second::default()
                });
            }
            f(&mut timeline[s]);
        };
        for i in 0..schedule.total {
            bump(schedule.due(i), |s| s.submitted += 1);
        }
        let mut to_decision = Vec::with_capacity(scheduled.len());
        let mut behind_edge = Vec::with_capacity(scheduled.len());
        let (mut first_decision, mut last_decision) = (None::<Instant>, None::<Instant>);
        let mut last_accept = schedule.start + Duration::from_secs_f64(seconds);
        for (id, (at, answered)) in scheduled {
            bump(*answered, |s| s.accepted += 1);
            last_accept = last_accept.max(*answered);
            if let Some(done) = decided.get(id) {
                to_decision.push(done.saturating_duration_since(*at));
                behind_edge.push(done.saturating_duration_since(*answered));
                bump(*done, |s| s.decided += 1);
                first_decision = Some(first_decision.map_or(*done, |f| f.min(*done)));
                last_decision = Some(last_decision.map_or(*done, |l| l.max(*done)));
            }
        }
        Latencies {
            to_decision,
            behind_edge,
            timeline,
            first_decision,
            last_decision,
            last_accept,
        }
    }
}

/// The figures of one run, from what its requests, its decision watcher and the process
/// watcher observed.
fn figures(
    options: &Options,
    schedule: Schedule,
    not_sent: u64,
    shared: &Shared,
    measured: Measured,
) -> Run {
    let Measured {
        projected,
        usage,
        generator_cpu_seconds,
        watched_seconds,
        traffic,
    } = measured;
    let scheduled = shared.scheduled.take();
    let latencies = Latencies::of(
        schedule,
        options.seconds,
        &scheduled,
        &shared.decided.take(),
    );
    let (first_decision, last_decision) = (latencies.first_decision, latencies.last_decision);
    let accepted = scheduled.len() as u64;
    let cpu_us_per_registration = usage
        .cpu_seconds
        .iter()
        .map(|(name, s)| (name.clone(), s * 1e6 / accepted.max(1) as f64))
        .collect();
    let decided_count = latencies.to_decision.len() as u64;
    Run {
        name: options.name.clone(),
        rate_per_second: options.rate,
        seconds: options.seconds,
        submitted: u64::from(schedule.total),
        not_sent,
        accepted,
        answers: shared.answers.take(),
        transport_errors: shared.transport_errors.get(),
        decided: decided_count,
        undecided: accepted - decided_count,
        accepted_per_second: accepted as f64
            / latencies
                .last_accept
                .saturating_duration_since(schedule.start)
                .as_secs_f64(),
        decided_per_second: match (first_decision, last_decision) {
            (Some(f), Some(l)) if l > f => decided_count as f64 / (l - f).as_secs_f64(),
            _ => 0.0,
        },
        latency_to_accept_ms: Percentiles::of(shared.accept_latency.take()),
        latency_histogram: histogram(&latencies.to_decision),
        latency_to_decision_ms: Percentiles::of(latencies.to_decision),
        accept_to_decision_ms: Percentiles::of(latencies.behind_edge),
        projected_after_seconds: projected
            .and_then(|p| last_decision.map(|l| p.saturating_duration_since(l).as_secs_f64())),
        timeline: latencies.timeline,
        cpu_seconds_per_registration: usage.total_cpu_seconds() / accepted.max(1) as f64,
        cpu_us_per_registration,
        generator_cpu_seconds,
        watched_seconds,
        traffic,
        usage,
        drain_seconds: last_decision.map_or(0.0, |l| {
            l.saturating_duration_since(schedule.end()).as_secs_f64()
        }),
    }
}

/// The slots every pipeline run spreads its citizens over ([`slot_of`]): two hot locations
/// and ten others, one region, one date.
pub fn slots() -> Vec<SlotKey> {
    // Ahead of today wherever the region is: a slot whose day is over takes no registration.
    let date = streams::calendar::Calendar::default().days_ahead(&e2e::chaos::region(), 60);
    ["hot-narodowy", "hot-torwar"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..10).map(|i| format!("site-{i:02}")))
        .map(|location| SlotKey {
            region: e2e::chaos::region(),
            location: streams::model::Location::parse(&location).expect("a valid location"),
            date,
        })
        .collect()
}

/// The measured system (nats-server with its monitoring port, [`crate::system`]) with
/// [`slots`] open, and what every open-loop run on it watches.
pub struct Rig {
    /// nats-server, `sync_interval: always`.
    pub nats: testkit::NatsServer,
    /// The services.
    pub system: e2e::chaos::services::System,
    /// The slots, each with a capacity no run fills.
    pub slots: Vec<SlotKey>,
    /// nats-server and every service, for CPU and memory.
    pub watched: Vec<Watched>,
    /// nats-server's monitoring port ([`crate::traffic`]).
    pub monitor_port: u16,
}

impl Rig {
    /// Starts nats-server and the system, logs under `log_dir`, and opens the slots.
    pub async fn start(log_dir: &std::path::Path) -> anyhow::Result<Rig> {
        let monitor_port = e2e::chaos::services::free_port()?;
        let nats =
            testkit::NatsServer::start_beside_services(&format!("http: 127.0.0.1:{monitor_port}"));
        let system = crate::system(&nats.url(), log_dir).await?;
        let slots = slots();
        let admin = load::Client::new(&system, 1).await;
        for slot in &slots {
            admin.set_capacity(slot, 1_000_000).await?;
        }
        let mut watched = vec![Watched {
            name: "nats-server".into(),
            pid: nats.pid().context("nats-server is running")?,
        }];
        watched.extend(system.processes().map(|p| Watched {
            name: p.name().to_owned(),
            pid: p.pid(),
        }));
        Ok(Rig {
            nats,
            system,
            slots,
            watched,
            monitor_port,
        })
    }

    /// The reservation replicas' process ids (to pause for a backlog).
    pub fn replicas(&self) -> Vec<u32> {
        self.system
            .processes()
            .filter(|p| p.name().starts_with("reservation"))
            .map(|p| p.pid())
            .collect()
    }

    /// One open-loop run; `series` keeps each run's citizens fresh (use each once).
    pub async fn open_loop(
        &mut self,
        series: u32,
        name: String,
        rate: u32,
        seconds: f64,
        pause: Vec<u32>,
    ) -> anyhow::Result<Run> {
        let run = run(
            self.system.ingest_url(),
            self.system.read_url(),
            &self.nats.url(),
            &self.watched,
            &self.slots,
            &Options {
                name,
                rate,
                seconds,
                first_citizen: 1_000_000 * series,
                max_outstanding: 20_000,
                pause,
                monitor_port: Some(self.monitor_port),
            },
        )
        .await?;
        self.system.check_alive()?;
        Ok(run)
    }

    /// Stops the services and removes the projections' store; nats-server, with the log the
    /// runs left, stays up for whoever reads it next.
    pub async fn stop(self, log_dir: &std::path::Path) -> testkit::NatsServer {
        self.system.stop().await;
        crate::remove_store(log_dir);
        self.nats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_keeps_every_sample_in_ascending_buckets() {
        let samples: Vec<Duration> = [0.1, 0.3, 1.0, 1.0, 49.0, 51.0, 5_000.0, 1e9]
            .iter()
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
            .collect();
        let buckets = histogram(&samples);
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 8);
        assert!(buckets.windows(2).all(|w| w[0].upper_ms < w[1].upper_ms));
        let at_most = |ms: f64| {
            buckets
                .iter()
                .filter(|b| b.upper_ms <= ms)
                .map(|b| b.count)
                .sum::<u64>()
        };
        assert_eq!(at_most(0.25), 1);
        // Quarter-octave buckets: 49 and 51 ms share the one ending near 53.8 ms.
        assert_eq!(at_most(45.0), 4);
        assert_eq!(at_most(54.0), 6);
        assert_eq!(
            at_most(1e12),
            7,
            "only the last, open bucket holds the outlier"
        );
    }

    #[test]
    fn seven_in_ten_citizens_chase_the_two_hot_slots() {
        let date = chrono::NaiveDate::from_ymd_opt(2027, 3, 1).unwrap();
        let slots: Vec<SlotKey> = (0..12)
            .map(|i| SlotKey {
                region: e2e::chaos::region(),
                location: streams::model::Location::parse(&format!("loc-{i}")).unwrap(),
                date,
            })
            .collect();
        let hot = (0..10_000)
            .filter(|c| {
                let s = slot_of(*c, &slots);
                *s == slots[0] || *s == slots[1]
            })
            .count();
        assert!((6_500..7_500).contains(&hot), "{hot}");
    }
}
