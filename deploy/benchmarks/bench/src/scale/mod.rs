//! National scale (`deploy/bench-scale`): a real system filled to N registrations, then each
//! operation whose cost grows with the campaign measured at that N; several N, a fit of how
//! each figure grows, and its value at 19 million beside the bound it must meet.
//!
//! Every size starts from nothing: a fresh nats-server (JetStream on disk) and a fresh
//! embedded SurrealDB (SurrealKV on disk), filled by [`fill`] (what the pipeline would have
//! written, in bulk; said so in the report).

pub mod fill;
pub mod report;
pub mod slot_table;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use processors::reservation::decide::Policy;
use processors::reservation::rebuild;
use projections::store::{Store, StoreOptions};
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use streams::subjects::{self, RegionFilter};

use crate::contention::report::Percentiles;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// The campaign sizes (registrations), smallest first.
    pub sizes: Vec<u64>,
    /// Decisions between the largest region's snapshots (the tail a takeover folds).
    pub snapshot_every: u64,
    /// Reads of each kind per size (latency samples).
    pub reads: usize,
    /// Sizes at which the projections are also rebuilt into, and read from, a SurrealDB
    /// server.
    pub server_sizes: Vec<u64>,
    /// Sizes at which a three-node cluster is filled and one node's restart timed.
    pub cluster_sizes: Vec<u64>,
}

/// Every figure at one size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeFigures {
    /// Registrations in the system.
    pub registrations: u64,
    /// Intake messages (claims, sealing keys, submissions, verdicts, capacities).
    pub intake_messages: u64,
    /// Decision messages (decisions, notification packs).
    pub decision_messages: u64,
    /// Seconds the bulk fill took (setup, not a figure of the system).
    pub fill_seconds: f64,
    /// JetStream's store on disk, bytes.
    pub jetstream_bytes: u64,
    /// nats-server's resident memory once filled, MiB.
    pub nats_rss_mib: f64,
    /// Seconds from a crash (SIGKILL) to every stream answering again, a citizen's claim
    /// readable.
    pub restart_seconds: f64,
    /// nats-server's resident memory after that restart, MiB.
    pub nats_rss_after_restart_mib: f64,
    /// The edge's claim check of a citizen who has registered (a direct get on their
    /// subject), ms.
    pub claim_check_existing: Percentiles,
    /// The same for a citizen who has not, ms.
    pub claim_check_new: Percentiles,
    /// Registrations in the largest region.
    pub largest_region_registrations: u64,
    /// The reservation snapshot a takeover starts from (`snapshot_every` decisions before the
    /// end; none while the region has fewer decisions), bytes.
    pub snapshot_bytes: usize,
    /// The region's whole state at the end encoded as a snapshot, bytes: what a snapshot of
    /// the region weighs at this size.
    pub state_bytes: usize,
    /// Seconds that encoding took (on the snapshot thread, off the decider).
    pub state_encode_seconds: f64,
    /// Seconds encoding it takes: on the snapshot thread, off the decider
    /// (`processors::reservation::shadow`), so not a pause in deciding.
    pub snapshot_encode_seconds: f64,
    /// Seconds the decider spends copying its state for the snapshot thread, once per
    /// takeover (part of the takeover; the decider's only pause for snapshots).
    pub state_copy_seconds: f64,
    /// Takeover of the largest region from its snapshot plus the tail, and the copy.
    pub takeover_seconds: f64,
    /// Decisions the takeover folded after the snapshot.
    pub takeover_tail: u64,
    /// The same region rebuilt by a full fold of its decisions.
    pub full_fold_seconds: f64,
    /// Every projection rebuilt from sequence 1 into a fresh embedded database (SurrealKV on
    /// disk), and read there.
    pub embedded: StoreFigures,
    /// The same on a SurrealDB server (SurrealKV on disk), at the sizes `--server-sizes` names.
    pub server: Option<StoreFigures>,
    /// A three-node cluster (R3 streams) filled the same way, at the sizes `--cluster-sizes`
    /// names.
    pub cluster: Option<ClusterFigures>,
    /// Replay of the whole intake stream (decoded into events), seconds.
    pub replay_intake_seconds: f64,
    /// Records it read.
    pub replay_intake_records: u64,
    /// Replay of the largest region's decisions, seconds.
    pub replay_region_seconds: f64,
    /// Records it read.
    pub replay_region_records: u64,
}

