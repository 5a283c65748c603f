//! `deploy/bench`: every figure of the rush-hour issue in one run, beside its ceiling, written
//! to `deploy/benchmarks/reports/results.json` and `deploy/benchmarks/reports/results.md` (and drawn by `deploy/bench-plot`).
//!
//! In order: the durable write ceilings ([`crate::ceilings`]); the edge against a bare ntex
//! handler ([`crate::edge`]); the system exactly as `deploy/up` starts it
//! ([`crate::deployed`], the report's headline); then the partial pipeline, the chaos
//! harness's services (nats-server with `sync_interval: always`, the edge, one reservation
//! replica, the projections: no verification, no notifications), for the read API hot and
//! cold against a bare handler ([`crate::reads`]), the pipeline at fixed arrival rates
//! ([`crate::pipeline`]: the target rate, half what the edge accepts with the partial
//! pipeline beside it, and a backlog with the processors paused), and the replay speed of
//! the log it leaves ([`crate::replay_speed`]). Reports; never fails on a timing.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Serialize;
use streams::model::SlotKey;

use crate::ceilings::Ceiling;
use crate::contention::report::{Machine, write_report};
use crate::edge::EdgeFigure;
use crate::pipeline::{self, Run};
use crate::reads::{self, ReadFigure};
use crate::replay_speed::{self, ReplayFigure};

/// What to run (`bench all`'s options).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Multiplies the ceilings' record counts and the edge's registrations.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Seconds of arrivals in each pipeline run.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Arrival rate of the latency target, per second.
    #[arg(long, default_value_t = 10_000)]
    pub target_rate: u32,
    /// Seconds of each read measurement.
    #[arg(long, default_value_t = 10.0)]
    pub read_seconds: f64,
    /// USD per vCPU-hour for the cost line (default: an on-demand x86 vCPU, e.g. AWS
    /// c7i.large in us-east-1 at 0.08925 USD/h for 2 vCPU).
    #[arg(long, default_value_t = 0.0446)]
    pub price_per_vcpu_hour: f64,
    /// The deployed system's open-loop rates, tried in order (`bench deployed --rates`).
    #[arg(long, value_delimiter = ',', default_value = crate::deployed::RATES)]
    pub deployed_rates: Vec<u32>,
    /// Seconds of arrivals in each of the deployed system's open-loop steps.
    #[arg(long, default_value_t = 15.0)]
    pub deployed_seconds: f64,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/results.json")]
    pub out: PathBuf,
}

/// The edge against the bare handler.
#[derive(Debug, Serialize)]
pub struct EdgeSection {
    /// Bare handler, the edge alone, the edge with the partial pipeline beside it.
    pub figures: Vec<EdgeFigure>,
    /// The bare handler and the edge alone driven by wrk (empty when wrk is not installed):
    /// the comparison the edge's target is judged on, since the harness's generator is the
    /// bare handler's limit.
    pub wrk: Vec<EdgeFigure>,
    /// The edge's (alone) accepted/s over the bare handler's, both driven by wrk.
    pub wrk_ratio_to_bare: Option<f64>,
    /// The edge's (alone) accepted/s over the bare handler's, harness generator.
    pub ratio_to_bare: f64,
    /// The edge's accepted/s with the whole pipeline running over the bare handler's.
    pub ratio_with_pipeline_to_bare: f64,
    /// The edge's accepted/s over the atomic-batch ceiling of 256 records.
    pub ratio_to_atomic_ceiling: f64,
}

/// The read API against the bare handler.
#[derive(Debug, Serialize)]
pub struct ReadsSection {
    /// Bare handler, read API hot, read API cold.
    pub figures: Vec<ReadFigure>,
    /// Hot reads/s over the bare handler's.
    pub hot_ratio_to_bare: f64,
    /// Cold reads/s over the bare handler's.
    pub cold_ratio_to_bare: f64,
}

/// The pipeline runs.
#[derive(Debug, Serialize)]
pub struct PipelineSection {
    /// At the target rate, at half the whole pipeline's closed-loop rate, and the backlog.
    pub runs: Vec<Run>,
    /// The search for the whole pipeline's sustained rate, each rate tried in order.
    pub sustained_tries: Vec<Run>,
    /// The highest rate tried at which every stage kept up ([`keeps_up`]), accepted/s.
    pub sustained_per_second: Option<f64>,
}

/// Whether every stage kept up with a run's arrivals: the edge accepted (nearly) every
/// request when it was due, each decision followed its `202` within a second (p99), none was
/// left undecided, and the projections (the status API) had the last decision within a
/// second of it.
pub fn keeps_up(run: &Run) -> bool {
    run.accepted as f64 >= 0.99 * run.submitted as f64
        && run.latency_to_accept_ms.p99 <= 1000.0
        && run.accept_to_decision_ms.p99 <= 1000.0
        && run.undecided == 0
        && run.projected_after_seconds.is_some_and(|s| s <= 1.0)
}

