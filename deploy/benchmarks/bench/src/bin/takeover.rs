//! `takeover`: takeover time at a million decisions in one region, by a full fold and from a
//! snapshot plus its tail, and one replica's decide rate (`deploy/bench-takeover`; see
//! `bench::takeover`). Writes `deploy/benchmarks/reports/takeover.{json,md}`. Reports figures; fails only if a
//! rebuilt state differs from the live one.

use clap::Parser;

/// Takeover time at national scale: a region's decision log of `--decisions`, rebuilt from
/// the start and from the snapshot `--snapshot-every` decisions before its end.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Decisions in the region's log.
    #[arg(long, default_value_t = 1_000_000)]
    decisions: u64,
    /// Slots in the region (one date per location).
    #[arg(long, default_value_t = 10_000)]
    slots: u32,
    /// Places per slot.
    #[arg(long, default_value_t = 50)]
    capacity: u32,
    /// Decisions between snapshots: the tail a takeover folds.
    #[arg(long, default_value_t = processors::reservation::SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Rebuilds of each kind (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Submissions a real replica decides with fsync'd writes (0: skip).
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/takeover.json")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = bench::takeover::Options {
        decisions: cli.decisions,
        slots: cli.slots,
        capacity: cli.capacity,
        snapshot_every: cli.snapshot_every,
        runs: cli.runs,
        backlog: cli.backlog,
    };
    let report = bench::takeover::measure(&options).await?;
    let command = bench::script_command("deploy/bench-takeover");
    let markdown = report.markdown(&command);
    bench::contention::report::write_report(&cli.out, &report, &markdown)?;
    println!("{markdown}");
    Ok(())
}
