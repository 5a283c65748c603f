//! The durable write ceilings every throughput figure of this project is compared with,
//! measured on the machine at hand (figures move ±30 % between machines, so the ceiling is
//! always measured beside the project in the same run): how many 4 KiB records per second JetStream stores durably one
//! per publish, in atomic batches of 256 and 1,000, in a fast-ingest batch (ADR-50), and
//! packed many to a message; the same without fsync (not durable, for reference); and the
//! disk's own synchronous write rate.
//!
//! Each path writes into a fresh stream on a fresh nats-server with `sync_interval: always`
//! (the non-durable reference excepted), from one publisher, as the edge would.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use serde::Serialize;
use streams::appender::{Outgoing, publish_atomic};

/// Bytes per record, the size of a typical registration.
pub const RECORD_BYTES: usize = 4096;

/// One write path's ceiling.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// What was written how.
    pub path: String,
    /// Whether an acknowledgement meant the record was on disk.
    pub durable: bool,
    /// Records written.
    pub records: u64,
    /// Wall time.
    pub seconds: f64,
    /// Records per second.
    pub records_per_second: f64,
    /// Megabytes (10^6) of records per second.
    pub megabytes_per_second: f64,
    /// nats-server's CPU (user + system) per record written, µs, on a single node: what a
    /// durable 4 KiB record costs the server alone, the floor under any hop that writes one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_record: Option<f64>,
}

/// The ceilings as a Markdown table (for `deploy/benchmarks/reports/results.md` and `bench ceilings`).
pub fn table(ceilings: &[Ceiling]) -> String {
    let mut md = String::from(
        "| write path | durable | records/s | MB/s | nats-server CPU µs per record |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    for c in ceilings {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} |\n",
            c.path,
            if c.durable { "yes" } else { "no" },
            c.records_per_second,
            c.megabytes_per_second,
            c.server_cpu_us_per_record
                .map_or_else(|| "–".to_owned(), |us| format!("{us:.1}"))
        ));
    }
    md
}

impl Ceiling {
    fn new(path: impl Into<String>, durable: bool, records: u64, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        Ceiling {
            path: path.into(),
            durable,
            records,
            seconds,
            records_per_second: records as f64 / seconds,
            megabytes_per_second: records as f64 * RECORD_BYTES as f64 / seconds / 1e6,
            server_cpu_us_per_record: None,
        }
    }

    /// Adds `server`'s CPU since `before` (from [`server_cpu`]) per record.
    fn with_server_cpu(mut self, server: &testkit::NatsServer, before: f64) -> Self {
        self.server_cpu_us_per_record =
            Some((server_cpu(server) - before) * 1e6 / self.records.max(1) as f64);
        self
    }
}

/// `server`'s CPU seconds so far (0 if `/proc` cannot say).
fn server_cpu(server: &testkit::NatsServer) -> f64 {
    server
        .pid()
        .and_then(crate::procstat::sample)
        .map_or(0.0, |s| s.cpu_seconds)
}

/// The stream the ceilings are measured on: the benchmark's own, no service's (so it is not
/// part of the contract in `streams::subjects`).
const CEILING_STREAM: &str = "BENCH_CEILING";
/// The one subject of [`CEILING_STREAM`].
const SUBJECT: &str = "bench.ceiling.records";

async fn fresh_stream(
    server: &testkit::NatsServer,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    fresh_stream_at(&server.url(), 1).await
}

/// The ceiling stream with `replicas` copies, on the server(s) at `url` (a comma-separated
/// list for a cluster).
async fn fresh_stream_at(
    url: &str,
    replicas: usize,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let client = async_nats::connect(streams::runtime::server_addrs(url)?)
        .await
        .context("Failed to connect to nats-server")?;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: CEILING_STREAM.into(),
        subjects: vec![SUBJECT.into()],
        storage: stream::StorageType::File,
        allow_atomic_publish: true,
        allow_batch_publish: true,
        max_message_size: 2 * 1024 * 1024,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .context("Failed to create the ceiling stream")?;
    Ok((client, js))
}

fn record(i: u64) -> bytes::Bytes {
    let mut r = vec![b'r'; RECORD_BYTES];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r.into()
}