/// Reading the log back.
#[derive(Debug, Serialize)]
pub struct ReplaySection {
    /// Raw, then decoded.
    pub figures: Vec<ReplayFigure>,
    /// Decoded over raw.
    pub ratio_to_raw: f64,
}

/// The cost line.
#[derive(Debug, Serialize)]
pub struct Cost {
    /// Which run it is computed from.
    pub from_run: String,
    /// Server CPU seconds per accepted registration (nats-server and every service).
    pub cpu_seconds_per_registration: f64,
    /// Price used, USD per vCPU-hour.
    pub price_per_vcpu_hour: f64,
    /// vCPU-hours for 19,000,000 registrations.
    pub vcpu_hours_for_19_million: f64,
    /// Their price, USD.
    pub usd_for_19_million: f64,
}

/// One target of the issue and what was measured.
#[derive(Debug, Serialize)]
pub struct Target {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it is met.
    pub met: bool,
}

/// Everything, as `deploy/benchmarks/reports/results.json`.
#[derive(Debug, Serialize)]
pub struct Results {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// The system as deploy/up starts it: the headline.
    pub deployed: crate::deployed::SystemFigures,
    /// Durable write ceilings.
    pub ceilings: Vec<Ceiling>,
    /// The ingest edge.
    pub edge: EdgeSection,
    /// The read API.
    pub reads: ReadsSection,
    /// The partial pipeline: no verification, no notifications.
    pub pipeline: PipelineSection,
    /// Replay.
    pub replay: ReplaySection,
    /// Cost.
    pub cost: Cost,
    /// The targets.
    pub targets: Vec<Target>,
}

/// The read API at `read_url` hot (the slots' keys) and cold (a new key each request)
/// against a bare ntex handler answering a static body, each for `options.read_seconds`.
async fn measure_reads(
    log_dir: &Path,
    read_url: &str,
    slots: &[SlotKey],
    options: &Options,
) -> anyhow::Result<ReadsSection> {
    let concurrency = 64;
    let mut bare = crate::started(crate::NO_NATS, log_dir, "bare-reads", "bare").await?;
    let base = bare.base.clone();
    let bare_figure = reads::drive(
        "bare ntex handler (static JSON)",
        Rc::new(move |_| format!("{base}/v1/availability?region=mazowieckie")),
        1,
        options.read_seconds,
        concurrency,
        None,
    )
    .await?;
    bare.kill();

    let keys: Rc<Vec<String>> = Rc::new(
        slots
            .iter()
            .map(|s| {
                format!(
                    "{read_url}/v1/availability?region={}&location={}&date={}",
                    s.region, s.location, s.date
                )
            })
            .chain([format!("{read_url}/v1/availability")])
            .collect(),
    );
    let key_count = keys.len();
    let hot = reads::drive(
        "read API, hot (moka cache, 13 keys)",
        Rc::new(move |n| keys[n as usize % keys.len()].clone()),
        key_count,
        options.read_seconds,
        concurrency,
        Some(read_url),
    )
    .await?;
    let base = read_url.to_owned();
    let cold = reads::drive(
        "read API, cold (a new key each request)",
        Rc::new(move |n| {
            format!("{base}/v1/availability?region=mazowieckie&location=cold-{n}&date=2027-03-01")
        }),
        0,
        options.read_seconds,
        concurrency,
        Some(read_url),
    )
    .await?;
    Ok(ReadsSection {
        hot_ratio_to_bare: hot.per_second / bare_figure.per_second,
        cold_ratio_to_bare: cold.per_second / bare_figure.per_second,
        figures: vec![bare_figure, hot, cold],
    })
}