/// The projections rebuilt into one store, and read there.
#[derive(Debug, Clone, Serialize)]
pub struct StoreFigures {
    /// Every projection rebuilt from sequence 1, one stream after the other, the regions'
    /// parts of each in parallel (one per core), seconds.
    pub rebuild_seconds: f64,
    /// CPU seconds the rebuild took: the projections' side (this process: decoding, the
    /// queries; with the embedded store, the database too) and the database server's.
    pub rebuild_cpu_seconds: f64,
    /// Of which the database server's (0 when embedded).
    pub server_cpu_seconds: f64,
    /// The database on disk after the rebuild, bytes.
    pub bytes: u64,
    /// A registration's status, first read of each, ms.
    pub status_first_read: Percentiles,
    /// The same registrations read again, ms.
    pub status_read_again: Percentiles,
    /// The read API's load of the whole availability table (every slot; once per cache
    /// period, every availability answer is filtered from it in memory), ms.
    pub availability_table: Percentiles,
    /// Slots in it.
    pub availability_rows: usize,
}

/// A three-node cluster at one size.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterFigures {
    /// Seconds the bulk fill took (setup).
    pub fill_seconds: f64,
    /// Each node's resident memory once filled, MiB.
    pub rss_mib: Vec<f64>,
    /// Each node's JetStream store, bytes.
    pub jetstream_bytes: Vec<u64>,
    /// Seconds from one node's crash (SIGKILL) to it answering `/healthz` again: back in the
    /// cluster, every stream it replicates caught up.
    pub node_back_seconds: f64,
    /// That node's resident memory once back, MiB.
    pub rss_after_restart_mib: f64,
}

/// Sum of the sizes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Resident memory of the process `pid`, MiB (0 when it is not running).
fn resident_mib(pid: Option<u32>) -> f64 {
    pid.and_then(crate::procstat::sample)
        .map_or(0.0, |s| s.rss_mib)
}

/// Measures one size; see the module.
pub async fn measure_size(options: &Options, size: u64) -> anyhow::Result<SizeFigures> {
    eprintln!("scale: {size} registrations");
    let mut nats = testkit::NatsServer::start_without_fsync();
    let (client, js) = crate::connect_with_streams(&nats.url()).await?;
    let keys = streams::crypto::Keys::from_secret("bench-scale");
    let mut filled = fill::fill(
        &js,
        &client,
        &keys,
        size,
        options.snapshot_every,
        options.reads,
    )
    .await?;
    eprintln!(
        "scale: filled {} registrations ({} intake, {} decision messages) in {:.0} s",
        filled.registrations, filled.intake_messages, filled.decision_messages, filled.seconds
    );
    drop(js);
    drop(client);
    let jetstream_bytes = dir_bytes(&nats.store_dir());
    let nats_rss_mib = resident_mib(nats.pid());

    // A crash, then every stream back and a citizen's claim readable.
    let started = Instant::now();
    nats.restart_within(Duration::from_secs(1800));
    let (_client, js) = loop {
        if let Ok(Ok(pair)) =
            tokio::time::timeout(Duration::from_secs(5), ready(&nats.url(), &filled)).await
        {
            break pair;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "nats-server did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let restart_seconds = started.elapsed().as_secs_f64();
    let nats_rss_after_restart_mib = resident_mib(nats.pid());
    eprintln!(
        "scale: {jetstream_bytes} bytes on disk, {nats_rss_mib:.0} MiB resident; restarted in \
         {restart_seconds:.1} s ({nats_rss_after_restart_mib:.0} MiB)"
    );

    let (claim_check_existing, claim_check_new) = claim_checks(&js, &filled).await?;

    // Takeover of the largest region: from its snapshot plus the tail, and a full fold.
    let largest = fill::largest();
    let snapshots = js
        .get_object_store(subjects::SNAPSHOTS_BUCKET)
        .await
        .context("Failed to open the snapshots bucket")?;
    let (pending, snapshot_encode_seconds) = filled
        .snapshot
        .take()
        .context("the fill took no snapshot of the largest region")?;
    let snapshot_bytes = rebuild::write(&js, &snapshots, pending).await?;
    let mut takeover = Vec::new();
    for store in [Some(&snapshots), None] {
        let started = Instant::now();
        let rebuilt = rebuild::rebuild(&js, &largest, Policy::default(), store)
            .await
            .map_err(|halt| anyhow::anyhow!("the takeover halted: {halt:?}"))?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            rebuilt.state == filled.largest_state,
            "the rebuilt state differs from the live one"
        );
        anyhow::ensure!(rebuilt.fence == filled.largest_fence, "wrong fence");
        eprintln!(
            "scale: takeover {}: {seconds:.2} s ({} decisions folded)",
            if store.is_some() {
                "from the snapshot"
            } else {
                "by a full fold"
            },
            rebuilt.folded
        );
        takeover.push((seconds, rebuilt.folded));
    }

    let started = Instant::now();
    let state_bytes = processors::reservation::snapshot::encode_body(&filled.largest_state).len();
    let state_encode_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let copy = filled.largest_state.clone();
    let state_copy_seconds = started.elapsed().as_secs_f64();
    drop(copy);

    // Every projection rebuilt from sequence 1 into a fresh embedded database.
    let surreal_dir = tempfile::tempdir()?;
    let endpoint = format!("surrealkv://{}", surreal_dir.path().join("db").display());
    let store = Store::open(&StoreOptions::new(endpoint)).await?;
    let embedded = on_store(
        &js,
        &store,
        surreal_dir.path(),
        None,
        &filled,
        options.reads,
    )
    .await?;
    drop(store);
    drop(surreal_dir);
    let server = if options.server_sizes.contains(&size) {
        let server = testkit::SurrealServer::start();
        let mut store_options = StoreOptions::new(server.endpoint());
        store_options.credentials = Some((
            testkit::SurrealServer::USER.into(),
            testkit::SurrealServer::PASSWORD.to_owned().into(),
        ));
        let store = Store::open(&store_options).await?;
        let figures = on_store(
            &js,
            &store,
            &server.data_dir(),
            server.pid(),
            &filled,
            options.reads,
        )
        .await?;
        Some(figures)
    } else {
        None
    };

    let started = Instant::now();
    let replay_intake_records = streams::replay::read_to_end(
        &js,
        subjects::INTAKE_STREAM,
        subjects::intake_filter(&RegionFilter::All),
        1,
        |_| {},
    )
    .await?;
    let replay_intake_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let replay_region_records = streams::replay::read_to_end(
        &js,
        subjects::DECISIONS_STREAM,
        subjects::decisions_filter(&RegionFilter::One(largest.clone())),
        1,
        |_| {},
    )
    .await?;
    let replay_region_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "scale: replayed intake ({replay_intake_records} records) in {replay_intake_seconds:.1} s, \
         {largest}'s decisions ({replay_region_records}) in {replay_region_seconds:.1} s"
    );

    drop(js);
    drop(nats);
    let cluster = if options.cluster_sizes.contains(&size) {
        Some(cluster(options, size).await?)
    } else {
        None
    };

    Ok(SizeFigures {
        registrations: filled.registrations,
        intake_messages: filled.intake_messages,
        decision_messages: filled.decision_messages,
        fill_seconds: filled.seconds,
        jetstream_bytes,
        nats_rss_mib,
        restart_seconds,
        nats_rss_after_restart_mib,
        claim_check_existing,
        claim_check_new,
        largest_region_registrations: filled.largest_state.registrations.len() as u64,
        snapshot_bytes,
        snapshot_encode_seconds,
        state_bytes,
        state_encode_seconds,
        state_copy_seconds,
        takeover_seconds: takeover[0].0 + state_copy_seconds,
        takeover_tail: takeover[0].1,
        full_fold_seconds: takeover[1].0,
        embedded,
        server,
        cluster,
        replay_intake_seconds,
        replay_intake_records,
        replay_region_seconds,
        replay_region_records,
    })
}