/// One publish per record with up to [`WINDOW`] acknowledgements outstanding: with fsync
/// always, the server still syncs each message on its own.
async fn one_by_one(durable: bool, records: u64) -> anyhow::Result<Ceiling> {
    let server = if durable {
        testkit::NatsServer::start()
    } else {
        testkit::NatsServer::start_without_fsync()
    };
    let (_, js) = fresh_stream(&server).await?;
    let before = server_cpu(&server);
    let mut acks = std::collections::VecDeque::with_capacity(WINDOW);
    let start = Instant::now();
    for i in 0..records {
        if acks.len() == WINDOW {
            let ack: jetstream::context::PublishAckFuture =
                acks.pop_front().expect("a full window");
            ack.await.context("ack")?;
        }
        acks.push_back(js.publish(SUBJECT, record(i)).await.context("publish")?);
    }
    for ack in acks {
        ack.await.context("ack")?;
    }
    let label = if durable {
        format!("one publish per record, {WINDOW} in flight")
    } else {
        format!("one publish per record, {WINDOW} in flight, default fsync (NOT durable)")
    };
    Ok(Ceiling::new(label, durable, records, start.elapsed()).with_server_cpu(&server, before))
}

/// Acknowledgements a single publisher keeps outstanding.
const WINDOW: usize = 256;

/// Atomic batches of `size` records, one after the other.
async fn atomic(size: usize, records: u64) -> anyhow::Result<Ceiling> {
    let server = testkit::NatsServer::start();
    let (client, js) = fresh_stream(&server).await?;
    let before = server_cpu(&server);
    let (written, elapsed) = atomic_batches(&client, &js, size, records).await?;
    Ok(
        Ceiling::new(format!("atomic batch of {size}"), true, written, elapsed)
            .with_server_cpu(&server, before),
    )
}

/// Writes `records` in atomic batches of `size`, one batch after the other; returns the
/// records written and the time taken.
async fn atomic_batches(
    client: &async_nats::Client,
    js: &jetstream::Context,
    size: usize,
    records: u64,
) -> anyhow::Result<(u64, Duration)> {
    let batches = records.div_ceil(size as u64);
    let start = Instant::now();
    for b in 0..batches {
        let batch = (0..size as u64)
            .map(|i| Outgoing {
                subject: SUBJECT.into(),
                headers: HeaderMap::new(),
                payload: record(b * size as u64 + i),
            })
            .collect();
        publish_atomic(js, client, batch)
            .await
            .map_err(|e| anyhow::anyhow!("atomic batch: {e}"))?;
    }
    Ok((batches * size as u64, start.elapsed()))
}

/// Where a cluster ceiling is measured: one node, or a three-node cluster with R3 streams,
/// with or without an fsync before every acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// One nats-server, `sync_interval: always`: the single-node durable deployment.
    SingleNode,
    /// Three nodes, R3, `sync_interval: always` on each: what `deploy/cluster` runs.
    ClusterSyncAlways,
    /// Three nodes, R3, nats-server's default fsync (every two minutes).
    ClusterDefaultFsync,
}

impl Deployment {
    /// Every deployment, in report order.
    pub const ALL: [Deployment; 3] = [
        Deployment::SingleNode,
        Deployment::ClusterSyncAlways,
        Deployment::ClusterDefaultFsync,
    ];

    fn label(self) -> &'static str {
        match self {
            Deployment::SingleNode => "single node, sync_interval always",
            Deployment::ClusterSyncAlways => "3 nodes R3, sync_interval always on each",
            Deployment::ClusterDefaultFsync => "3 nodes R3, default fsync (2 min)",
        }
    }

    /// Whether an acknowledgement survives a power cut of every machine at once.
    fn durable(self) -> bool {
        self != Deployment::ClusterDefaultFsync
    }
}

/// Atomic batches of `size` 4 KiB records on `deployment`, started fresh for the
/// measurement and stopped after it.
async fn atomic_on(deployment: Deployment, size: usize, records: u64) -> anyhow::Result<Ceiling> {
    // Whichever runs, it stays alive until the measurement is over.
    let (_single, _cluster, url, replicas) = match deployment {
        Deployment::SingleNode => {
            let server = testkit::NatsServer::start();
            let url = server.url();
            (Some(server), None, url, 1)
        }
        Deployment::ClusterSyncAlways | Deployment::ClusterDefaultFsync => {
            let sync = deployment == Deployment::ClusterSyncAlways;
            let cluster = tokio::task::spawn_blocking(move || {
                if sync {
                    testkit::NatsCluster::start(3)
                } else {
                    testkit::NatsCluster::start_without_fsync(3)
                }
            })
            .await
            .context("Starting the cluster panicked")?;
            let url = cluster.url();
            (None, Some(cluster), url, 3)
        }
    };
    let (client, js) = fresh_stream_at(&url, replicas).await?;
    let (written, elapsed) = atomic_batches(&client, &js, size, records).await?;
    Ok(Ceiling::new(
        format!("{}: atomic batch of {size}", deployment.label()),
        deployment.durable(),
        written,
        elapsed,
    ))
}