/// Runs everything and writes the report.
pub async fn run(options: Options) -> anyhow::Result<Results> {
    let log_dir = crate::log_dir()?;

    eprintln!("bench: 1/6 durable write ceilings");
    let ceilings = crate::ceilings::measure(options.scale).await?;

    eprintln!("bench: 2/6 the ingest edge against a bare ntex handler");
    let edge = measure_edge(&log_dir, &ceilings, &options).await?;

    eprintln!("bench: 3/6 the system as deploy/up starts it");
    let deployed = crate::deployed::measure_system(
        &crate::deployed::Options {
            rates: options.deployed_rates.clone(),
            step_seconds: options.deployed_seconds,
            wrk_seconds: 15,
            wrk_connections: 64,
            edge_seconds: 0,
            scale: 0.0,
            out: PathBuf::new(),
        },
        &log_dir,
    )
    .await?;

    let mut rig = pipeline::Rig::start(&log_dir).await?;

    eprintln!("bench: 4/6 the read API against a bare ntex handler");
    let reads = measure_reads(&log_dir, rig.system.read_url(), &rig.slots, &options).await?;

    eprintln!(
        "bench: 5/6 the partial pipeline (no verification, no notifications) at fixed arrival rates (open loop)"
    );
    let pipeline = measure_pipeline(&mut rig, &edge, &options).await?;
    let nats = rig.stop(&log_dir).await;

    eprintln!("bench: 6/6 replay of the intake log");
    let replay_figures = replay_speed::measure(&nats.url()).await?;
    let replay = ReplaySection {
        ratio_to_raw: replay_figures[1].records_per_second / replay_figures[0].records_per_second,
        figures: replay_figures,
    };

    let cost = Cost::of(
        costed_run(&pipeline.runs, &pipeline.sustained_tries),
        options.price_per_vcpu_hour,
    );
    let mut targets = deployed_targets(&deployed);
    targets.extend(targets_of(&edge, &reads, &pipeline, &options));
    let results = Results {
        machine: Machine::describe(),
        command: crate::command_line(),
        deployed,
        ceilings,
        edge,
        reads,
        pipeline,
        replay,
        cost,
        targets,
    };
    write_report(&options.out, &results, &markdown(&results))?;
    Ok(results)
}

/// The edge against a bare ntex handler, with the harness's generator and with wrk (when
/// installed), and against the atomic-batch ceiling of 256 records among `ceilings`.
async fn measure_edge(
    log_dir: &Path,
    ceilings: &[Ceiling],
    options: &Options,
) -> anyhow::Result<EdgeSection> {
    let atomic_256 = ceilings
        .iter()
        .find(|c| c.path.contains("atomic") && c.path.contains("256"))
        .map_or(f64::NAN, |c| c.records_per_second);
    let registrations = ((20_000.0 * options.scale) as u32).max(1_000);
    let figures = crate::edge::measure(registrations, 256, log_dir).await?;
    let edge_rate = figures[1].accepted_per_second;
    let wrk =
        crate::edge::measure_wrk_if_installed(options.read_seconds.ceil() as u32, log_dir).await?;
    Ok(EdgeSection {
        wrk_ratio_to_bare: crate::edge::wrk_ratio(&wrk),
        wrk,
        ratio_to_bare: edge_rate / figures[0].accepted_per_second,
        ratio_with_pipeline_to_bare: figures[2].accepted_per_second
            / figures[0].accepted_per_second,
        ratio_to_atomic_ceiling: edge_rate / atomic_256,
        figures,
    })
}

/// The pipeline's open-loop runs on `rig` (at the target rate, at half what the edge
/// accepts with the whole pipeline beside it, and a backlog), then the search for its
/// sustained rate.
async fn measure_pipeline(
    rig: &mut pipeline::Rig,
    edge: &EdgeSection,
    options: &Options,
) -> anyhow::Result<PipelineSection> {
    let replicas = rig.replicas();
    // Half of what the edge accepts with the whole pipeline beside it on this machine: a load
    // the machine sustains, so the latency is the path's, not a queue's.
    let sustained = edge.figures[2].accepted_per_second;
    let half = ((sustained / 2.0 / 100.0).round() as u32 * 100).max(100);
    let plans = [
        (
            format!("open loop at {}/s (the target)", options.target_rate),
            options.target_rate,
            options.seconds,
            Vec::new(),
        ),
        (
            format!("open loop at {half}/s (half the closed-loop rate with the partial pipeline)"),
            half,
            options.seconds,
            Vec::new(),
        ),
        (
            format!("backlog: {half}/s with the reservation processor paused"),
            half,
            options.seconds / 2.0,
            replicas,
        ),
    ];
    let mut runs = Vec::new();
    for (i, (name, rate, seconds, pause)) in plans.into_iter().enumerate() {
        runs.push(
            rig.open_loop(i as u32 + 1, name, rate, seconds, pause)
                .await?,
        );
    }
    // The sustained rate: from just under the most the edge accepted with the pipeline beside
    // it (closed loop, or overloaded at the target rate), see [`next_rate`].
    let most = sustained.max(runs[0].accepted_per_second);
    let first = ((most * 0.9 / 100.0).round() as u32 * 100).max(100);
    let sustained_tries = search_sustained(rig, first, options.seconds / 2.0).await?;
    let sustained_per_second = fastest_kept_up(&sustained_tries).map(|r| r.accepted_per_second);
    Ok(PipelineSection {
        runs,
        sustained_tries,
        sustained_per_second,
    })
}

