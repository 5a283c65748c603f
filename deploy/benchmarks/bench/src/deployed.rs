//! The system exactly as `deploy/up` starts it, measured (`bench deployed`): nats-server with
//! per-service identities, the processors binary with verification and notifications on,
//! the projections, the edge, and the stand-ins deploy/up starts beside them (the registry
//! simulator, the mail and text receivers).
//!
//! The benchmark starts `deploy/up --data-dir <tmp> --no-seed` on free ports with every edge
//! and provider rate limit off ([`settings`]), opens slots through the admin API, and
//! measures, each figure until every stage has caught up (every accepted registration
//! confirmed or rejected, every message it is owed recorded as sent, the projections at the
//! decisions stream's end):
//! - open-loop steps at increasing rates ([`Options::rates`]), the sustained rate being the
//!   highest at which every stage keeps up ([`keeps_up`]);
//! - one closed-loop wrk run;
//! - per accepted registration: CPU by process from `/proc` (the stand-ins in their own
//!   columns, out of the system's total; the benchmark's own apart), messages stored by kind,
//!   nats-server's messages in and out;
//! - latency from each `202` to the stored reservation, confirmation and first message.
//!
//! Then `deploy/up` is stopped (SIGTERM, which stops its children), also when a measurement
//! fails or the run is interrupted.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use streams::events::{Envelope, Event, SlotRejected, SlotReserved};
use streams::model::SlotKey;
use streams::subjects::{self, IntakeKind, RegionFilter};

use crate::ceilings::Ceiling;
use crate::contention::report::Percentiles;
use crate::edge::EdgeFigure;
use crate::pipeline::{self, Schedule, Shared};
use crate::procstat::{self, Watched};

/// The open-loop rates `bench deployed` tries by default (also `bench all --deployed-rates`).
pub const RATES: &str = "200,400,800,1200,1600,2400,3200";

/// What `bench deployed` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Open-loop arrival rates tried in order, per second, until one does not keep up (then
    /// up to two rates between the last kept and the first failed).
    #[arg(long, value_delimiter = ',', default_value = RATES)]
    pub rates: Vec<u32>,
    /// Seconds of arrivals in each open-loop step.
    #[arg(long, default_value_t = 15.0)]
    pub step_seconds: f64,
    /// Seconds of the closed-loop wrk run (0: none).
    #[arg(long, default_value_t = 15)]
    pub wrk_seconds: u32,
    /// Connections of the closed-loop wrk run.
    #[arg(long, default_value_t = 64)]
    pub wrk_connections: usize,
    /// Seconds of each edge-against-bare-handler wrk run (the ceiling beside the figures).
    #[arg(long, default_value_t = 10)]
    pub edge_seconds: u32,
    /// Multiplies the record counts of the quick durable write ceilings.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/deployed.json")]
    pub out: PathBuf,
}

/// The latency bound of a step that keeps up: p99 of `202` → the citizen's first message.
pub const FIRST_MESSAGE_P99_MS: f64 = 5_000.0;
/// How long after the last arrival nothing may still be pending in a step that keeps up.
pub const PENDING_AFTER: Duration = Duration::from_secs(5);
/// How long the catch-up may go without progress before the benchmark stops waiting.
const STALL: Duration = Duration::from_secs(60);

/// The processes deploy/up starts that stand in for the outside world: measured, but not
/// part of the system's cost.
pub const STAND_INS: [&str; 2] = ["registry-sim", "receivers"];
/// Every process deploy/up starts on one node (its `pids/<name>.pid` files).
pub const PROCESSES: [&str; 6] = [
    "nats-server",
    "processors",
    "projections",
    "ingest",
    "registry-sim",
    "receivers",
];

/// The settings the measured system runs with beyond deploy/up's defaults, as given to it:
/// every edge limit off, every provider's rate limit off, no failure injected into the
/// stand-ins, and the mail sink appending to one mbox rather than writing a file per message
/// (`REG_MAIL_STORE=mbox`: a stand-in's storage, which would otherwise cost more CPU than
/// the system; docs/notifications-receivers.md). The identities, fsync always, the group
/// commit and the edge's bound on open submissions (`REG_MAX_OPEN_SUBMISSIONS`) stay as
/// deployed.
pub fn settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("REG_RATE_PER_ADDRESS", "0"),
        ("REG_RATE_PER_CITIZEN", "0"),
        // Every simulated citizen of the waiting-room benchmark comes from this machine.
        ("REG_TICKETS_PER_ADDRESS_PER_MINUTE", "0"),
        ("REG_MAIL_RATE", "0"),
        ("REG_WEBHOOK_RATE", "0"),
        ("REG_REGISTRY_RATE", "0"),
        ("REG_MAIL_STORE", "mbox"),
        (
            "REG_REGISTRY_KNOBS",
            r#"{"error_rate":0.0,"spike_rate":0.0,"rate_limit_per_s":0,"outage":false,"hostile_rate":0.0}"#,
        ),
        (
            "REG_RECEIVERS_KNOBS",
            r#"{"smtp_fail_rate":0.0,"webhook_fail_rate":0.0}"#,
        ),
    ]
}

/// The system deploy/up started, stopped (SIGTERM to deploy/up) when dropped.
pub struct Deployment {
    up: std::process::Child,
    /// deploy/up's data directory.
    pub data_dir: PathBuf,
    /// The edge, `http://…`.
    pub ingest_url: String,
    /// The read API, `http://…`.
    pub read_url: String,
    /// The registry simulator, `http://…`.
    pub registry_url: String,
    /// The receivers' webhook side, `http://…`.
    pub webhook_url: String,
    /// nats-server's client URL.
    pub nats_url: String,
    /// nats-server's monitoring port.
    pub monitor_port: u16,
    /// Every process deploy/up started.
    pub watched: Vec<Watched>,
    stopped: bool,
}

/// The repository's root (where `deploy/up` is), from this crate's place in it.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

