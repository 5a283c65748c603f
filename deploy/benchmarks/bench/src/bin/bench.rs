//! `bench`: the rush-hour benchmark (`deploy/bench`). `bench all` measures everything in one
//! run and writes `deploy/benchmarks/reports/results.{json,md}` (see `bench::results`); `ceilings` and `edge` are
//! quick looks at one part.

use clap::{Parser, Subcommand};

/// The rush-hour benchmark: durable write ceilings, the ingest edge and the read API against
/// bare ntex handlers, the pipeline at fixed arrival rates, replay speed and the cost line,
/// in one run (`all`, into deploy/benchmarks/reports/results.*). Reports figures; never fails on a timing.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything, in one run, into deploy/benchmarks/reports/results.{json,md}: the system as
    /// deploy/up starts it first (the headline), then the ceilings, the edge, the read API and
    /// the partial pipeline (no verification, no notifications).
    All(bench::results::Options),
    /// The system exactly as deploy/up starts it (started here on free ports, stopped after):
    /// open-loop steps at increasing rates up to the sustained rate, one closed-loop wrk run,
    /// CPU per registration by process, messages per registration, latency to the citizen's
    /// first message; beside the edge alone and JetStream's publish ceiling. Into
    /// deploy/benchmarks/reports/deployed.{json,md}.
    Deployed(bench::deployed::Options),
    /// The opening minute: one region's waiting room on, simulated citizens arriving at
    /// `surge` times its admission rate (some before the opening) and following the protocol;
    /// admissions, order, `503`s and latency beside the same registrations without a room,
    /// and the edge's cost per ticket and poll beside a bare ntex handler. Into
    /// deploy/benchmarks/reports/waiting-room.{json,md}.
    WaitingRoom(bench::waiting_room::Options),
    /// JetStream's and the disk's durable write ceilings.
    Ceilings {
        /// Multiplies every record count (1.0: about a minute here).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Where to write the JSON report (the Markdown one goes beside it).
        #[arg(long, default_value = "deploy/benchmarks/reports/ceilings.json")]
        out: std::path::PathBuf,
    },
    /// The durable write ceiling of a three-node R3 cluster (fsync always, and default
    /// fsync) beside the single node's, atomic batches of 4 KiB records.
    Cluster {
        /// Multiplies the record counts (1.0: 100,000 records per measurement).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Times every measurement is repeated (interleaved).
        #[arg(long, default_value_t = 2)]
        rounds: u32,
        /// Where to write the JSON report (the Markdown one goes beside it).
        #[arg(long, default_value = "deploy/benchmarks/reports/cluster.json")]
        out: std::path::PathBuf,
    },
    /// The ingest edge end to end against a bare ntex handler, same load generator.
    Edge {
        /// Registrations sent to each target.
        #[arg(long, default_value_t = 20_000)]
        registrations: u32,
        /// Requests in flight (closed loop).
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seconds of each wrk run (bare handler, edge alone), if wrk is installed.
        #[arg(long, default_value_t = 10)]
        wrk_seconds: u32,
        /// Where to write the JSON report (the Markdown one goes beside it).
        #[arg(long, default_value = "deploy/benchmarks/reports/edge.json")]
        out: std::path::PathBuf,
    },
    /// The partial pipeline (edge, reservation, projections, nats-server: no verification,
    /// no notifications) at one arrival rate,
    /// open loop, `runs` times on one system: CPU per registration by process, messages and
    /// bytes per registration, latency. For comparing one change's cost quickly (a full
    /// `all` takes six minutes).
    Pipeline {
        /// Submissions per second.
        #[arg(long, default_value_t = 4_300)]
        rate: u32,
        /// Seconds of arrivals in each run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Runs, one after the other.
        #[arg(long, default_value_t = 2)]
        runs: u32,
        /// Where to write the JSON report (the Markdown one goes beside it).
        #[arg(long, default_value = "deploy/benchmarks/reports/pipeline.json")]
        out: std::path::PathBuf,
    },
    /// Runs one service (started by the benchmark; not meant to be typed).
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        service: Box<e2e::serve::Service>,
    },
}

/// A report as written: the machine and the command line, then `figures`' own fields.
#[derive(serde::Serialize)]
struct Report<T: serde::Serialize> {
    machine: bench::contention::report::Machine,
    command: String,
    #[serde(flatten)]
    figures: T,
}

/// Writes `figures` to `out` (JSON, and Markdown beside it) under `title`, `markdown` giving
/// what follows the heading, and prints the Markdown.
fn publish<T: serde::Serialize>(
    out: &std::path::Path,
    title: &str,
    figures: T,
    markdown: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let report = Report {
        machine: bench::contention::report::Machine::describe(),
        command: bench::command_line(),
        figures,
    };
    let md = format!(
        "{}{}",
        bench::heading(title, &report.machine, &report.command),
        markdown(&report.figures)
    );
    bench::contention::report::write_report(out, &report, &md)?;
    println!("\n{md}");
    Ok(())
}

#[derive(serde::Serialize)]
struct EdgeFigures {
    figures: Vec<bench::edge::EdgeFigure>,
    /// The edge's accepted/s over the bare handler's.
    ratio_to_bare: f64,
    /// The bare handler and the edge alone driven by wrk (empty without wrk).
    wrk: Vec<bench::edge::EdgeFigure>,
    /// The edge's accepted/s over the bare handler's, both driven by wrk.
    wrk_ratio_to_bare: Option<f64>,
}