/// Open-loop runs of `seconds` each, from `first`/s and on at the rates [`next_rate`] picks
/// (eight at the most), each run in order.
async fn search_sustained(
    rig: &mut pipeline::Rig,
    first: u32,
    seconds: f64,
) -> anyhow::Result<Vec<Run>> {
    let mut next = Some(first);
    let mut tries = Vec::new();
    let (mut kept, mut fell) = (None::<u32>, None::<u32>);
    for i in 0..8u32 {
        let Some(rate) = next else { break };
        let run = rig
            .open_loop(
                10 + i,
                format!("sustained? {rate}/s"),
                rate,
                seconds,
                Vec::new(),
            )
            .await?;
        let up = keeps_up(&run);
        eprintln!("bench: {rate}/s: every stage kept up: {up}");
        tries.push(run);
        if up {
            kept = kept.max(Some(rate));
        } else {
            fell = Some(fell.map_or(rate, |f| f.min(rate)));
        }
        next = next_rate(kept, fell);
    }
    Ok(tries)
}

impl Cost {
    /// The cost of 19 million registrations at `costed`'s CPU per registration.
    fn of(costed: &Run, price_per_vcpu_hour: f64) -> Cost {
        let vcpu_hours = costed.cpu_seconds_per_registration * 19e6 / 3600.0;
        Cost {
            from_run: costed.name.clone(),
            cpu_seconds_per_registration: costed.cpu_seconds_per_registration,
            price_per_vcpu_hour,
            vcpu_hours_for_19_million: vcpu_hours,
            usd_for_19_million: vcpu_hours * price_per_vcpu_hour,
        }
    }
}

/// The next rate the sustained-rate search tries, given the highest rate that kept up so far
/// and the lowest that fell behind: up or down by about a sixth until both are known, then
/// halfway between them, in steps of 100/s; `None` once they are 200/s apart or less.
pub fn next_rate(kept: Option<u32>, fell: Option<u32>) -> Option<u32> {
    let hundreds = |r: f64| ((r / 100.0).round() as u32 * 100).max(100);
    match (kept, fell) {
        (Some(k), Some(f)) if f <= k + 200 => None,
        (Some(k), Some(f)) => Some(hundreds(f64::from(k + f) / 2.0)),
        (Some(k), None) => Some(hundreds(f64::from(k) * 1.15)),
        (None, Some(f)) if f <= 100 => None,
        (None, Some(f)) => Some(hundreds(f64::from(f) * 0.85)),
        (None, None) => None,
    }
}

/// The run whose CPU per registration is the headline and the cost line: the fastest one at
/// which every stage kept up (CPU per registration falls as the rate rises and batches
/// fill), else the one at half the closed-loop rate.
fn costed_run<'a>(runs: &'a [Run], sustained_tries: &'a [Run]) -> &'a Run {
    fastest_kept_up(sustained_tries).unwrap_or(&runs[1])
}

/// The run among `tries` at which every stage kept up ([`keeps_up`]) with the most accepted
/// per second.
fn fastest_kept_up(tries: &[Run]) -> Option<&Run> {
    tries
        .iter()
        .filter(|r| keeps_up(r))
        .max_by(|a, b| a.accepted_per_second.total_cmp(&b.accepted_per_second))
}

fn peak(run: &Run, process: &str) -> f64 {
    run.usage.peak_rss_mib.get(process).copied().unwrap_or(0.0)
}

/// The floors the system as deploy/up starts it is held to, with what this run measured:
/// system CPU per registration (at the sustained rate's step, else the first step), the
/// sustained rate, and the stand-ins' CPU.
fn deployed_targets(d: &crate::deployed::SystemFigures) -> Vec<Target> {
    let costed = d
        .steps
        .iter()
        .filter(|s| Some(s.rate_per_second) == d.sustained_per_second)
        .chain(d.steps.first())
        .next();
    let Some(costed) = costed else {
        return Vec::new();
    };
    let by_process = costed
        .cost
        .cpu_us_per_registration
        .iter()
        .map(|(p, us)| format!("{p} {us:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        Target {
            target: "deployed: system CPU per registration ≤ 1,000 µs (nats-server, processors, projections, edge; catch-up included)".into(),
            measured: format!(
                "{:.0} µs at {} ({by_process})",
                costed.cost.system_us, costed.name
            ),
            met: costed.cost.system_us <= 1_000.0,
        },
        Target {
            target: "deployed: sustained ≥ 1,500/s (p99 202 → first message ≤ 5 s, nothing pending 5 s after)".into(),
            measured: format!(
                "{}; first rate that did not keep up: {}",
                d.sustained_per_second
                    .map_or("no rate tried kept up".into(), |r| format!("{r}/s")),
                d.first_failed_per_second
                    .map_or("none tried".into(), |r| format!("{r}/s"))
            ),
            met: d.sustained_per_second.is_some_and(|r| r >= 1_500),
        },
        Target {
            target: "deployed: stand-ins (registry simulator, receivers) ≤ 200 µs per registration".into(),
            measured: format!("{:.0} µs at {}", costed.cost.stand_ins_us, costed.name),
            met: costed.cost.stand_ins_us <= 200.0,
        },
    ]
}