/// The durable write ceiling of a three-node cluster beside the single node's, same run,
/// same machine: atomic batches of 256 and 1,000 4 KiB records from one publisher on each
/// [`Deployment`], `rounds` times over (interleaved, so a slow moment of the machine does not
/// fall on one deployment only). `scale` multiplies the record counts (1.0: 100,000 records
/// per measurement).
pub async fn measure_cluster(scale: f64, rounds: u32) -> anyhow::Result<Vec<Ceiling>> {
    let records = ((100_000.0 * scale) as u64).max(1_000);
    let mut out = Vec::new();
    for round in 0..rounds.max(1) {
        for size in [256, 1000] {
            for deployment in Deployment::ALL {
                let ceiling = atomic_on(deployment, size, records).await?;
                println!(
                    "cluster ceilings, round {}: {:<62} {:>9.0} records/s {:>7.0} MB/s",
                    round + 1,
                    ceiling.path,
                    ceiling.records_per_second,
                    ceiling.megabytes_per_second
                );
                out.push(ceiling);
            }
        }
    }
    Ok(out)
}

/// One fast-ingest batch (ADR-50, nats-server 2.14+) of `records` messages: each record is
/// its own message, stored as it arrives (not atomically), and the server acknowledges
/// progress with a flow-control message every `msgs` records instead of one ack per
/// publish; the commit's acknowledgement covers the batch. The batch protocol travels in
/// the reply subject: `<inbox>.<batch id>.<flow>.<gap mode>.<batch seq>.<op>.$FI`, op 0
/// starting, 1 appending, 2 committing.
async fn fast(records: u64) -> anyhow::Result<Ceiling> {
    use futures::StreamExt as _;
    /// The most records the server may let pass between two flow acknowledgements.
    const FLOW: u64 = 500;
    let server = testkit::NatsServer::start();
    let (client, _) = fresh_stream(&server).await?;
    let before = server_cpu(&server);
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.>"))
        .await
        .context("Failed to subscribe to the batch's replies")?;
    let batch_id = uuid::Uuid::now_v7().simple().to_string();
    // Persisted batch sequence and the acknowledgement interval, as the server last said.
    let (mut persisted, mut every) = (0u64, 1u64);
    let mut reply = async |persisted: &mut u64, every: &mut u64| -> anyhow::Result<bool> {
        let message = replies
            .next()
            .await
            .context("the reply subscription ended")?;
        let value: serde_json::Value =
            serde_json::from_slice(&message.payload).context("a batch reply")?;
        anyhow::ensure!(value.get("error").is_none(), "fast batch refused: {value}");
        if value.get("type").and_then(|t| t.as_str()) == Some("ack") {
            *persisted = value["seq"].as_u64().unwrap_or(*persisted);
            *every = value["msgs"].as_u64().unwrap_or(*every).max(1);
            Ok(false)
        } else {
            // The commit's PubAck: {"stream", "seq", "batch", "count"}.
            anyhow::ensure!(value["count"].as_u64() == Some(records), "commit: {value}");
            Ok(true)
        }
    };
    let start = Instant::now();
    for seq in 1..=records {
        let op = match seq {
            1 if records > 1 => 0,
            s if s == records => 2,
            _ => 1,
        };
        let subject = format!("{inbox}.{batch_id}.{FLOW}.fail.{seq}.{op}.$FI");
        client
            .publish_with_reply(SUBJECT, subject, record(seq))
            .await
            .context("publish")?;
        if seq == 1 && records > 1 {
            // The first message answers with the flow the server grants.
            reply(&mut persisted, &mut every).await?;
        }
        // Stay within two acknowledgement intervals of what the server has persisted.
        while op != 2 && seq >= persisted + 2 * every {
            reply(&mut persisted, &mut every).await?;
        }
    }
    while !reply(&mut persisted, &mut every).await? {}
    Ok(Ceiling::new(
        format!("fast-ingest batch (ADR-50), flow {FLOW}"),
        true,
        records,
        start.elapsed(),
    )
    .with_server_cpu(&server, before))
}