impl Deployment {
    /// Starts `deploy/up --data-dir <log_dir>/system --no-seed` on free ports with
    /// [`settings`], its output in `<log_dir>/deploy-up.log`, and waits until every service
    /// answers `/readyz` and every process's pid file is written.
    pub async fn start(log_dir: &Path) -> anyhow::Result<Deployment> {
        let data_dir = log_dir.join("system");
        std::fs::create_dir_all(&data_dir)?;
        let port = e2e::chaos::services::free_port;
        let [
            ingest,
            read,
            processors,
            nats,
            monitor,
            registry,
            smtp,
            webhook,
        ] = [
            port()?,
            port()?,
            port()?,
            port()?,
            port()?,
            port()?,
            port()?,
            port()?,
        ];
        let listen = |p: u16| format!("127.0.0.1:{p}");
        let up = |build_only: bool| {
            let mut command = std::process::Command::new(repository().join("deploy/up"));
            command
                .args(["--data-dir", &data_dir.display().to_string(), "--no-seed"])
                .stdin(std::process::Stdio::null());
            // Only what is set here: a REG_* setting of the caller's shell would measure
            // something else.
            for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("REG_")) {
                command.env_remove(name);
            }
            if build_only {
                command.env("REG_BUILD_ONLY", "1");
            }
            command
        };
        // deploy/up's own build first, its progress on stderr, so that the system's start
        // below compiles nothing.
        eprintln!("deployed: building the system as deploy/up does (release) ...");
        let built = up(true)
            .stdout(std::process::Stdio::null())
            .status()
            .context("Failed to run deploy/up")?;
        anyhow::ensure!(built.success(), "deploy/up's build failed ({built})");
        let log = std::fs::File::create(log_dir.join("deploy-up.log"))?;
        let mut command = up(false);
        command.stdout(log.try_clone()?).stderr(log);
        command
            .env("REG_INGEST_LISTEN", listen(ingest))
            .env("REG_READ_LISTEN", listen(read))
            .env("REG_PROCESSOR_LISTEN", listen(processors))
            .env("REG_NATS_PORT", nats.to_string())
            .env("REG_NATS_MONITOR_PORT", monitor.to_string())
            .env("REG_REGISTRY_LISTEN", listen(registry))
            .env("REG_SMTP_LISTEN", listen(smtp))
            .env("REG_WEBHOOK_LISTEN", listen(webhook))
            .envs(settings());
        let up = command.spawn().context("Failed to start deploy/up")?;
        eprintln!(
            "deployed: deploy/up started (pid {}), data and logs in {}",
            up.id(),
            data_dir.display()
        );
        let mut deployment = Deployment {
            up,
            data_dir,
            ingest_url: format!("http://{}", listen(ingest)),
            read_url: format!("http://{}", listen(read)),
            registry_url: format!("http://{}", listen(registry)),
            webhook_url: format!("http://{}", listen(webhook)),
            nats_url: format!("nats://{}", listen(nats)),
            monitor_port: monitor,
            watched: Vec::new(),
            stopped: false,
        };
        deployment.wait_ready(processors).await?;
        Ok(deployment)
    }

    async fn wait_ready(&mut self, processors: u16) -> anyhow::Result<()> {
        let http = e2e::chaos::load::http_client(8).await?;
        let urls = [
            format!("{}/readyz", self.ingest_url),
            format!("{}/readyz", self.read_url),
            format!("http://127.0.0.1:{processors}/readyz"),
        ];
        // deploy/up builds first: nothing left to compile after the build above.
        let deadline = Instant::now() + Duration::from_secs(5 * 60);
        loop {
            if let Some(status) = self.up.try_wait()? {
                anyhow::bail!(
                    "deploy/up exited ({status}) before the system was ready; see {}",
                    self.data_dir.with_file_name("deploy-up.log").display()
                );
            }
            let mut ready = true;
            for url in &urls {
                let answer = http.get(url).timeout(Duration::from_secs(2)).send().await;
                ready &= answer.is_ok_and(|r| r.status().is_success());
            }
            if ready && let Some(watched) = self.pids() {
                self.watched = watched;
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the system deploy/up started was not ready within 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every process's id from deploy/up's `pids/` directory, once all are written.
    fn pids(&self) -> Option<Vec<Watched>> {
        PROCESSES
            .iter()
            .map(|name| {
                let file = self.data_dir.join("pids").join(format!("{name}.pid"));
                let pid = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
                Some(Watched {
                    name: (*name).to_owned(),
                    pid,
                })
            })
            .collect()
    }

    /// A NATS connection as the analysts' identity deploy/up generated (it may read both
    /// streams, create consumers on them and look them up; it publishes nothing).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let file = self.data_dir.join("nats-accounts/analyst.env");
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("Failed to read {}", file.display()))?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_owned())
                .with_context(|| format!("{key} missing from {}", file.display()))
        };
        let mut options = streams::runtime::NatsOptions::new(&self.nats_url, "bench-deployed");
        options.credentials = Some((value("REG_NATS_USER")?, value("REG_NATS_PASSWORD")?));
        options.manage_streams = false;
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            streams::runtime::connect(&options, &shutdown),
        )
        .await
        .context("nats-server did not answer within 30 s")?
    }

    /// Whether every process deploy/up started still runs.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.up.try_wait()? {
            anyhow::bail!("deploy/up exited ({status}): a service died; see its logs");
        }
        for w in &self.watched {
            anyhow::ensure!(
                procstat::sample(w.pid).is_some(),
                "{} (pid {}) is gone; see {}",
                w.name,
                w.pid,
                self.data_dir.join("logs").display()
            );
        }
        Ok(())
    }

    /// Stops the system: SIGTERM to deploy/up, which stops every service it started, then
    /// waits for it (a minute at most, then SIGKILL to every process left). Removes the
    /// store and the log's data, keeps the logs.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        pipeline::signal(&[self.up.id()], "-TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.up.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.up.try_wait(), Ok(Some(_))) {
            eprintln!("deployed: deploy/up did not stop within a minute; killing what is left");
            let left: Vec<u32> = self.watched.iter().map(|w| w.pid).collect();
            pipeline::signal(&left, "-KILL");
            let _ = self.up.kill();
            let _ = self.up.wait();
        }
        for data in ["surreal", "jetstream", "receivers"] {
            let _ = std::fs::remove_dir_all(self.data_dir.join(data));
        }
        eprintln!("deployed: deploy/up stopped");
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Where a registration's way through the system stands, from the decisions stream.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// When its slot was reserved (stored).
    pub reserved: Option<Instant>,
    /// When its confirmation was stored.
    pub confirmed: Option<Instant>,
    /// How it ended and when: confirmed, rejected, cancelled or sent to manual review.
    pub ended: Option<(Outcome, Instant)>,
    /// When its first message was recorded as sent.
    pub first_message: Option<Instant>,
    /// Decisions the citizen is told of ([`processors::notification::decide::notice`]).
    pub notices: u32,
    /// Messages recorded as sent.
    pub sent: u32,
    /// Messages recorded as given up on (dead letters).
    pub failed: u32,
}

/// How a registration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Reserved, verified and confirmed.
    Confirmed,
    /// Refused a slot.
    Rejected,
    /// Cancelled (by the citizen, or by a failed verification).
    Cancelled,
    /// Waiting for an operator (the registry could not answer for the citizen).
    ManualReview,
}

/// What one stored decision means for its registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// A decision the citizen is told of, with what it does to the registration.
    Notice(Option<Reached>),
    /// A message recorded as sent.
    Sent,
    /// A message given up on.
    Failed,
}

/// A step of a registration's way that a notice marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Its slot reserved.
    Reserved,
    /// Its end.
    Ended(Outcome),
}

/// The registration a decision is about and what it means for it; `None` for decisions no
/// citizen is told of and that end nothing (a release, a requeued verification).
pub fn milestone(event: &Event) -> Option<(String, Milestone)> {
    let reached = match event {
        Event::NotificationSent(e) => {
            return Some((e.registration_id.to_string(), Milestone::Sent));
        }
        Event::NotificationFailed(e) => {
            return Some((e.registration_id.to_string(), Milestone::Failed));
        }
        Event::SlotReserved(_) | Event::WaitlistPromoted(_) => Some(Reached::Reserved),
        Event::RegistrationConfirmed(_) => Some(Reached::Ended(Outcome::Confirmed)),
        Event::SlotRejected(_) => Some(Reached::Ended(Outcome::Rejected)),
        Event::RegistrationCancelled(_) => Some(Reached::Ended(Outcome::Cancelled)),
        Event::ReviewRequired(_) => Some(Reached::Ended(Outcome::ManualReview)),
        _ => None,
    };
    let notice = processors::notification::decide::notice(event)?;
    Some((
        notice.registration_id.to_string(),
        Milestone::Notice(reached),
    ))
}

impl Progress {
    /// Notes `milestone`, stored at `at`.
    pub fn apply(&mut self, milestone: Milestone, at: Instant) {
        match milestone {
            Milestone::Notice(reached) => {
                self.notices += 1;
                match reached {
                    Some(Reached::Reserved) => {
                        self.reserved.get_or_insert(at);
                    }
                    Some(Reached::Ended(outcome)) => {
                        if outcome == Outcome::Confirmed {
                            self.confirmed.get_or_insert(at);
                        }
                        self.ended = Some((outcome, at));
                    }
                    None => {}
                }
            }
            Milestone::Sent => {
                self.sent += 1;
                self.first_message.get_or_insert(at);
            }
            Milestone::Failed => self.failed += 1,
        }
    }

