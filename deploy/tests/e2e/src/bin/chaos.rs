//! `chaos`: runs the chaos scenario (`chaos run`), the failover scenario on a three-node
//! cluster (`chaos failover`), or one service as a child of either
//! (`chaos serve <service>`, the same code as the service's own binary).

use clap::{Parser, Subcommand};

/// Kill reservation replicas and nats-server while citizens register, then check every
/// invariant from the event log and the projection. Exits 1 on any violation.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the scenario and prints the verdict.
    Run(e2e::chaos::Options),
    /// Runs the failover scenario on a three-node cluster and prints the verdict.
    Failover(e2e::failover::Options),
    /// Runs one service (started by `run`; not meant to be typed).
    #[command(hide = true)]
    Serve {
        // Boxed: a service's whole command line is far larger than the other variants.
        #[command(subcommand)]
        service: Box<e2e::serve::Service>,
    },
}

#[ntex::main]
async fn main() -> anyhow::Result<()> {
    // The services' parser: a wrong value from a REG_* variable is reported under its name.
    let cli: Cli = streams::settings::parse();
    match cli.command {
        Command::Run(options) => {
            let verdict = e2e::serve::until_interrupted(e2e::chaos::run(options)).await?;
            verdict.print();
            if !verdict.violations.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Failover(options) => {
            let verdict = e2e::serve::until_interrupted(e2e::failover::run(options)).await?;
            verdict.print();
            if !verdict.violations.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { service } => e2e::serve::serve(*service).await,
    }
}
