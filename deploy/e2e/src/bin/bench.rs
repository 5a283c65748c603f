//! `bench`: the throughput benchmark (`deploy/bench`). Today it measures the durable write
//! ceilings; the edge, read API, pipeline and replay figures will be set beside them.

use clap::{Parser, Subcommand};

/// Measure the durable write ceilings of this machine (JetStream one by one, atomic batches,
/// packed messages; the disk's synchronous write rate) and write bench/ceilings.json and .md.
/// Reports figures; never fails on a timing.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// JetStream's and the disk's durable write ceilings.
    Ceilings {
        /// Multiplies every record count (1.0: about a minute here).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Where to write the JSON report (the Markdown one goes beside it).
        #[arg(long, default_value = "bench/ceilings.json")]
        out: std::path::PathBuf,
    },
}

#[derive(serde::Serialize)]
struct Report {
    machine: e2e::contention::report::Machine,
    command: String,
    ceilings: Vec<e2e::ceilings::Ceiling>,
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ceilings { scale, out } => {
            let ceilings = e2e::ceilings::measure(scale).await?;
            let report = Report {
                machine: e2e::contention::report::Machine::describe(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                ceilings,
            };
            let mut md = format!(
                "# Durable write ceilings\n\n{}\n\n\
                 Command: `{}`. Records of {} bytes, one publisher.\n\n\
                 | write path | durable | records | records/s | MB/s |\n| --- | --- | ---: | ---: | ---: |\n",
                report.machine.summary(),
                report.command,
                e2e::ceilings::RECORD_BYTES
            );
            for c in &report.ceilings {
                md.push_str(&format!(
                    "| {} | {} | {} | {:.0} | {:.0} |\n",
                    c.path,
                    if c.durable { "yes" } else { "no" },
                    c.records,
                    c.records_per_second,
                    c.megabytes_per_second
                ));
            }
            e2e::contention::report::write_report(&out, &report, &md)?;
            println!("\n{md}");
            Ok(())
        }
    }
}
