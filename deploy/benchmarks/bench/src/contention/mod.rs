//! The contention benchmark: the same workloads against this project's reservation design
//! (a fenced, batched decider over the JetStream intake log) and against the seed's design (a
//! Redis `WATCH`/`MULTI` transaction per submission, AOF `appendfsync always`), in one run.
//! It reports; it never fails on a timing. It fails only if a design overbooks or, for this
//! project, breaks first come, first served.
//!
//! | module | role |
//! | --- | --- |
//! | [`workload`] | who contends for which slot, in which order |
//! | [`jetstream`] | this project: submissions through the group-committing appender, decisions by the reservation processor as a child process |
//! | [`redis_seed`] | the seed: a worker pool running the optimistic transaction |
//! | [`report`] | percentiles, the machine, `deploy/benchmarks/reports/contention.json` and `.md` |

pub mod jetstream;
pub mod redis_seed;
pub mod report;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// What a benchmark run does.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Contenders per workload.
    #[arg(long, default_value_t = 10_000)]
    pub contenders: u32,
    /// Slots per workload (one slot in `hot`, spread over locations in `spread`).
    #[arg(long, default_value_t = 1_000)]
    pub capacity: u32,
    /// Locations of the `spread` workload.
    #[arg(long, default_value_t = 50)]
    pub spread_locations: u32,
    /// Contenders handed to the system at once (HTTP workers, in the seed's terms).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Group commit of the submissions: atomic batches in flight at once (the edge's
    /// `REG_APPEND_IN_FLIGHT`).
    #[arg(long, default_value_t = streams::appender::AppenderOptions::default().max_in_flight)]
    pub append_in_flight: usize,
    /// Seed of the `spread` workload's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which designs to run.
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/contention.json")]
    pub out: PathBuf,
}

/// Which designs a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// Both.
    All,
    /// This project's design only.
    Jetstream,
    /// The seed's Redis design only.
    Redis,
}

/// One design on one workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// `jetstream` or `redis`.
    pub design: &'static str,
    /// `hot` or `spread`.
    pub workload: &'static str,
    /// Contenders.
    pub contenders: u32,
    /// Slots in all.
    pub capacity: u32,
    /// Wall time from the first contender handed over to the last decision.
    pub seconds: f64,
    /// Contenders decided per second.
    pub decisions_per_second: f64,
    /// Submit-to-decision latency percentiles, milliseconds.
    pub latency_ms: report::Percentiles,
    /// Transactions that aborted and were retried (Redis), or fenced writes (JetStream).
    pub aborted: u64,
    /// Durable writes (fsyncs the design asked for): EXECs, or decision batches.
    pub durable_writes: u64,
    /// Granted slots.
    pub reserved: u64,
    /// Grants beyond a slot's capacity (must be 0).
    pub overbooked: u64,
    /// Winners that were not among the earliest arrivals of their slot (0 means first come,
    /// first served held).
    pub out_of_order_winners: u64,
}

/// Who got the places of one design on one workload, counted after the run.
pub struct Grants {
    /// Places granted.
    pub reserved: u64,
    /// Places granted beyond a slot's capacity (must be 0).
    pub overbooked: u64,
    /// Places granted to contenders not among their slot's earliest arrivals.
    pub out_of_order_winners: u64,
}

/// How long a design may take to decide every contender before the run is declared stuck.
pub const DEADLINE: Duration = Duration::from_secs(300);

/// Runs every workload against the chosen designs, writes the report, and fails if a design
/// overbooked or this project broke first come, first served.
pub async fn run(options: Options) -> anyhow::Result<report::Report> {
    let log_dir = tempfile::Builder::new()
        .prefix("contention-logs-")
        .tempdir()
        .context("Failed to create a log directory")?
        .keep();
    println!("contention: logs in {}", log_dir.display());
    let mut results = Vec::new();
    for workload in [workload::hot(&options), workload::spread(&options)] {
        for design in options.only.designs() {
            results.push(measure(design, &workload, &options, &log_dir).await?);
        }
    }
    let report = report::Report::new(results);
    report.write(&options.out)?;
    println!("\n{}", report.markdown());
    println!("contention: wrote {}", options.out.display());
    ensure_correct(&report).map(|()| report)
}

impl Only {
    /// The designs to run, in order.
    fn designs(self) -> &'static [&'static str] {
        match self {
            Only::All => &["jetstream", "redis"],
            Only::Jetstream => &["jetstream"],
            Only::Redis => &["redis"],
        }
    }
}

/// One design (`jetstream` or `redis`) on one workload, said as it starts and ends.
async fn measure(
    design: &str,
    workload: &workload::Workload,
    options: &Options,
    log_dir: &std::path::Path,
) -> anyhow::Result<Measured> {
    println!(
        "contention: {} contenders for {} slots ({}) against {design} ...",
        workload.contenders.len(),
        workload.capacity(),
        workload.name
    );
    let measured = match design {
        "jetstream" => jetstream::measure(workload, options, log_dir).await?,
        _ => redis_seed::measure(workload, options, log_dir).await?,
    };
    println!(
        "contention:   {:.0} decisions/s, p50 {:.1} ms, p99 {:.1} ms, {} aborted, {} reserved, {} overbooked",
        measured.decisions_per_second,
        measured.latency_ms.p50,
        measured.latency_ms.p99,
        measured.aborted,
        measured.reserved,
        measured.overbooked
    );
    Ok(measured)
}

/// Fails if a design overbooked, or this project granted out of first come, first served
/// (the seed's design makes no such promise).
fn ensure_correct(report: &report::Report) -> anyhow::Result<()> {
    let broken: Vec<String> = report
        .results
        .iter()
        .filter(|m| m.overbooked > 0 || (m.design == "jetstream" && m.out_of_order_winners > 0))
        .map(|m| format!("{} on {}", m.design, m.workload))
        .collect();
    anyhow::ensure!(
        broken.is_empty(),
        "overbooking or out-of-order grants: {}",
        broken.join(", ")
    );
    Ok(())
}
