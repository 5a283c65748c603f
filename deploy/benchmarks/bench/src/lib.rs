//! The benchmarks: each figure measured beside its ceiling in the same run, on real servers.
//!
//! - [`contention`]: the contention benchmark (`deploy/bench-contention`), this project's
//!   reservation design against the seed's Redis `WATCH`/`MULTI` design.
//! - [`deployed`]: the system exactly as `deploy/up` starts it (verification, notifications,
//!   the stand-ins beside it), its sustained rate, CPU per registration by process, messages
//!   and latency to the citizen's first message (`deploy/bench deployed`), beside its ceilings.
//! - [`ceilings`]: JetStream's and the disk's durable write ceilings (`deploy/bench`), the
//!   figures every throughput claim is set beside.
//! - [`edge`]: the ingest edge end to end against a bare ntex handler (`deploy/bench edge`).
//! - [`pipeline`]: the whole pipeline at a fixed arrival rate (open loop), latency to the
//!   stored decision, CPU per registration and memory ([`procstat`]).
//! - [`reads`]: the read API's availability, hot and cold, against a bare ntex handler.
//! - [`replay_speed`]: how fast the intake log reads back, raw and decoded.
//! - [`scale`]: every operation whose cost grows with the campaign, measured on a system
//!   filled to several sizes and extrapolated to 19 million (`deploy/bench-scale`).
//! - [`takeover`]: takeover time at a million decisions in one region, full fold against
//!   snapshot plus tail, and one replica's decide rate (`deploy/bench-takeover`).
//! - [`traffic`]: messages and bytes nats-server stored and moved per registration, from its
//!   own statistics.
//! - [`results`]: all of the above in one run, into `deploy/benchmarks/reports/results.{json,md}` (`deploy/bench`).
//!
//! The services start as child processes through [`e2e::serve`].
#![forbid(unsafe_code)]

pub mod ceilings;
pub mod contention;
pub mod deployed;
pub mod edge;
pub mod pipeline;
pub mod procstat;
pub mod reads;
pub mod replay_speed;
pub mod results;
pub mod scale;
pub mod takeover;
pub mod traffic;
pub mod waiting_room;

/// The system the benchmarks measure (edge, one reservation replica, projections) against
/// `nats_url`, as deployed, where the chaos harness differs:
/// - the projections on an embedded SurrealKV store on disk (`<log_dir>/surreal`, removed by
///   [`remove_store`]), not the harness's in-memory one;
/// - snapshots at the default interval: the harness's frequent ones (there so the chaos
///   run's takeovers load snapshots too) would re-encode the region's state every 200
///   decisions and be measured as the reservation processor's cost.
pub async fn system(
    nats_url: &str,
    log_dir: &std::path::Path,
) -> anyhow::Result<e2e::chaos::services::System> {
    let store = format!("surrealkv://{}", log_dir.join("surreal").display());
    e2e::chaos::services::System::start_configured(
        nats_url,
        log_dir,
        1,
        vec![("REG_SURREAL_ENDPOINT".into(), store)],
        vec![(
            "REG_SNAPSHOT_EVERY".into(),
            processors::reservation::SNAPSHOT_EVERY.to_string(),
        )],
        (0, ""),
    )
    .await
}

/// A NATS URL nothing listens on, for the bare handlers (they need none).
pub const NO_NATS: &str = "nats://127.0.0.1:1";

/// `service` of this binary (`bench serve <service>`) against `nats_url`, logging to
/// `<log_dir>/<name>.log`, once it answers `/readyz`.
pub async fn started(
    nats_url: &str,
    log_dir: &std::path::Path,
    name: &str,
    service: &str,
) -> anyhow::Result<e2e::chaos::services::Process> {
    let exe = std::env::current_exe()?;
    let http = ntex::client::Client::new().await;
    let mut process = e2e::chaos::services::spawn(&exe, nats_url, log_dir, name, service)?;
    e2e::chaos::services::wait_ready(&http, &mut process).await?;
    Ok(process)
}

/// A directory for the services' logs, kept after the run (its path is printed).
pub fn log_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix("bench-logs-")
        .tempdir()?
        .keep();
    eprintln!("bench: service logs in {}", dir.display());
    Ok(dir)
}

/// The command line as reports quote it: the script that runs this binary (`deploy/bench`)
/// and this process's arguments.
pub fn command_line() -> String {
    script_command("deploy/bench")
}

/// How a report quotes the script that ran it: `script` and this process's arguments.
pub fn script_command(script: &str) -> String {
    std::iter::once(script.to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A client of the nats-server at `url`, the streams set up as the services set them up
/// (one replica).
pub async fn connect_with_streams(
    url: &str,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    use anyhow::Context as _;
    let client = async_nats::connect(url)
        .await
        .context("Failed to connect to nats-server")?;
    let js = async_nats::jetstream::new(client.clone());
    streams::config::ensure_streams(&js, streams::config::Replication(1)).await?;
    Ok((client, js))
}

/// A report's Markdown head: its title, the machine and the command line.
pub fn heading(title: &str, machine: &contention::report::Machine, command: &str) -> String {
    format!(
        "# {title}\n\n{}\n\nCommand: `{command}`.",
        machine.summary()
    )
}

/// Removes the projections' store [`system`] left in `log_dir` (hundreds of MB after a run).
pub fn remove_store(log_dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(log_dir.join("surreal"));
}