    /// Whether every stage is done with it: it ended, and every message it is owed
    /// (`channels` per notice) is recorded, sent or given up on.
    pub fn done(&self, channels: u32) -> bool {
        self.ended.is_some() && self.sent + self.failed >= self.notices * channels
    }
}

/// Messages per decision the benchmark's registrations are owed: each gives an e-mail
/// address and a phone number.
pub const CHANNELS: u32 = 2;

/// What the decisions watcher saw in one measurement.
#[derive(Default)]
struct Seen {
    progress: RefCell<HashMap<String, Progress>>,
    /// Decisions stored, by event type.
    by_type: RefCell<BTreeMap<String, u64>>,
}

/// Watches the whole decisions stream, noting each registration's [`Progress`] and, in
/// `shared`, its first decision (the generator's progress lines).
async fn watch(
    js: &async_nats::jetstream::Context,
    seen: Rc<Seen>,
    shared: Rc<Shared>,
) -> anyhow::Result<pipeline::Watcher> {
    pipeline::Watcher::start(
        js,
        subjects::decisions_filter(&RegionFilter::All),
        move |message, now| {
            let (n, bytes) = shared.watched.get();
            shared.watched.set((n + 1, bytes + message.length as u64));
            // A message is one record, or a pack of notification records (`streams::pack`).
            let Ok(envelopes) = Envelope::decode_all(&message.payload) else {
                *seen
                    .by_type
                    .borrow_mut()
                    .entry("undecodable".into())
                    .or_default() += 1;
                return;
            };
            for event in envelopes.into_iter().map(|e| e.event) {
                *seen
                    .by_type
                    .borrow_mut()
                    .entry(event.event_type().to_owned())
                    .or_default() += 1;
                if let Event::SlotReserved(SlotReserved {
                    registration_id, ..
                })
                | Event::SlotRejected(SlotRejected {
                    registration_id, ..
                }) = &event
                {
                    shared
                        .decided
                        .borrow_mut()
                        .entry(registration_id.to_string())
                        .or_insert(now);
                }
                if let Some((id, milestone)) = milestone(&event) {
                    seen.progress
                        .borrow_mut()
                        .entry(id)
                        .or_default()
                        .apply(milestone, now);
                }
            }
        },
    )
    .await
}

/// CPU per accepted registration over a measurement (arrivals and catch-up).
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    /// Microseconds by process (system and stand-ins).
    pub cpu_us_per_registration: BTreeMap<String, f64>,
    /// The system's processes together (nats-server, processors, projections, edge).
    pub system_us: f64,
    /// The stand-ins together (registry simulator, receivers).
    pub stand_ins_us: f64,
    /// The benchmark's own process and its children (the load generator or wrk, the
    /// decisions watcher, the catch-up checks), on the same cores.
    pub benchmark_us: f64,
    /// Wall seconds the figures cover.
    pub watched_seconds: f64,
    /// Cores busy on average over them, every process counted (the benchmark too).
    pub cores_busy: f64,
    /// Highest resident memory by process, MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
}

impl Cost {
    fn of(usage: &procstat::Usage, benchmark_seconds: f64, watched: f64, accepted: u64) -> Cost {
        let per = |s: f64| s * 1e6 / accepted.max(1) as f64;
        let cpu: BTreeMap<String, f64> = usage
            .cpu_seconds
            .iter()
            .map(|(n, s)| (n.clone(), per(*s)))
            .collect();
        let stand_ins = cpu
            .iter()
            .filter(|(n, _)| STAND_INS.contains(&n.as_str()))
            .map(|(_, us)| us)
            .sum();
        let system = cpu
            .iter()
            .filter(|(n, _)| !STAND_INS.contains(&n.as_str()))
            .map(|(_, us)| us)
            .sum();
        Cost {
            cpu_us_per_registration: cpu,
            system_us: system,
            stand_ins_us: stand_ins,
            benchmark_us: per(benchmark_seconds),
            watched_seconds: watched,
            cores_busy: (usage.total_cpu_seconds() + benchmark_seconds) / watched.max(1e-9),
            peak_rss_mib: usage.peak_rss_mib.clone(),
        }
    }
}

/// Messages stored per accepted registration, by kind, and nats-server's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Messages {
    /// Per accepted registration: messages by kind (subject), both streams, and the
    /// decisions' records by event type.
    pub stored_per_registration: BTreeMap<String, f64>,
    /// Every message stored, both streams, per accepted registration.
    pub total_per_registration: f64,
    /// Decisions stored by event type (counts).
    pub decisions_by_type: BTreeMap<String, u64>,
    /// nats-server's counters and stream state over the measurement.
    pub traffic: crate::traffic::Traffic,
}

impl Messages {
    fn of(traffic: crate::traffic::Traffic, by_type: BTreeMap<String, u64>, accepted: u64) -> Self {
        Messages {
            stored_per_registration: per_kind(&traffic, &by_type, accepted),
            total_per_registration: traffic.messages_per_registration,
            decisions_by_type: by_type,
            traffic,
        }
    }
}

/// Per registration: the messages stored by kind of subject, both streams (from `traffic`,
/// under `stream: kind`), and the decisions stream's records by event type (`by_type`,
/// counted by the watcher, under `stream records: type`). A pack (`streams::pack`) is one
/// message holding many records, so the two differ where records are packed.
pub fn per_kind(
    traffic: &crate::traffic::Traffic,
    by_type: &BTreeMap<String, u64>,
    accepted: u64,
) -> BTreeMap<String, f64> {
    let per = |n: u64| n as f64 / accepted.max(1) as f64;
    traffic
        .stored
        .iter()
        .filter(|s| s.messages > 0)
        .map(|s| (format!("{}: {}", s.stream, s.kind), s.per_registration))
        .chain(by_type.iter().map(|(t, n)| {
            (
                format!("{} records: {t}", subjects::DECISIONS_STREAM),
                per(*n),
            )
        }))
        .collect()
}

/// How the registrations of a measurement ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    /// By outcome.
    pub ended: BTreeMap<String, u64>,
    /// Accepted and not done when the benchmark stopped waiting.
    pub unfinished: u64,
    /// Messages given up on (dead letters).
    pub messages_failed: u64,
}

/// One open-loop step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Its name.
    pub name: String,
    /// Arrivals asked for, per second.
    pub rate_per_second: u32,
    /// Seconds of arrivals.
    pub seconds: f64,
    /// Requests due.
    pub submitted: u64,
    /// Requests the generator could not send (too many open).
    pub not_sent: u64,
    /// `202` answers.
    pub accepted: u64,
    /// Answers by status code.
    pub answers: BTreeMap<u16, u64>,
    /// Requests with no HTTP answer.
    pub transport_errors: u64,
    /// `202`s per second, first due request to last `202`.
    pub accepted_per_second: f64,
    /// Scheduled send → `202`, ms.
    pub to_202_ms: Percentiles,
    /// `202` → `SlotReserved` stored, ms.
    pub to_reserved_ms: Percentiles,
    /// `202` → `RegistrationConfirmed` stored, ms.
    pub to_confirmed_ms: Percentiles,
    /// `202` → the first `NotificationSent` stored for the registration, ms.
    pub to_first_message_ms: Percentiles,
    /// Registrations still pending [`PENDING_AFTER`] after the last arrival: requests not
    /// answered yet, and accepted ones not done ([`Progress::done`]).
    pub pending_after_5s: u64,
    /// Decisions the projections had not applied then (`None`: not read).
    pub projections_behind_after_5s: Option<u64>,
    /// Seconds from the last arrival until every stage was done (`None`: not within the wait).
    pub caught_up_after_seconds: Option<f64>,
    /// How they ended.
    pub outcomes: Outcomes,
    /// CPU per accepted registration.
    pub cost: Cost,
    /// Messages per accepted registration.
    pub messages: Messages,
    /// Whether every stage kept up ([`keeps_up`]).
    pub kept_up: bool,
}