/// The targets, each with what this run measured.
fn targets_of(
    edge: &EdgeSection,
    reads: &ReadsSection,
    pipeline: &PipelineSection,
    options: &Options,
) -> Vec<Target> {
    let (bare, hot) = (&reads.figures[0], &reads.figures[1]);
    vec![
        cpu_target(costed_run(&pipeline.runs, &pipeline.sustained_tries)),
        sustained_target(pipeline),
        edge_alone_target(edge),
        reads_target(
            "cold",
            &reads.figures[2],
            bare,
            reads.cold_ratio_to_bare,
            0.5,
        ),
        durable_ingest_target(edge),
        latency_target(&pipeline.runs[0], options.target_rate),
        reads_target("cached", hot, bare, reads.hot_ratio_to_bare, 0.8),
        cache_loads_target(hot),
        edge_memory_target(&pipeline.runs),
        flat_memory_target(&pipeline.runs[2]),
        downstream_target(edge, &pipeline.runs[0], &pipeline.runs[2]),
    ]
}

fn cpu_target(costed: &Run) -> Target {
    Target {
        target: "partial pipeline (no verification, no notifications): server CPU per registration ≤ 300 µs (aim ≤ 100 µs)".into(),
        measured: format!(
            "{:.0} µs at {}/s ({})",
            costed.cpu_seconds_per_registration * 1e6,
            costed.rate_per_second,
            costed
                .cpu_us_per_registration
                .iter()
                .map(|(p, us)| format!("{p} {us:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        met: costed.cpu_seconds_per_registration * 1e6 <= 300.0,
    }
}

fn sustained_target(pipeline: &PipelineSection) -> Target {
    Target {
        target: "partial pipeline (no verification, no notifications) sustained, every stage within 1 s of the 202, ≥ 6,000/s".into(),
        measured: match pipeline.sustained_per_second {
            Some(rate) => format!(
                "{rate:.0}/s (rates tried: {})",
                pipeline
                    .sustained_tries
                    .iter()
                    .map(|r| format!(
                        "{}/s {}",
                        r.rate_per_second,
                        if keeps_up(r) {
                            "kept up"
                        } else {
                            "fell behind"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "no rate tried kept up".into(),
        },
        met: pipeline.sustained_per_second.is_some_and(|r| r >= 6_000.0),
    }
}

fn edge_alone_target(edge: &EdgeSection) -> Target {
    // Judged with wrk when it ran: the harness's generator is the bare handler's limit.
    let (edge_alone_ratio, edge_alone, bare, generator) = match edge.wrk_ratio_to_bare {
        Some(ratio) => (
            ratio,
            edge.wrk[1].accepted_per_second,
            edge.wrk[0].accepted_per_second,
            "wrk",
        ),
        None => (
            edge.ratio_to_bare,
            edge.figures[1].accepted_per_second,
            edge.figures[0].accepted_per_second,
            "the harness's generator; wrk not installed",
        ),
    };
    Target {
        target: "edge alone ≥ 0.5× a bare ntex handler".into(),
        measured: format!("{edge_alone:.0}/s vs {bare:.0}/s: {edge_alone_ratio:.2}× ({generator})"),
        met: edge_alone_ratio >= 0.5,
    }
}

/// `what` availability reads (`read`) against the bare handler's (`bare`): their `ratio` at
/// least `at_least`.
fn reads_target(
    what: &str,
    read: &ReadFigure,
    bare: &ReadFigure,
    ratio: f64,
    at_least: f64,
) -> Target {
    Target {
        target: format!("{what} availability ≥ {at_least}× a bare ntex handler"),
        measured: format!(
            "{:.0}/s vs {:.0}/s: {ratio:.2}×",
            read.per_second, bare.per_second
        ),
        met: ratio >= at_least,
    }
}

fn durable_ingest_target(edge: &EdgeSection) -> Target {
    let edge_rate = edge.figures[1].accepted_per_second;
    Target {
        target: "ingest ≥ 20,000 durable accepted registrations/s".into(),
        measured: format!(
            "{edge_rate:.0}/s closed loop ({:.2}× the atomic-batch ceiling, {:.3}× a bare ntex handler)",
            edge.ratio_to_atomic_ceiling, edge.ratio_to_bare
        ),
        met: edge_rate >= 20_000.0,
    }
}

fn latency_target(at_target: &Run, target_rate: u32) -> Target {
    Target {
        target: format!(
            "partial pipeline (no verification, no notifications): p99 submission → reserved ≤ 50 ms at {target_rate}/s"
        ),
        measured: format!(
            "{:.0} accepted/s of {} due/s, p99 {:.0} ms, {} undecided",
            at_target.accepted_per_second,
            at_target.rate_per_second,
            at_target.latency_to_decision_ms.p99,
            at_target.undecided
        ),
        met: at_target.latency_to_decision_ms.p99 <= 50.0
            && at_target.accepted_per_second >= 0.99 * f64::from(at_target.rate_per_second)
            && at_target.undecided == 0,
    }
}

fn cache_loads_target(hot: &ReadFigure) -> Target {
    Target {
        target: "at most one SurrealDB read per key per cache period (1 s)".into(),
        measured: format!(
            "{} reads for {} keys in {:.0} s: {:.2} per key per second",
            hot.database_loads.unwrap_or(0),
            hot.keys,
            hot.seconds,
            hot.loads_per_key_per_second.unwrap_or(f64::NAN)
        ),
        // One load per key per expiry, plus the first: ≤ 1 per key per second and one.
        met: hot
            .loads_per_key_per_second
            .is_some_and(|l| l <= 1.0 + 1.0 / hot.seconds),
    }
}

fn edge_memory_target(runs: &[Run]) -> Target {
    let edge_peak = runs.iter().map(|r| peak(r, "ingest")).fold(0.0, f64::max);
    Target {
        target: "edge < 64 MB RSS at peak".into(),
        measured: format!("{edge_peak:.1} MiB peak over the pipeline runs"),
        met: edge_peak * 1.048_576 < 64.0,
    }
}

fn flat_memory_target(backlog: &Run) -> Target {
    let grew = |process: &str| {
        let first = backlog
            .usage
            .rss_timeline_mib
            .get(process)
            .and_then(|t| t.first())
            .map_or(0.0, |s| s.1);
        peak(backlog, process) - first
    };
    Target {
        target: "memory flat while the processors fall behind".into(),
        measured: format!(
            "backlog of {} registrations: edge +{:.1} MiB, nats-server +{:.1} MiB, reservation +{:.1} MiB, projections +{:.1} MiB (peak over start)",
            backlog.accepted,
            grew("ingest"),
            grew("nats-server"),
            grew("reservation-1"),
            grew("projections")
        ),
        met: grew("ingest") < 16.0 && grew("reservation-1") < 64.0,
    }
}

fn downstream_target(edge: &EdgeSection, at_target: &Run, backlog: &Run) -> Target {
    let edge_rate = edge.figures[1].accepted_per_second;
    let edge_with_pipeline = edge.figures[2].accepted_per_second;
    Target {
        target:
            "partial pipeline (no verification, no notifications): downstream keeps up with ingest"
                .into(),
        measured: format!(
            "at {} due/s the edge accepted {:.0}/s and decisions followed each 202 by p50 {:.0} / p99 {:.0} ms ({} undecided), projections {} after the last; a backlog of {} drained at {:.0} decisions/s, {:.1}× the {:.0}/s the edge accepts with the pipeline beside it ({:.1}× the edge alone)",
            at_target.rate_per_second,
            at_target.accepted_per_second,
            at_target.accept_to_decision_ms.p50,
            at_target.accept_to_decision_ms.p99,
            at_target.undecided,
            at_target
                .projected_after_seconds
                .map_or("not within 30 s".to_owned(), |s| format!("{s:.2} s")),
            backlog.accepted,
            backlog.decided_per_second,
            backlog.decided_per_second / edge_with_pipeline,
            edge_with_pipeline,
            backlog.decided_per_second / edge_rate,
        ),
        // Keeping up: at a rate beyond the edge, decisions stay within a second of the
        // 202s, the projections within a second of the decisions, and a backlog drains
        // faster than the edge fills it.
        met: at_target.accept_to_decision_ms.p99 <= 1000.0
            && at_target.undecided == 0
            && at_target.projected_after_seconds.is_some_and(|s| s <= 1.0)
            && backlog.decided_per_second >= edge_with_pipeline,
    }
}

/// Per registration, per run: server CPU by process, messages and bytes nats-server stored,
/// and its own counters of messages in and out.
fn per_registration_table<'a>(runs: impl Iterator<Item = &'a Run> + Clone) -> String {
    let Some(first) = runs.clone().next() else {
        return String::new();
    };
    let processes: Vec<&String> = first.cpu_us_per_registration.keys().collect();
    let kinds: Vec<(String, String)> = first
        .traffic
        .stored
        .iter()
        .map(|s| (s.stream.clone(), s.kind.clone()))
        .collect();
    let mut md = String::from(
        "\n### Per accepted registration\n\nServer CPU µs by process; the load generator's (the \
         benchmark's own process, on the same cores); the cores busy over the run, servers and \
         generator together, of the machine's; durable messages stored by kind and bytes stored \
         (nats-server's stream state); messages into and out of nats-server (its `/varz` \
         counters, without the benchmark's own decision watcher).\n\n| run | ",
    );
    let mut columns: Vec<String> = processes.iter().map(|p| format!("{p} µs")).collect();
    columns.push("CPU µs, all".into());
    columns.push("generator µs".into());
    columns.push("cores busy".into());
    columns.extend(kinds.iter().map(|(s, k)| format!("{k} ({s})")));
    columns.extend(
        [
            "messages stored",
            "bytes stored",
            "msgs in",
            "msgs out",
            "bytes out",
        ]
        .map(String::from),
    );
    md.push_str(&columns.join(" | "));
    md.push_str(" |\n| --- |");
    md.push_str(&" ---: |".repeat(columns.len()));
    md.push('\n');
    for run in runs {
        md.push_str(&format!("| {} |", run.name));
        for p in &processes {
            let us = run.cpu_us_per_registration.get(*p).copied().unwrap_or(0.0);
            md.push_str(&format!(" {us:.0} |"));
        }
        md.push_str(&format!(" {:.0} |", run.cpu_seconds_per_registration * 1e6));
        md.push_str(&format!(
            " {:.0} | {:.2} of {} |",
            run.generator_cpu_seconds * 1e6 / run.accepted.max(1) as f64,
            (run.usage.total_cpu_seconds() + run.generator_cpu_seconds)
                / run.watched_seconds.max(f64::EPSILON),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        for (stream, kind) in &kinds {
            let n = run
                .traffic
                .stored
                .iter()
                .find(|s| &s.stream == stream && &s.kind == kind)
                .map_or(0.0, |s| s.per_registration);
            md.push_str(&format!(" {n:.2} |"));
        }
        let t = &run.traffic;
        md.push_str(&format!(
            " {:.2} | {:.0} |",
            t.messages_per_registration, t.bytes_per_registration
        ));
        match &t.server_per_registration {
            Some(v) => md.push_str(&format!(
                " {:.1} | {:.1} | {:.0} |\n",
                v.in_msgs, v.out_msgs, v.out_bytes
            )),
            None => md.push_str(" – | – | – |\n"),
        }
    }
    md
}

/// Open-loop runs as Markdown: latency and rates, CPU seconds by process, and per accepted
/// registration (CPU by process, messages and bytes).
pub fn runs_markdown(runs: &[&Run]) -> String {
    let mut md = String::new();
    md.push_str("\n## Partial pipeline: no verification, no notifications (the chaos harness's services; open loop; latency from the scheduled send)\n\n| run | due/s | accepted/s | to 202 p50 / p99 ms | to decision p50 / p90 / p99 / max ms | 202 → decision p50 / p99 ms | undecided | decided/s | projected s after | CPU ms per registration | edge peak MiB |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for run in runs {
        let d = &run.latency_to_decision_ms;
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} / {:.0} / {:.0} | {:.0} / {:.0} | {} | {:.0} | {} | {:.2} | {:.1} |\n",
            run.name,
            run.rate_per_second,
            run.accepted_per_second,
            run.latency_to_accept_ms.p50,
            run.latency_to_accept_ms.p99,
            d.p50,
            d.p90,
            d.p99,
            d.max,
            run.accept_to_decision_ms.p50,
            run.accept_to_decision_ms.p99,
            run.undecided,
            run.decided_per_second,
            run.projected_after_seconds
                .map_or("not within 30 s".to_owned(), |s| format!("{s:.2}")),
            run.cpu_seconds_per_registration * 1000.0,
            peak(run, "ingest")
        ));
    }
    md.push_str("\nCPU seconds by process (all runs):\n\n| run | ");
    let names: Vec<&String> = runs
        .first()
        .map(|r| r.usage.cpu_seconds.keys().collect())
        .unwrap_or_default();
    md.push_str(
        &names
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    md.push_str(" |\n| --- |");
    md.push_str(&" ---: |".repeat(names.len()));
    md.push('\n');
    for run in runs {
        md.push_str(&format!("| {} |", run.name));
        for n in &names {
            md.push_str(&format!(
                " {:.1} |",
                run.usage.cpu_seconds.get(*n).copied().unwrap_or(0.0)
            ));
        }
        md.push('\n');
    }
    md.push_str(&per_registration_table(runs.iter().copied()));
    md
}

fn markdown(r: &Results) -> String {
    let mut md = format!(
        "{} Load generator on the same machine. \
         Figures, not gates: see `results.json` for every number and `results.png` for the \
         partial pipeline's latency distribution and throughput over time.\n",
        crate::heading("Rush-hour benchmark", &r.machine, &r.command)
    );
    md.push_str(&crate::deployed::system_markdown(&r.deployed));
    md.push_str(&crate::deployed::ceilings_markdown(
        &r.deployed,
        &r.ceilings,
        &r.edge.wrk,
    ));
    md.push_str("\n## Targets\n\n| target | measured | met |\n| --- | --- | --- |\n");
    for t in &r.targets {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            t.target,
            t.measured,
            if t.met { "yes" } else { "**no**" }
        ));
    }
    md.push_str("\n## Durable write ceilings (4 KiB records, one publisher)\n\n");
    md.push_str(&crate::ceilings::table(&r.ceilings));
    md.push_str("\n## Ingest edge (closed loop, 256 in flight, valid 4 kB registrations)\n\n");
    md.push_str(&crate::edge::table(&r.edge.figures));
    md.push_str(&format!(
        "\nEdge alone ÷ bare handler: {:.3}×; with the partial pipeline beside it: {:.3}×; edge alone ÷ atomic batches of 256: {:.2}×.\n",
        r.edge.ratio_to_bare, r.edge.ratio_with_pipeline_to_bare, r.edge.ratio_to_atomic_ceiling
    ));
    md.push_str(&crate::edge::wrk_markdown(&r.edge.wrk));
    md.push_str("\n## Read API (closed loop, 64 in flight)\n\n| target | reads/s | p50 ms | p99 ms | SurrealDB reads |\n| --- | ---: | ---: | ---: | ---: |\n");
    for f in &r.reads.figures {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |\n",
            f.target,
            f.per_second,
            f.latency_ms.p50,
            f.latency_ms.p99,
            f.database_loads.map_or("–".into(), |l| l.to_string())
        ));
    }
    md.push_str(&format!(
        "\nHot ÷ bare: {:.2}×; cold ÷ bare: {:.2}×.\n",
        r.reads.hot_ratio_to_bare, r.reads.cold_ratio_to_bare
    ));
    md.push_str(&runs_markdown(
        &r.pipeline
            .runs
            .iter()
            .chain(&r.pipeline.sustained_tries)
            .collect::<Vec<_>>(),
    ));
    md.push_str("\n## Replay of the intake log\n\n| reading | records/s | MB/s | records |\n| --- | ---: | ---: | ---: |\n");
    for f in &r.replay.figures {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            f.what, f.records_per_second, f.megabytes_per_second, f.records
        ));
    }
    md.push_str(&format!(
        "\nDecoded ÷ raw: {:.2}×.\n\n## Cost\n\n{:.2} ms of server CPU per registration ({}), so 19 million registrations need {:.1} vCPU-hours: **{:.2} USD** at {} USD per vCPU-hour (compute only, at the measured efficiency; the Polish design estimated 390 USD).\n",
        r.replay.ratio_to_raw,
        r.cost.cpu_seconds_per_registration * 1000.0,
        r.cost.from_run,
        r.cost.vcpu_hours_for_19_million,
        r.cost.usd_for_19_million,
        r.cost.price_per_vcpu_hour
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a machine that keeps up exactly at rates ≤ `limit`.
    fn search(start: u32, limit: u32) -> (Vec<u32>, Option<u32>) {
        let (mut kept, mut fell, mut tried) = (None, None, Vec::new());
        let mut rate = Some(start);
        for _ in 0..8 {
            let Some(r) = rate else { break };
            tried.push(r);
            if r <= limit {
                kept = kept.max(Some(r));
            } else {
                fell = Some(fell.map_or(r, |f: u32| f.min(r)));
            }
            rate = next_rate(kept, fell);
        }
        (tried, kept)
    }

    #[test]
    fn the_sustained_search_finds_the_limit_within_two_hundred_a_second() {
        assert_eq!(
            search(5_300, 4_950),
            (vec![5_300, 4_500, 4_900, 5_100], Some(4_900))
        );
        for (start, limit) in [(5_300, 2_000), (3_000, 4_800), (5_000, 5_000), (900, 120)] {
            let (tried, kept) = search(start, limit);
            let kept = kept.unwrap_or(0);
            assert!(kept <= limit, "{start} {limit}: {tried:?}");
            assert!(limit - kept < 200, "{start} {limit}: {tried:?}");
            assert!(tried.len() <= 8, "{start} {limit}: {tried:?}");
        }
        // Nothing keeps up: the search gives up after eight tries, each lower.
        let (tried, kept) = search(1_000, 0);
        assert_eq!(kept, None);
        assert_eq!(tried.len(), 8);
        assert!(tried.windows(2).all(|w| w[1] < w[0]), "{tried:?}");
    }
}
