//! `scale`: every operation whose cost grows with the campaign, on a real system filled to
//! each of `--sizes` registrations, fitted and extrapolated to 19 million
//! (`deploy/bench-scale`; see `bench::scale`). Writes `deploy/benchmarks/reports/scale.{json,md}`.
//! Reports figures; fails only if what it reads back is wrong (a rebuilt state, a missing
//! claim or record).

use clap::Parser;

/// National scale: each operation measured at several campaign sizes.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Campaign sizes in registrations, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [250_000u64, 1_000_000, 2_000_000])]
    sizes: Vec<u64>,
    /// Decisions between the largest region's snapshots: the tail a takeover folds.
    #[arg(long, default_value_t = processors::reservation::SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// Latency samples of each read per size.
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    /// Sizes (among --sizes) at which the projections are also rebuilt into, and read from,
    /// a SurrealDB server (`deploy/install-surreal` builds it); empty: none.
    #[arg(long, value_delimiter = ',', default_values_t = [250_000u64])]
    server_sizes: Vec<u64>,
    /// Sizes (among --sizes) at which a three-node cluster is filled too and one node's
    /// restart timed; empty: none.
    #[arg(long, value_delimiter = ',', default_values_t = [250_000u64, 1_000_000])]
    cluster_sizes: Vec<u64>,
    /// Where to write the JSON report (the Markdown one goes beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/scale.json")]
    out: std::path::PathBuf,
    /// Instead of the sizes: the read API's availability table at these slot counts
    /// (190,000 is 19 million registrations at 100 places a slot), written to
    /// `--slot-table-out`.
    #[arg(long, value_delimiter = ',')]
    slot_table: Vec<u64>,
    /// Decisions applied between two loads of the table, comma-separated: the peak's 20,000
    /// a second, and about what one projections writer applies here in a second.
    #[arg(long, value_delimiter = ',', default_values_t = [20_000u64, 2_500])]
    decisions_per_period: Vec<u64>,
    /// Loads timed after that many decisions, per slot count.
    #[arg(long, default_value_t = 10)]
    periods: usize,
    /// Where the slot-table report goes (the Markdown one beside it).
    #[arg(long, default_value = "deploy/benchmarks/reports/slot-table.json")]
    slot_table_out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.slot_table.is_empty() {
        return slot_table(&cli).await;
    }
    let mut sizes = cli.sizes.clone();
    sizes.sort_unstable();
    let options = bench::scale::Options {
        sizes: sizes.clone(),
        snapshot_every: cli.snapshot_every,
        reads: cli.reads,
        server_sizes: cli.server_sizes.clone(),
        cluster_sizes: cli.cluster_sizes.clone(),
    };
    let machine = bench::contention::report::Machine::describe();
    let mut figures = Vec::new();
    for size in sizes {
        figures.push(bench::scale::measure_size(&options, size).await?);
        // Each size's report as it comes, so a long run leaves what it measured.
        let report = bench::scale::report::ScaleReport::new(machine.clone(), figures.clone());
        let command = bench::script_command("deploy/bench-scale");
        let markdown = report.markdown(&command);
        bench::contention::report::write_report(&cli.out, &report, &markdown)?;
        println!("{markdown}");
    }
    Ok(())
}

/// `--slot-table`: the availability table at each slot count, its report written as each
/// count finishes.
async fn slot_table(cli: &Cli) -> anyhow::Result<()> {
    let machine = bench::contention::report::Machine::describe();
    let mut counts = cli.slot_table.clone();
    counts.sort_unstable();
    let mut report = bench::scale::slot_table::SlotTableReport {
        machine,
        counts: Vec::new(),
    };
    for slots in counts {
        report.counts.push(
            bench::scale::slot_table::measure(slots, &cli.decisions_per_period, cli.periods)
                .await?,
        );
        let command = bench::script_command("deploy/bench-scale");
        let markdown = report.markdown(&command);
        bench::contention::report::write_report(&cli.slot_table_out, &report, &markdown)?;
        println!("{markdown}");
    }
    Ok(())
}