/// The closed-loop wrk run.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedLoop {
    /// Its name.
    pub name: String,
    /// Connections.
    pub connections: usize,
    /// Seconds of requests.
    pub seconds: f64,
    /// Requests answered.
    pub requests: u64,
    /// Submissions stored (each `202`).
    pub accepted: u64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Accepted per second over wrk's run.
    pub accepted_per_second: f64,
    /// Request latency (wrk), ms.
    pub latency_ms: Percentiles,
    /// Seconds from wrk's end until every stage was done (`None`: not within the wait).
    pub caught_up_after_seconds: Option<f64>,
    /// How they ended.
    pub outcomes: Outcomes,
    /// CPU per accepted registration, the catch-up included.
    pub cost: Cost,
    /// Messages per accepted registration.
    pub messages: Messages,
}

/// What a step's keeping up is judged on.
#[derive(Debug, Clone, Copy)]
pub struct StepVerdict {
    /// Requests due.
    pub submitted: u64,
    /// `202`s.
    pub accepted: u64,
    /// p99 of `202` → first message, ms.
    pub first_message_p99_ms: f64,
    /// Registrations pending [`PENDING_AFTER`] after the last arrival.
    pub pending_after: u64,
    /// Decisions the projections had not applied then.
    pub projections_behind: Option<u64>,
}

/// Whether every stage kept up with a step's arrivals: the edge accepted (nearly) every
/// request, the p99 of `202` → first message is within [`FIRST_MESSAGE_P99_MS`], and
/// [`PENDING_AFTER`] after the last arrival nothing was pending (every registration decided,
/// confirmed or rejected, its messages recorded, the projections at the decisions' end).
pub fn keeps_up(v: StepVerdict) -> bool {
    v.submitted > 0
        && v.accepted as f64 >= 0.99 * v.submitted as f64
        && v.first_message_p99_ms <= FIRST_MESSAGE_P99_MS
        && v.pending_after == 0
        && v.projections_behind == Some(0)
}

/// The next open-loop rate to try, given the rates tried so far and whether each kept up:
/// the ladder's next rate while every step kept up; after the first that did not, up to two
/// rates halfway between the highest kept and the lowest failed ([`crate::results::next_rate`])
/// or, when none kept up, half the lowest failed, then none.
pub fn next_rate(ladder: &[u32], tried: &[(u32, bool)]) -> Option<u32> {
    let kept = tried.iter().filter(|t| t.1).map(|t| t.0).max();
    let fell = tried.iter().filter(|t| !t.1).map(|t| t.0).min();
    match fell {
        None => ladder.iter().copied().find(|r| kept.is_none_or(|k| *r > k)),
        Some(_) => {
            let on_ladder = tried.iter().filter(|t| ladder.contains(&t.0)).count();
            if tried.len() >= on_ladder + 2 {
                return None;
            }
            let next = match (kept, fell) {
                // Nothing kept up yet: half the lowest rate that fell behind, down to 50/s.
                (None, Some(f)) => Some((f / 2 / 50 * 50).max(50)).filter(|r| *r < f),
                _ => crate::results::next_rate(kept, fell),
            };
            next.filter(|r| !tried.iter().any(|t| t.0 == *r))
        }
    }
}

/// The highest rate that kept up and the lowest that did not.
pub fn sustained(tried: &[(u32, bool)]) -> (Option<u32>, Option<u32>) {
    (
        tried.iter().filter(|t| t.1).map(|t| t.0).max(),
        tried.iter().filter(|t| !t.1).map(|t| t.0).min(),
    )
}

/// The slots the benchmark opens: four locations in three regions, 60 to 62 days ahead
/// in each region's zone (deploy/up's demo slots), each with a capacity no run fills.
pub fn slots() -> Vec<SlotKey> {
    let calendar = streams::calendar::Calendar::default();
    let mut slots = Vec::new();
    for (region, location) in [
        ("mazowieckie", "warszawa-narodowy"),
        ("mazowieckie", "radom-centrum"),
        ("malopolskie", "krakow-tauron"),
        ("slaskie", "katowice-spodek"),
    ] {
        let region = streams::model::Region::parse(region).expect("a valid region");
        for days in 60..63 {
            slots.push(SlotKey {
                date: calendar.days_ahead(&region, days),
                region: region.clone(),
                location: streams::model::Location::parse(location).expect("a valid location"),
            });
        }
    }
    slots
}

/// Capacity of each slot: more than any run books (the edge's largest).
const CAPACITY: u32 = 1_000_000;

/// Opens [`slots`] through the edge's admin API (the operators' bearer token deploy/up
/// runs with: its development default).
async fn open_slots(http: &ntex::client::Client, ingest_url: &str) -> anyhow::Result<()> {
    for slot in slots() {
        set_capacity(http, ingest_url, "dev-admin-token", &slot).await?;
    }
    Ok(())
}