/// `per_message` records packed into each message, one message after the other.
async fn packed(per_message: usize, records: u64) -> anyhow::Result<Ceiling> {
    let server = testkit::NatsServer::start();
    let (_, js) = fresh_stream(&server).await?;
    let before = server_cpu(&server);
    let messages = records.div_ceil(per_message as u64);
    let payload: bytes::Bytes = vec![b'p'; per_message * RECORD_BYTES].into();
    let start = Instant::now();
    for _ in 0..messages {
        js.publish(SUBJECT, payload.clone())
            .await
            .context("publish")?
            .await
            .context("ack")?;
    }
    Ok(Ceiling::new(
        format!(
            "{per_message} records packed per message ({} KiB)",
            per_message * RECORD_BYTES / 1024
        ),
        true,
        messages * per_message as u64,
        start.elapsed(),
    )
    .with_server_cpu(&server, before))
}

/// `dd` writing 1 MiB blocks with `oflag=dsync` where nats-server keeps its store: the
/// disk's synchronous write rate, in 4 KiB records per second.
fn disk(megabytes: u64) -> anyhow::Result<Ceiling> {
    let server = testkit::NatsServer::start();
    let target = server.store_dir().join("dd.test");
    let start = Instant::now();
    let status = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", &format!("count={megabytes}"), "oflag=dsync"])
        .stderr(std::process::Stdio::null())
        .status()
        .context("Failed to run dd")?;
    let elapsed = start.elapsed();
    anyhow::ensure!(status.success(), "dd failed");
    let _ = std::fs::remove_file(&target);
    let records = megabytes * 1024 * 1024 / RECORD_BYTES as u64;
    Ok(Ceiling::new(
        "disk: dd 1 MiB blocks, oflag=dsync",
        true,
        records,
        elapsed,
    ))
}

/// Measures every ceiling, printing each as it is known. `scale` multiplies the record
/// counts (1.0 is a run of about a minute on the development machine).
pub async fn measure(scale: f64) -> anyhow::Result<Vec<Ceiling>> {
    let n = |records: f64| ((records * scale) as u64).max(1);
    measure_steps(vec![
        ("one", n(10_000.0)),
        ("one-nosync", n(100_000.0)),
        ("atomic-256", n(100_000.0)),
        ("atomic-1000", n(100_000.0)),
        ("fast", n(10_000.0)),
        ("packed-64", n(200_000.0)),
        ("packed-256", n(400_000.0)),
        ("disk", n(400.0)),
    ])
    .await
}

/// JetStream's raw durable publish ceiling, quickly (a few seconds at `scale` 1.0): one
/// publish per record and atomic batches of 256, each on a fresh nats-server with fsync
/// always. What `bench deployed` sets the deployed system's figures beside.
pub async fn measure_quick(scale: f64) -> anyhow::Result<Vec<Ceiling>> {
    let n = |records: f64| ((records * scale) as u64).max(1);
    measure_steps(vec![("one", n(10_000.0)), ("atomic-256", n(50_000.0))]).await
}

/// Measures each of `steps` (a path's name and its record count) in order.
async fn measure_steps(steps: Vec<(&str, u64)>) -> anyhow::Result<Vec<Ceiling>> {
    let mut out = Vec::new();
    for (step, count) in steps {
        let ceiling = match step {
            "one" => one_by_one(true, count).await?,
            "one-nosync" => one_by_one(false, count).await?,
            "atomic-256" => atomic(256, count).await?,
            "atomic-1000" => atomic(1000, count).await?,
            "fast" => fast(count).await?,
            "packed-64" => packed(64, count).await?,
            "packed-256" => packed(256, count).await?,
            _ => disk(count)?,
        };
        println!(
            "ceilings: {:<52} {:>9.0} records/s {:>7.0} MB/s",
            ceiling.path, ceiling.records_per_second, ceiling.megabytes_per_second
        );
        out.push(ceiling);
    }
    Ok(out)
}