fn cpu_seconds(pid: u32) -> f64 {
    crate::procstat::sample(pid).map_or(0.0, |s| s.cpu_seconds)
}

/// Every projection rebuilt into `store` (whose files are under `dir`, and whose server, if
/// any, runs as `server_pid`), then the reads.
async fn on_store(
    js: &async_nats::jetstream::Context,
    store: &Store,
    dir: &std::path::Path,
    server_pid: Option<u32>,
    filled: &fill::Filled,
    reads: usize,
) -> anyhow::Result<StoreFigures> {
    let me = std::process::id();
    let server_cpu = || server_pid.map_or(0.0, cpu_seconds);
    let (cpu_before, server_before) = (cpu_seconds(me), server_cpu());
    let started = Instant::now();
    // As an operator's rebuild runs (projections::rebuild): one stream after the other, each
    // region's part of it on its own, as many at once as there are cores.
    let ends = projections::worker::ends(js).await?;
    for (projected, (_, until)) in projections::worker::projected_streams()
        .into_iter()
        .zip(ends)
    {
        projections::rebuild::project_in_parallel(
            js,
            store,
            projected,
            until,
            projections::rebuild::parallelism(),
            &|_| {},
        )
        .await?;
    }
    let rebuild_seconds = started.elapsed().as_secs_f64();
    let server_cpu_seconds = server_cpu() - server_before;
    let rebuild_cpu_seconds = cpu_seconds(me) - cpu_before + server_cpu_seconds;
    let bytes = dir_bytes(dir);
    eprintln!(
        "scale: projections rebuilt into {} in {rebuild_seconds:.1} s ({rebuild_cpu_seconds:.0} CPU-s); {bytes} bytes on disk",
        if server_pid.is_some() {
            "a SurrealDB server"
        } else {
            "the embedded store"
        }
    );
    let (status_first_read, status_read_again) = statuses(store, filled).await?;
    let mut times = Vec::new();
    let mut availability_rows = 0;
    for _ in 0..reads.min(50) {
        let started = Instant::now();
        availability_rows = store.slots_since(None).await?.rows.len();
        times.push(started.elapsed());
    }
    Ok(StoreFigures {
        rebuild_seconds,
        rebuild_cpu_seconds,
        server_cpu_seconds,
        bytes,
        status_first_read,
        status_read_again,
        availability_table: Percentiles::of(times),
        availability_rows,
    })
}