/// Sets `slot`'s capacity to [`CAPACITY`] through the admin API of the edge at `ingest_url`.
pub(crate) async fn set_capacity(
    http: &ntex::client::Client,
    ingest_url: &str,
    token: &str,
    slot: &SlotKey,
) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "region": slot.region, "location": slot.location, "date": slot.date,
        "capacity": CAPACITY,
    });
    let response = http
        .put(format!("{ingest_url}/v1/admin/capacity"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send_json(&body)
        .await
        .map_err(|e| anyhow::anyhow!("PUT /v1/admin/capacity: {e:?}"))?;
    let answer = response.body().await.unwrap_or_default();
    anyhow::ensure!(
        response.status().as_u16() == 200,
        "setting the capacity of {slot} answered {}: {}",
        response.status(),
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// The projections' checkpoint on the decisions stream (their `/metrics`).
async fn projections_at(http: &ntex::client::Client, read_url: &str) -> Option<u64> {
    let gauge = format!(
        "projection_checkpoint{{stream=\"{}\"}}",
        subjects::DECISIONS_STREAM
    );
    e2e::chaos::services::scrape(http, read_url)
        .await
        .get(&gauge)
        .copied()
}

/// How many decisions the projections have not applied yet.
async fn projections_behind(
    js: &async_nats::jetstream::Context,
    http: &ntex::client::Client,
    read_url: &str,
) -> Option<u64> {
    let end = pipeline::decisions_end(js).await.ok()?;
    Some(end.saturating_sub(projections_at(http, read_url).await?))
}

/// Submissions stored in the intake stream after sequence `after`.
async fn submissions_after(js: &async_nats::jetstream::Context, after: u64) -> anyhow::Result<u64> {
    let mut consumer = js
        .get_stream(subjects::INTAKE_STREAM)
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: subjects::intake_kind_filter(&RegionFilter::All, IntakeKind::Submitted),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await?;
    Ok(consumer.info().await?.num_pending)
}

/// The intake stream's last sequence.
async fn intake_end(js: &async_nats::jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(subjects::INTAKE_STREAM)
        .await?
        .info()
        .await?
        .state
        .last_sequence)
}

/// Waits until `done` says every stage is done and the projections are at the decisions'
/// end; gives up after [`STALL`] without progress. Returns when it was done.
async fn catch_up(
    js: &async_nats::jetstream::Context,
    http: &ntex::client::Client,
    read_url: &str,
    name: &str,
    mut remaining: impl AsyncFnMut() -> u64,
) -> Option<Instant> {
    let mut progress = (u64::MAX, Instant::now());
    let mut shown = Instant::now();
    loop {
        let left = remaining().await;
        if left == 0 && projections_behind(js, http, read_url).await == Some(0) {
            return Some(Instant::now());
        }
        if left != progress.0 {
            progress = (left, Instant::now());
        }
        if progress.1.elapsed() > STALL {
            eprintln!(
                "deployed: {name}: {left} registrations not done after a minute without progress; giving up"
            );
            return None;
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            eprintln!("deployed: {name}: catching up, {left} registrations not done");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn outcomes(progress: &HashMap<String, Progress>, accepted: u64) -> Outcomes {
    let mut out = Outcomes::default();
    let mut done = 0u64;
    for p in progress.values() {
        out.messages_failed += u64::from(p.failed);
        if let Some((outcome, _)) = p.ended {
            let key = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *out.ended.entry(key).or_default() += 1;
        }
        done += u64::from(p.done(CHANNELS));
    }
    out.unfinished = accepted.saturating_sub(done);
    out
}

/// CPU seconds of this process and of its children it waited for (wrk).
fn own_cpu_seconds() -> f64 {
    procstat::sample(std::process::id()).map_or(0.0, |s| s.cpu_seconds)
        + procstat::children_cpu_seconds()
}

/// What every measurement on the deployment shares.
struct Rig<'a> {
    deployment: &'a mut Deployment,
    js: async_nats::jetstream::Context,
    http: ntex::client::Client,
    slots: Vec<SlotKey>,
}

impl Rig<'_> {
    /// One open-loop step at `rate` for `seconds`, citizens from `first_citizen`.
    async fn step(&mut self, rate: u32, seconds: f64, first_citizen: u32) -> anyhow::Result<Step> {
        let name = format!("open loop at {rate}/s");
        let options = pipeline::Options {
            name: name.clone(),
            rate,
            seconds,
            first_citizen,
            max_outstanding: 20_000,
            pause: Vec::new(),
            monitor_port: Some(self.deployment.monitor_port),
        };
        let js = &self.js;
        let read_url = self.deployment.read_url.clone();
        let traffic_mark = crate::traffic::mark(js, options.monitor_port).await?;
        let shared = Rc::new(Shared::default());
        let seen = Rc::new(Seen::default());
        let watcher = watch(js, seen.clone(), shared.clone()).await?;
        let client = e2e::chaos::load::http_client(options.max_outstanding.min(512)).await?;
        let (http, ingest_url, slots) = (&self.http, &self.deployment.ingest_url, &self.slots);

        let schedule = Schedule::of(&options);
        let pending = |shared: &Shared, seen: &Seen| {
            let progress = seen.progress.borrow();
            shared.outstanding.get() as u64
                + shared
                    .scheduled
                    .borrow()
                    .keys()
                    .filter(|id| !progress.get(*id).is_some_and(|p| p.done(CHANNELS)))
                    .count() as u64
        };
        let work = async {
            let arrivals =
                pipeline::arrive(&client, ingest_url, slots, &options, schedule, &shared);
            let after = async {
                tokio::time::sleep_until((schedule.end() + PENDING_AFTER).into()).await;
                let pending = pending(&shared, &seen);
                let behind = projections_behind(js, http, &read_url).await;
                (pending, behind)
            };
            let (not_sent, (pending_after, behind)) = futures::join!(arrivals, after);
            let caught_up =
                catch_up(js, http, &read_url, &name, async || pending(&shared, &seen)).await;
            (not_sent, pending_after, behind, caught_up)
        };
        let own_before = own_cpu_seconds();
        let started = Instant::now();
        let ((not_sent, pending_after, behind, caught_up), usage) =
            procstat::watch(&self.deployment.watched, Duration::from_millis(250), work).await;
        let watched_seconds = started.elapsed().as_secs_f64();
        let own = own_cpu_seconds() - own_before;
        watcher.stop().await;
        self.deployment.check_alive()?;

        let scheduled = shared.scheduled.take();
        let accepted = scheduled.len() as u64;
        let traffic = crate::traffic::since(
            js,
            options.monitor_port,
            &traffic_mark,
            accepted,
            shared.watched.get(),
        )
        .await?;
        let progress = seen.progress.take();
        let mut to = [Vec::new(), Vec::new(), Vec::new()];
        let mut last_accept = schedule.end();
        for (id, (_, answered)) in &scheduled {
            last_accept = last_accept.max(*answered);
            if let Some(p) = progress.get(id) {
                for (samples, at) in to
                    .iter_mut()
                    .zip([p.reserved, p.confirmed, p.first_message])
                {
                    if let Some(at) = at {
                        samples.push(at.saturating_duration_since(*answered));
                    }
                }
            }
        }
        let [reserved, confirmed, first_message] = to;
        let to_first_message_ms = Percentiles::of(first_message);
        let submitted = u64::from(schedule.total);
        let kept_up = keeps_up(StepVerdict {
            submitted,
            accepted,
            first_message_p99_ms: to_first_message_ms.p99,
            pending_after,
            projections_behind: behind,
        }) && not_sent == 0;
        let step = Step {
            name,
            rate_per_second: rate,
            seconds,
            submitted,
            not_sent,
            accepted,
            answers: shared.answers.take(),
            transport_errors: shared.transport_errors.get(),
            accepted_per_second: accepted as f64
                / last_accept
                    .saturating_duration_since(schedule.start)
                    .as_secs_f64()
                    .max(1e-9),
            to_202_ms: Percentiles::of(shared.accept_latency.take()),
            to_reserved_ms: Percentiles::of(reserved),
            to_confirmed_ms: Percentiles::of(confirmed),
            to_first_message_ms,
            pending_after_5s: pending_after,
            projections_behind_after_5s: behind,
            caught_up_after_seconds: caught_up
                .map(|at| at.saturating_duration_since(schedule.end()).as_secs_f64()),
            outcomes: outcomes(&progress, accepted),
            cost: Cost::of(&usage, own, watched_seconds, accepted),
            messages: Messages::of(traffic, seen.by_type.take(), accepted),
            kept_up,
        };
        eprintln!(
            "deployed: {}: {:.0} accepted/s, 202 → first message p50 {:.0} / p99 {:.0} ms, {} pending 5 s after, system {:.0} µs + stand-ins {:.0} µs CPU per registration: kept up: {}",
            step.name,
            step.accepted_per_second,
            step.to_first_message_ms.p50,
            step.to_first_message_ms.p99,
            step.pending_after_5s,
            step.cost.system_us,
            step.cost.stand_ins_us,
            step.kept_up
        );
        Ok(step)
    }

    /// One closed-loop wrk run with `connections` for `seconds`, on the first slot, then the
    /// catch-up.
    async fn closed_loop(
        &mut self,
        connections: usize,
        seconds: u32,
    ) -> anyhow::Result<ClosedLoop> {
        let name = format!("wrk, {connections} connections, {seconds} s");
        let js = &self.js;
        let read_url = self.deployment.read_url.clone();
        let monitor_port = Some(self.deployment.monitor_port);
        let traffic_mark = crate::traffic::mark(js, monitor_port).await?;
        let intake_mark = intake_end(js).await?;
        let shared = Rc::new(Shared::default());
        let seen = Rc::new(Seen::default());
        let watcher = watch(js, seen.clone(), shared.clone()).await?;
        let slot = &self.slots[0];
        let http = &self.http;
        // Registrations not done of the `stored` accepted, and any partly done beyond them.
        let remaining = |seen: &Seen, stored: u64| {
            let progress = seen.progress.borrow();
            let done = progress.values().filter(|p| p.done(CHANNELS)).count() as u64;
            let partial = progress.len() as u64 - done;
            stored.saturating_sub(done).max(partial)
        };
        let work = async {
            let output = crate::edge::run_wrk(
                connections,
                seconds,
                &self.deployment.ingest_url,
                &[
                    slot.region.to_string(),
                    slot.location.to_string(),
                    slot.date.to_string(),
                    "phone".into(),
                ],
            )
            .await;
            let ended = Instant::now();
            // Every answer is in once wrk has ended: the submissions stored are final, read
            // once (not at each check, which would load nats-server, the measured process).
            let stored = submissions_after(js, intake_mark).await.unwrap_or(u64::MAX);
            let caught_up = catch_up(js, http, &read_url, &name, async || {
                remaining(&seen, stored)
            })
            .await;
            (output, ended, caught_up)
        };
        let own_before = own_cpu_seconds();
        let started = Instant::now();
        let ((summary, ended, caught_up), usage) =
            procstat::watch(&self.deployment.watched, Duration::from_millis(250), work).await;
        let watched_seconds = started.elapsed().as_secs_f64();
        let own = own_cpu_seconds() - own_before;
        watcher.stop().await;
        self.deployment.check_alive()?;
        let summary = summary?;
        let accepted = submissions_after(js, intake_mark).await?;
        let traffic = crate::traffic::since(
            js,
            monitor_port,
            &traffic_mark,
            accepted,
            shared.watched.get(),
        )
        .await?;
        let progress = seen.progress.take();
        let run = ClosedLoop {
            name,
            connections,
            seconds: summary.seconds(),
            requests: summary.requests,
            accepted,
            non_2xx: summary.non_2xx,
            accepted_per_second: accepted as f64 / summary.seconds().max(1e-9),
            latency_ms: summary.latency_ms(),
            caught_up_after_seconds: caught_up
                .map(|at| at.saturating_duration_since(ended).as_secs_f64()),
            outcomes: outcomes(&progress, accepted),
            cost: Cost::of(&usage, own, watched_seconds, accepted),
            messages: Messages::of(traffic, seen.by_type.take(), accepted),
        };
        eprintln!(
            "deployed: {}: {:.0} accepted/s, caught up {} s after, system {:.0} µs + stand-ins {:.0} µs CPU per registration",
            run.name,
            run.accepted_per_second,
            run.caught_up_after_seconds
                .map_or("not".into(), |s| format!("{s:.1}")),
            run.cost.system_us,
            run.cost.stand_ins_us,
        );
        Ok(run)
    }
}

/// The deployed system's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SystemFigures {
    /// The settings given to deploy/up beyond its defaults ([`settings`]).
    pub settings: BTreeMap<String, String>,
    /// The registry simulator's knobs in force (its `/_sim/knobs`).
    pub registry_knobs: serde_json::Value,
    /// The receivers' knobs in force.
    pub receivers_knobs: serde_json::Value,
    /// The open-loop steps, in the order run.
    pub steps: Vec<Step>,
    /// The highest step rate at which every stage kept up, per second.
    pub sustained_per_second: Option<u32>,
    /// The lowest step rate at which some stage did not.
    pub first_failed_per_second: Option<u32>,
    /// The closed-loop wrk run (none without wrk).
    pub closed_loop: Option<ClosedLoop>,
}

async fn knobs(http: &ntex::client::Client, base: &str) -> serde_json::Value {
    let Ok(response) = http
        .get(format!("{base}/_sim/knobs"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return serde_json::Value::Null;
    };
    let body = response.body().await.unwrap_or_default();
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}

/// Starts the system with deploy/up, measures it ([`SystemFigures`]) and stops it.
pub async fn measure_system(options: &Options, log_dir: &Path) -> anyhow::Result<SystemFigures> {
    let mut deployment = Deployment::start(log_dir).await?;
    let http = e2e::chaos::load::http_client(16).await?;
    open_slots(&http, &deployment.ingest_url).await?;
    let registry_knobs = knobs(&http, &deployment.registry_url).await;
    let receivers_knobs = knobs(&http, &deployment.webhook_url).await;
    let js = async_nats::jetstream::new(deployment.connect().await?);
    let mut rig = Rig {
        deployment: &mut deployment,
        js,
        http,
        slots: slots(),
    };
    let mut steps = Vec::new();
    let mut tried = Vec::new();
    while let Some(rate) = next_rate(&options.rates, &tried) {
        // Fresh citizens per step, 200,000 apart: their PESEL serials (citizen / 20,000)
        // never end in 97, 98 or 99, the registry simulator's refusals (docs/registry.md).
        let first_citizen = 200_000 * (steps.len() as u32 + 1);
        let step = rig.step(rate, options.step_seconds, first_citizen).await?;
        tried.push((rate, step.kept_up));
        steps.push(step);
    }
    let closed_loop = if options.wrk_seconds > 0 && crate::edge::wrk_available() {
        Some(
            rig.closed_loop(options.wrk_connections, options.wrk_seconds)
                .await?,
        )
    } else {
        None
    };
    drop(rig);
    deployment.stop();
    let (sustained_per_second, first_failed_per_second) = sustained(&tried);
    Ok(SystemFigures {
        settings: settings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain([(
                "REG_MAX_OPEN_SUBMISSIONS".to_owned(),
                "as deployed (512)".to_owned(),
            )])
            .collect(),
        registry_knobs,
        receivers_knobs,
        steps,
        sustained_per_second,
        first_failed_per_second,
        closed_loop,
    })
}

/// `bench deployed`'s report: the deployed system beside its ceilings.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    /// The deployed system's figures.
    pub system: SystemFigures,
    /// JetStream's raw durable publish ceilings, measured in the same run.
    pub ceilings: Vec<Ceiling>,
    /// The bare handler and the edge alone under wrk (empty without wrk).
    pub edge_wrk: Vec<EdgeFigure>,
}

/// Everything `bench deployed` measures: the quick ceilings and the edge against the bare
/// handler first (nothing else running), then the deployed system.
pub async fn run(options: &Options) -> anyhow::Result<Deployed> {
    let log_dir = crate::log_dir()?;
    eprintln!("deployed: 1/3 JetStream's durable publish ceilings");
    let ceilings = crate::ceilings::measure_quick(options.scale).await?;
    eprintln!("deployed: 2/3 the edge alone and a bare ntex handler under wrk");
    let edge_wrk = crate::edge::measure_wrk_if_installed(options.edge_seconds, &log_dir).await?;
    eprintln!("deployed: 3/3 the system as deploy/up starts it");
    let system = measure_system(options, &log_dir).await?;
    Ok(Deployed {
        system,
        ceilings,
        edge_wrk,
    })
}

fn ms(p: &Percentiles) -> String {
    format!("{:.0} / {:.0}", p.p50, p.p99)
}

fn cost_columns() -> Vec<&'static str> {
    PROCESSES
        .iter()
        .copied()
        .filter(|p| !STAND_INS.contains(p))
        .collect()
}

/// The per-registration cost and messages of each measurement, as Markdown rows.
fn cost_table<'a>(rows: impl Iterator<Item = (&'a str, u64, &'a Cost, &'a Messages)>) -> String {
    let system = cost_columns();
    let mut md = String::from("| run | accepted |");
    for p in &system {
        md.push_str(&format!(" {p} µs |"));
    }
    md.push_str(" **system µs** |");
    for p in STAND_INS {
        md.push_str(&format!(" {p} µs |"));
    }
    md.push_str(" stand-ins µs | benchmark µs | cores busy | stored msgs | nats-server msgs in / out |\n| --- |");
    md.push_str(&" ---: |".repeat(system.len() + STAND_INS.len() + 7));
    md.push('\n');
    for (name, accepted, cost, messages) in rows {
        md.push_str(&format!("| {name} | {accepted} |"));
        let us = |p: &str| cost.cpu_us_per_registration.get(p).copied().unwrap_or(0.0);
        for p in &system {
            md.push_str(&format!(" {:.0} |", us(p)));
        }
        md.push_str(&format!(" **{:.0}** |", cost.system_us));
        for p in STAND_INS {
            md.push_str(&format!(" {:.0} |", us(p)));
        }
        md.push_str(&format!(
            " {:.0} | {:.0} | {:.2} | {:.2} | {} |\n",
            cost.stand_ins_us,
            cost.benchmark_us,
            cost.cores_busy,
            messages.total_per_registration,
            messages
                .traffic
                .server_per_registration
                .as_ref()
                .map_or("–".into(), |v| format!(
                    "{:.1} / {:.1}",
                    v.in_msgs, v.out_msgs
                ))
        ));
    }
    md
}