#[derive(serde::Serialize)]
struct PipelineRuns {
    runs: Vec<bench::pipeline::Run>,
}

#[derive(serde::Serialize)]
struct Ceilings {
    ceilings: Vec<bench::ceilings::Ceiling>,
}

/// Writes `ceilings` to `out` under `title`, saying how they were written (`how`).
fn ceilings_report(
    ceilings: Vec<bench::ceilings::Ceiling>,
    title: &str,
    how: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    publish(out, title, Ceilings { ceilings }, |c| {
        format!(
            " Records of {} bytes, {how}.\n\n{}",
            bench::ceilings::RECORD_BYTES,
            bench::ceilings::table(&c.ceilings)
        )
    })
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::All(options) => all(options).await,
        Command::Deployed(options) => deployed(options).await,
        Command::WaitingRoom(options) => {
            let log_dir = bench::log_dir()?;
            let figures =
                e2e::serve::until_interrupted(bench::waiting_room::measure(&options, &log_dir))
                    .await?;
            publish(
                &options.out,
                "The opening minute: a waiting room under a surge",
                figures,
                bench::waiting_room::markdown,
            )
        }
        Command::Ceilings { scale, out } => {
            let ceilings = e2e::serve::until_interrupted(bench::ceilings::measure(scale)).await?;
            ceilings_report(ceilings, "Durable write ceilings", "one publisher", &out)
        }
        Command::Cluster { scale, rounds, out } => {
            let ceilings =
                e2e::serve::until_interrupted(bench::ceilings::measure_cluster(scale, rounds))
                    .await?;
            ceilings_report(
                ceilings,
                "Durable write ceilings: one node and a three-node cluster",
                "one publisher, atomic batches; every node on this machine, on loopback",
                &out,
            )
        }
        Command::Serve { service } => e2e::serve::serve(*service).await,
        Command::Pipeline {
            rate,
            seconds,
            runs,
            out,
        } => pipeline(rate, seconds, runs, &out).await,
        Command::Edge {
            registrations,
            concurrency,
            wrk_seconds,
            out,
        } => edge(registrations, concurrency, wrk_seconds, &out).await,
    }
}

/// `bench all`: everything, then the Markdown report and how many targets were met.
async fn all(options: bench::results::Options) -> anyhow::Result<()> {
    let out = options.out.clone();
    let results = e2e::serve::until_interrupted(bench::results::run(options)).await?;
    println!(
        "\n{}",
        std::fs::read_to_string(out.with_extension("md")).unwrap_or_default()
    );
    let met = results.targets.iter().filter(|t| t.met).count();
    println!("{met} of {} targets met.", results.targets.len());
    Ok(())
}

/// `bench deployed`: the system as deploy/up starts it, beside its ceilings.
async fn deployed(options: bench::deployed::Options) -> anyhow::Result<()> {
    let figures = e2e::serve::until_interrupted(bench::deployed::run(&options)).await?;
    publish(
        &options.out,
        "The system as deploy/up starts it",
        figures,
        |d| {
            format!(
                " Load generator on the same machine. Figures, not gates.\n{}{}",
                bench::deployed::system_markdown(&d.system),
                bench::deployed::ceilings_markdown(&d.system, &d.ceilings, &d.edge_wrk)
            )
        },
    )
}

/// `bench pipeline`: `runs` open-loop runs of the partial pipeline at `rate`.
async fn pipeline(rate: u32, seconds: f64, runs: u32, out: &std::path::Path) -> anyhow::Result<()> {
    let log_dir = bench::log_dir()?;
    let runs = e2e::serve::until_interrupted(async {
        let mut rig = bench::pipeline::Rig::start(&log_dir).await?;
        let mut done = Vec::new();
        for i in 0..runs {
            let name = format!("open loop at {rate}/s, run {}", i + 1);
            done.push(
                rig.open_loop(i + 1, name, rate, seconds, Vec::new())
                    .await?,
            );
        }
        rig.stop(&log_dir).await;
        anyhow::Ok(done)
    })
    .await?;
    publish(
        out,
        &format!("The partial pipeline (no verification, no notifications) at {rate}/s"),
        PipelineRuns { runs },
        |p| {
            format!(
                "\n{}",
                bench::results::runs_markdown(&p.runs.iter().collect::<Vec<_>>())
            )
        },
    )
}

/// `bench edge`: the edge against a bare ntex handler, with the harness's generator and with
/// wrk when installed.
async fn edge(
    registrations: u32,
    concurrency: usize,
    wrk_seconds: u32,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let log_dir = bench::log_dir()?;
    let (figures, wrk) = e2e::serve::until_interrupted(async {
        let figures = bench::edge::measure(registrations, concurrency, &log_dir).await?;
        let wrk = bench::edge::measure_wrk_if_installed(wrk_seconds, &log_dir).await?;
        anyhow::Ok((figures, wrk))
    })
    .await?;
    let ratio_to_bare = figures[1].accepted_per_second / figures[0].accepted_per_second;
    let figures = EdgeFigures {
        figures,
        ratio_to_bare,
        wrk_ratio_to_bare: bench::edge::wrk_ratio(&wrk),
        wrk,
    };
    publish(
        out,
        "Ingest edge against a bare ntex handler",
        figures,
        |f| {
            format!(
                " Valid 4 kB registrations, closed loop, load generator on the same machine.\n\n{}\nEdge alone ÷ bare handler: {:.3}×\n{}",
                bench::edge::table(&f.figures),
                f.ratio_to_bare,
                bench::edge::wrk_markdown(&f.wrk)
            )
        },
    )
}