/// A three-node cluster with R3 streams, filled to `size`; one node crashed and timed until
/// it is back and caught up.
async fn cluster(options: &Options, size: u64) -> anyhow::Result<ClusterFigures> {
    let mut cluster = testkit::NatsCluster::start_without_fsync(3);
    let client = cluster.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    streams::config::ensure_streams(&js, streams::config::Replication(3)).await?;
    let keys = streams::crypto::Keys::from_secret("bench-scale");
    let filled = fill::fill(&js, &client, &keys, size, options.snapshot_every, 10).await?;
    eprintln!(
        "scale: the cluster filled to {} registrations in {:.0} s",
        filled.registrations, filled.seconds
    );
    let nodes = 0..cluster.len();
    let rss_mib: Vec<f64> = nodes
        .clone()
        .map(|i| resident_mib(cluster.pid(i)))
        .collect();
    let jetstream_bytes = nodes.map(|i| dir_bytes(&cluster.store_dir(i))).collect();
    // The last node: not where the client is most likely connected.
    let node = cluster.len() - 1;
    let started = Instant::now();
    cluster.start_again(node);
    while !cluster.is_healthy(node) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "node {node} did not come back:\n{}",
            cluster.log(node)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node_back_seconds = started.elapsed().as_secs_f64();
    let rss_after_restart_mib = resident_mib(cluster.pid(node));
    eprintln!(
        "scale: a cluster node back and caught up in {node_back_seconds:.1} s ({rss_after_restart_mib:.0} MiB; {rss_mib:?} MiB before)"
    );
    Ok(ClusterFigures {
        fill_seconds: filled.seconds,
        rss_mib,
        jetstream_bytes,
        node_back_seconds,
        rss_after_restart_mib,
    })
}

/// Connected, every stream answering its info, and the last sampled citizen's claim read.
async fn ready(
    url: &str,
    filled: &fill::Filled,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut names = js.stream_names();
    let mut count = 0;
    while let Some(name) = names.next().await {
        js.get_stream(name?).await?.info().await?;
        count += 1;
    }
    anyhow::ensure!(count >= 2, "only {count} streams so far");
    let (citizen, _) = filled.sample.last().context("no sample")?;
    streams::claims::last(&js, citizen)
        .await?
        .context("a citizen's claim is missing after the restart")?;
    Ok((client, js))
}

/// The edge's claim check, for registered citizens and for new ones.
async fn claim_checks(
    js: &async_nats::jetstream::Context,
    filled: &fill::Filled,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let mut existing = Vec::new();
    for (citizen, _) in &filled.sample {
        let started = Instant::now();
        let found = streams::claims::last(js, citizen).await?;
        existing.push(started.elapsed());
        anyhow::ensure!(found.is_some(), "a registered citizen's claim is missing");
    }
    let mut new = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..filled.sample.len() {
        let citizen = format!("{:064x}", rng.random::<u128>());
        let started = Instant::now();
        let found = streams::claims::last(js, &citizen).await?;
        new.push(started.elapsed());
        anyhow::ensure!(found.is_none(), "a new citizen has a claim");
    }
    Ok((Percentiles::of(existing), Percentiles::of(new)))
}

/// Status reads of the sampled registrations in a random order, then again.
async fn statuses(
    store: &Store,
    filled: &fill::Filled,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let mut ids: Vec<_> = filled.sample.iter().map(|(_, id)| id.to_string()).collect();
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let mut times = Vec::new();
        for id in &ids {
            let started = Instant::now();
            let record = store.registration(id).await?;
            times.push(started.elapsed());
            let record = record.with_context(|| format!("{id} is not projected"))?;
            anyhow::ensure!(
                record.status == streams::model::Status::Confirmed,
                "{id} is {:?} after its verdict",
                record.status
            );
        }
        rounds.push(Percentiles::of(times));
    }
    let again = rounds.pop().expect("two rounds");
    Ok((rounds.pop().expect("two rounds"), again))
}