/// Messages stored per registration by kind, one column per measurement.
fn kinds_table<'a>(rows: &[(&'a str, &'a Messages)]) -> String {
    let mut kinds: Vec<&String> = rows
        .iter()
        .flat_map(|(_, m)| m.stored_per_registration.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut md = String::from("| stored, per accepted registration |");
    for (name, _) in rows {
        md.push_str(&format!(" {name} |"));
    }
    md.push_str("\n| --- |");
    md.push_str(&" ---: |".repeat(rows.len()));
    md.push('\n');
    for kind in kinds {
        md.push_str(&format!("| {kind} |"));
        for (_, m) in rows {
            md.push_str(&format!(
                " {:.2} |",
                m.stored_per_registration.get(kind).copied().unwrap_or(0.0)
            ));
        }
        md.push('\n');
    }
    md
}

/// The deployed system's figures as Markdown sections (`##`), for `deployed.md` and as the
/// headline of `results.md`.
pub fn system_markdown(s: &SystemFigures) -> String {
    let mut md = String::from(
        "\n## The system as `deploy/up` starts it\n\n\
         Every process deploy/up starts, on this machine: nats-server (fsync always, \
         per-service identities), the processors (reservation, verification, notifications), \
         the projections with the read API, the edge; beside them the stand-ins for the outside \
         world, the registry simulator and the mail and text receivers (their CPU in their own \
         columns, out of the system's total). Every edge limit off, **provider rate limits off** \
         (mail, texts, registry), no failures injected, the mail sink appending to one mbox \
         (`REG_MAIL_STORE=mbox`) instead of a file per message; registrations with an e-mail address \
         and a phone number (two messages per decision), valid PESELs whose serials the \
         registry simulator answers `MATCH`. CPU from `/proc` over the arrivals **and the \
         catch-up** (until every accepted registration was confirmed or rejected, every message \
         it is owed recorded as sent, and the projections at the decisions stream's end).\n\n",
    );
    md.push_str(&format!(
        "Settings: {}. Registry simulator knobs: `{}`; receivers' knobs: `{}`.\n\n",
        s.settings
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        s.registry_knobs,
        s.receivers_knobs
    ));
    md.push_str(&format!(
        "**Sustained rate: {}** (every stage kept up: p99 of 202 → first message ≤ {:.0} s and nothing pending {} s after the last arrival); first rate that did not: {}.\n\n",
        s.sustained_per_second
            .map_or("none of the rates tried".into(), |r| format!("{r}/s")),
        FIRST_MESSAGE_P99_MS / 1000.0,
        PENDING_AFTER.as_secs(),
        s.first_failed_per_second
            .map_or("none of the rates tried".into(), |r| format!("{r}/s"))
    ));
    md.push_str("### Open-loop steps (15 s each unless said; fresh citizens per step; drained before the next)\n\n\
        | step | due | accepted/s | to 202 p50 / p99 ms | 202 → reserved p50 / p99 ms | 202 → confirmed p50 / p99 ms | 202 → first message p50 / p99 ms | pending 5 s after | projections behind then | caught up s after | outcomes | kept up |\n\
        | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n");
    for step in &s.steps {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            step.name,
            step.submitted,
            step.accepted_per_second,
            ms(&step.to_202_ms),
            ms(&step.to_reserved_ms),
            ms(&step.to_confirmed_ms),
            ms(&step.to_first_message_ms),
            step.pending_after_5s,
            step.projections_behind_after_5s
                .map_or("–".into(), |b| b.to_string()),
            step.caught_up_after_seconds
                .map_or("not".into(), |c| format!("{c:.1}")),
            outcomes_text(&step.outcomes),
            if step.kept_up { "yes" } else { "**no**" }
        ));
    }
    if let Some(c) = &s.closed_loop {
        md.push_str(&format!(
            "\n### Closed loop: {} (`deploy/benchmarks/wrk/registrations.lua`, with a phone number)\n\n\
             {} requests, {} accepted ({:.0}/s), {} other answers; latency p50 {:.1} ms, p99 {:.1} ms; \
             every stage caught up {} after wrk's end; {}.\n",
            c.name,
            c.requests,
            c.accepted,
            c.accepted_per_second,
            c.non_2xx,
            c.latency_ms.p50,
            c.latency_ms.p99,
            c.caught_up_after_seconds
                .map_or("not within the wait".into(), |s| format!("{s:.1} s")),
            outcomes_text(&c.outcomes)
        ));
    }
    md.push_str("\n### CPU per accepted registration (arrivals and catch-up)\n\n");
    let closed = s
        .closed_loop
        .iter()
        .map(|c| (c.name.as_str(), c.accepted, &c.cost, &c.messages));
    md.push_str(&cost_table(
        s.steps
            .iter()
            .map(|st| (st.name.as_str(), st.accepted, &st.cost, &st.messages))
            .chain(closed),
    ));
    md.push_str("\n### Messages stored per accepted registration, by kind\n\nMessages by kind of subject, both streams, over each run's sequence range; then the decisions stream's records by event type. A pack (the verdicts, the notification records: `streams::pack`) is one message holding the records of every write in flight, so records outnumber messages there.\n\n");
    let mut rows: Vec<(&str, &Messages)> = s
        .steps
        .iter()
        .map(|st| (st.name.as_str(), &st.messages))
        .collect();
    if let Some(c) = &s.closed_loop {
        rows.push((c.name.as_str(), &c.messages));
    }
    md.push_str(&kinds_table(&rows));
    md
}

fn outcomes_text(o: &Outcomes) -> String {
    let mut parts: Vec<String> = o.ended.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if o.unfinished > 0 {
        parts.push(format!("{} unfinished", o.unfinished));
    }
    if o.messages_failed > 0 {
        parts.push(format!("{} messages failed", o.messages_failed));
    }
    parts.join(", ")
}

/// The ceilings beside the deployed figures: absolutes and ratios.
pub fn ceilings_markdown(
    s: &SystemFigures,
    ceilings: &[Ceiling],
    edge_wrk: &[EdgeFigure],
) -> String {
    let mut md = String::from("\n### Beside the ceilings, measured in the same run\n\n");
    md.push_str(&crate::ceilings::table(ceilings));
    md.push_str(&crate::edge::wrk_markdown(edge_wrk));
    let mut ratios = Vec::new();
    let edge_alone = edge_wrk.get(1).map(|f| f.accepted_per_second);
    let atomic = ceilings
        .iter()
        .find(|c| c.path.contains("atomic") && c.path.contains("256"))
        .map(|c| c.records_per_second);
    if let Some(sustained) = s.sustained_per_second {
        if let Some(edge) = edge_alone.filter(|e| *e > 0.0) {
            ratios.push(format!(
                "sustained {sustained}/s ÷ the edge alone under wrk {edge:.0}/s: {:.3}×",
                f64::from(sustained) / edge
            ));
        }
        if let Some(atomic) = atomic {
            ratios.push(format!(
                "sustained ÷ JetStream's atomic batches of 256 ({atomic:.0} records/s): {:.4}×",
                f64::from(sustained) / atomic
            ));
        }
    }
    if let (Some(c), Some(edge)) = (&s.closed_loop, edge_alone.filter(|e| *e > 0.0)) {
        ratios.push(format!(
            "closed loop {:.0} accepted/s ÷ the edge alone under wrk: {:.3}×",
            c.accepted_per_second,
            c.accepted_per_second / edge
        ));
    }
    if !ratios.is_empty() {
        md.push_str(&format!("\nRatios: {}.\n", ratios.join("; ")));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_done_once_it_ended_and_every_message_is_recorded() {
        let t = Instant::now();
        let mut p = Progress::default();
        p.apply(Milestone::Notice(Some(Reached::Reserved)), t);
        assert!(p.reserved.is_some() && !p.done(2));
        p.apply(Milestone::Sent, t);
        p.apply(Milestone::Sent, t);
        assert!(!p.done(2), "reserved and told, not confirmed yet");
        p.apply(
            Milestone::Notice(Some(Reached::Ended(Outcome::Confirmed))),
            t,
        );
        assert!(p.confirmed.is_some() && !p.done(2));
        p.apply(Milestone::Sent, t);
        assert!(!p.done(2), "three of four messages");
        p.apply(Milestone::Failed, t);
        assert!(p.done(2), "the fourth given up on is recorded too");
        assert_eq!((p.notices, p.sent, p.failed), (2, 3, 1));

        let mut rejected = Progress::default();
        rejected.apply(
            Milestone::Notice(Some(Reached::Ended(Outcome::Rejected))),
            t,
        );
        assert!(rejected.confirmed.is_none() && !rejected.done(2));
        rejected.apply(Milestone::Sent, t);
        rejected.apply(Milestone::Sent, t);
        assert!(rejected.done(2));
        // Messages recorded before their decision was seen still count.
        let mut early = Progress::default();
        early.apply(Milestone::Sent, t);
        assert!(!early.done(1));
    }

    fn verdict() -> StepVerdict {
        StepVerdict {
            submitted: 3_000,
            accepted: 3_000,
            first_message_p99_ms: 900.0,
            pending_after: 0,
            projections_behind: Some(0),
        }
    }

    #[test]
    fn a_step_keeps_up_only_if_every_stage_did() {
        assert!(keeps_up(verdict()));
        assert!(keeps_up(StepVerdict {
            accepted: 2_970,
            ..verdict()
        }));
        for failed in [
            StepVerdict {
                accepted: 2_969,
                ..verdict()
            },
            StepVerdict {
                first_message_p99_ms: 5_001.0,
                ..verdict()
            },
            StepVerdict {
                pending_after: 1,
                ..verdict()
            },
            StepVerdict {
                projections_behind: Some(3),
                ..verdict()
            },
            StepVerdict {
                projections_behind: None,
                ..verdict()
            },
            StepVerdict {
                submitted: 0,
                accepted: 0,
                ..verdict()
            },
        ] {
            assert!(!keeps_up(failed), "{failed:?}");
        }
    }

    /// The rates tried against a system that keeps up exactly at rates ≤ `limit`.
    fn ladder_run(ladder: &[u32], limit: u32) -> Vec<(u32, bool)> {
        let mut tried = Vec::new();
        while let Some(rate) = next_rate(ladder, &tried) {
            tried.push((rate, rate <= limit));
            assert!(tried.len() <= ladder.len() + 2, "{tried:?}");
        }
        tried
    }

    #[test]
    fn the_ladder_climbs_until_a_rate_fails_then_looks_between() {
        let ladder = [200, 400, 800, 1200, 1600, 2400, 3200];
        let rates = |t: &[(u32, bool)]| t.iter().map(|t| t.0).collect::<Vec<_>>();
        let tried = ladder_run(&ladder, 650);
        assert_eq!(rates(&tried), [200, 400, 800, 600]);
        assert_eq!(sustained(&tried), (Some(600), Some(800)));
        let tried = ladder_run(&ladder, 2_000);
        assert_eq!(rates(&tried), [200, 400, 800, 1200, 1600, 2400, 2000, 2200]);
        assert_eq!(sustained(&tried), (Some(2000), Some(2200)));
        // Everything keeps up: the whole ladder, nothing failed.
        let tried = ladder_run(&ladder, 10_000);
        assert_eq!(rates(&tried), ladder);
        assert_eq!(sustained(&tried), (Some(3200), None));
        // Nothing keeps up: half the ladder's first rate, then half again.
        let tried = ladder_run(&[500, 1000], 0);
        assert_eq!(rates(&tried), [500, 250, 100]);
        assert_eq!(sustained(&tried), (None, Some(100)));
        let tried = ladder_run(&ladder, 120);
        assert_eq!(rates(&tried), [200, 100]);
        assert_eq!(sustained(&tried), (Some(100), Some(200)));
        // Failing at a rate 200/s above the last kept: no rate between to try.
        let tried = ladder_run(&[200, 400], 300);
        assert_eq!(rates(&tried), [200, 400]);
        assert_eq!(sustained(&tried), (Some(200), Some(400)));
    }

    #[test]
    fn stored_kinds_put_messages_by_subject_beside_the_decisions_records_by_type() {
        let stored = |stream: &str, kind: &str, messages: u64| crate::traffic::Stored {
            stream: stream.into(),
            kind: kind.into(),
            messages,
            per_registration: messages as f64 / 100.0,
        };
        let traffic = crate::traffic::Traffic {
            stored: vec![
                stored(subjects::INTAKE_STREAM, "submissions", 100),
                stored(subjects::INTAKE_STREAM, "idempotency key records", 0),
                stored(subjects::DECISIONS_STREAM, "reservation decisions", 200),
                stored(subjects::DECISIONS_STREAM, "notification records", 5),
            ],
            messages_per_registration: 9.0,
            bytes_per_registration: 0.0,
            bytes_per_registration_by_stream: BTreeMap::new(),
            server_per_registration: None,
        };
        let by_type = BTreeMap::from([
            ("SlotReserved".to_owned(), 100),
            ("NotificationSent".to_owned(), 400),
        ]);
        let kinds = per_kind(&traffic, &by_type, 100);
        assert_eq!(
            kinds,
            BTreeMap::from([
                ("REG_INTAKE: submissions".to_owned(), 1.0),
                ("REG_DECISIONS: reservation decisions".to_owned(), 2.0),
                // 400 records packed into 5 messages.
                ("REG_DECISIONS: notification records".to_owned(), 0.05),
                ("REG_DECISIONS records: NotificationSent".to_owned(), 4.0),
                ("REG_DECISIONS records: SlotReserved".to_owned(), 1.0),
            ])
        );
    }

    #[test]
    fn no_step_citizen_has_a_serial_the_registry_refuses() {
        // Step k's citizens start at 200,000 k; a step of 3,200/s for 15 s (48,000 citizens)
        // stays well within the 60,000 checked here.
        for step in 1..=40u32 {
            for citizen in (200_000 * step..200_000 * step + 60_000).step_by(1_000) {
                let serial = (citizen / 20_000) % 10_000;
                assert!(!(97..=99).contains(&(serial % 100)), "{citizen}");
            }
        }
    }
}
