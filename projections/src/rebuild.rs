//! Rebuilding every projection from the start of the log into a fresh database while the
//! live projections (and ingestion) go on, then comparing the two at one cut of the log.
//!
//! The projections are a function of how far each stream has been applied (the writes of the
//! two streams commute, see [`crate::store`]), so the comparison needs both sides at the same
//! checkpoints, not at the same moment:
//! 1. the rebuild catches up to where the live projections are when it starts, each region's
//!    part of each stream on its own and several at once ([`project_in_parallel`]): the
//!    regions' rows are disjoint, so their writes commute like the two streams' do;
//! 2. the live projections are read in one transaction with their checkpoints (a
//!    [`Snapshot`]);
//! 3. the rebuild is taken to exactly those checkpoints and read the same way;
//! 4. the two are compared table by table: a checksum of each, and the first records that
//!    differ.
//!
//! The rebuilt database keeps its checkpoints, so a worker pointed at it would carry on from
//! there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use streams::replay::{self, Record};

use streams::model::Region;
use streams::subjects::{self, RegionFilter};

use crate::store::{ApplyError, Snapshot, Store};
use crate::worker::{self, MAX_BATCH};

/// How far a rebuild has come on one stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Progress {
    /// The stream.
    pub stream: &'static str,
    /// The last sequence applied to the rebuilt database.
    pub applied: u64,
    /// The sequence it is heading for (the live checkpoint it will be compared at).
    pub target: u64,
}

/// At most this many differing records are listed per table (all are counted).
pub const MAX_LISTED_DIFFERENCES: usize = 10;

/// One record that differs between the live and the rebuilt projections (`None`: missing on
/// that side).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    /// The record id.
    pub key: String,
    /// The live row.
    pub live: Option<Value>,
    /// The rebuilt row.
    pub rebuilt: Option<Value>,
}

/// One table compared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableComparison {
    /// The table.
    pub table: &'static str,
    /// Rows in the live projection.
    pub live_rows: usize,
    /// Rows in the rebuilt one.
    pub rebuilt_rows: usize,
    /// SHA-256 of the live table's rows in record-id order (canonical JSON).
    pub live_checksum: String,
    /// The same of the rebuilt table.
    pub rebuilt_checksum: String,
    /// Records that differ (missing on one side, or not equal).
    pub differences: usize,
    /// The first [`MAX_LISTED_DIFFERENCES`] of them, in record-id order.
    pub first_differences: Vec<Difference>,
}

/// The live and the rebuilt projections compared at one cut of the log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// Whether every table is equal.
    pub equal: bool,
    /// The checkpoints both sides were compared at, by stream.
    pub checkpoints: BTreeMap<String, u64>,
    /// Each table.
    pub tables: Vec<TableComparison>,
}

/// Compares two snapshots table by table.
pub fn compare(live: &Snapshot, rebuilt: &Snapshot) -> Comparison {
    let empty = BTreeMap::new();
    let mut tables = Vec::new();
    for (table, live_rows) in &live.tables {
        let rebuilt_rows = rebuilt.tables.get(table).unwrap_or(&empty);
        let mut first_differences = Vec::new();
        let mut differences = 0;
        let keys: std::collections::BTreeSet<&String> =
            live_rows.keys().chain(rebuilt_rows.keys()).collect();
        for key in keys {
            let (l, r) = (live_rows.get(key), rebuilt_rows.get(key));
            if l != r {
                differences += 1;
                if first_differences.len() < MAX_LISTED_DIFFERENCES {
                    first_differences.push(Difference {
                        key: key.clone(),
                        live: l.cloned(),
                        rebuilt: r.cloned(),
                    });
                }
            }
        }
        tables.push(TableComparison {
            table,
            live_rows: live_rows.len(),
            rebuilt_rows: rebuilt_rows.len(),
            live_checksum: checksum(live_rows),
            rebuilt_checksum: checksum(rebuilt_rows),
            differences,
            first_differences,
        });
    }
    let checkpoints = live
        .tables
        .get("checkpoint")
        .into_iter()
        .flatten()
        .filter_map(|(key, row)| {
            let stream = key.strip_prefix("checkpoint:")?;
            Some((stream.to_owned(), row.get("seq")?.as_u64()?))
        })
        .collect();
    Comparison {
        equal: tables.iter().all(|t| t.differences == 0),
        checkpoints,
        tables,
    }
}

/// SHA-256 (hex) of a table's rows in record-id order, each as `id`, a tab, its canonical
/// JSON (object keys sorted) and a newline: equal tables have equal checksums whatever order
/// the database returned them in.
pub fn checksum(rows: &BTreeMap<String, Value>) -> String {
    let mut hasher = Sha256::new();
    let mut line = String::new();
    for (key, row) in rows {
        line.clear();
        line.push_str(key);
        line.push('\t');
        canonical(row, &mut line);
        line.push('\n');
        hasher.update(line.as_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// JSON with object keys in sorted order, whatever map the parser kept them in.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A group's records up to sequence `until`, decoded.
struct Taken {
    /// The records, each at its sequence (a pack's records share theirs).
    events: Vec<(u64, streams::events::Envelope)>,
    /// The last sequence taken (the checkpoint the group follows if none).
    last: u64,
    /// A record past `until` was met: the rest is for later.
    past_until: bool,
    /// The last record taken was the last the consumer had (nothing pending after it).
    at_end: bool,
}

/// Decodes `group`'s records up to `until`; a record that does not decode stops the rebuild
/// with an error (it never skips what it did not understand).
fn take_until(
    stream: &str,
    group: &[jetstream::Message],
    checkpoint: u64,
    until: u64,
) -> anyhow::Result<Taken> {
    let mut taken = Taken {
        events: Vec::with_capacity(group.len()),
        last: checkpoint,
        past_until: false,
        at_end: false,
    };
    for message in group {
        // A pack's records share its sequence and are applied together.
        for record in Record::from_message(message)? {
            if record.seq > until {
                taken.past_until = true;
                return Ok(taken);
            }
            taken.at_end = record.pending == 0;
            let envelope = record.envelope.map_err(|err| {
                anyhow::anyhow!(
                    "Record {} of {stream} cannot be decoded ({err}): the rebuild stops there",
                    record.seq
                )
            })?;
            taken.events.push((record.seq, envelope));
            taken.last = record.seq;
        }
    }
    Ok(taken)
}

/// Applies `stream` to `store` from its checkpoint up to and including sequence `until` (a
/// sequence the live projection applied, so one its filter matches), reporting progress.
/// A record it cannot decode stops it with an error: a rebuild never skips what it did not
/// understand.
pub async fn project_until(
    js: &jetstream::Context,
    store: &Store,
    (stream, filter): (&'static str, String),
    until: u64,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<()> {
    let mut checkpoint = store.checkpoint(stream).await?;
    progress(Progress {
        stream,
        applied: checkpoint,
        target: until,
    });
    if checkpoint >= until {
        return Ok(());
    }
    let (mut messages, _) = replay::ordered(js, stream, filter, checkpoint + 1).await?;
    loop {
        let group = replay::next_group(&mut messages, MAX_BATCH, Duration::ZERO)
            .await?
            .with_context(|| format!("The {stream} stream ended before sequence {until}"))?;
        let Taken {
            events,
            last,
            past_until,
            ..
        } = take_until(stream, &group, checkpoint, until)?;
        if last > checkpoint {
            store
                .apply(stream, &events, checkpoint, last)
                .await
                .map_err(|err| match err {
                    ApplyError::CheckpointMoved => anyhow::anyhow!(
                        "Another writer is projecting {stream} into the rebuild's database"
                    ),
                    ApplyError::Store(err) => err,
                })?;
            checkpoint = last;
        }
        progress(Progress {
            stream,
            applied: checkpoint,
            target: until,
        });
        if checkpoint >= until || past_until {
            return Ok(());
        }
    }
}

/// How many regions' parts a rebuild applies at once: one per core, at most 8.
pub fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// The regions whose messages `stream` holds under `filter` (its projected subjects). A
/// subject that names no region fails the rebuild: no region's part would apply it, and a
/// rebuild never skips what it did not understand.
async fn regions_in(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> anyhow::Result<std::collections::BTreeSet<Region>> {
    use futures::StreamExt as _;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .with_context(|| format!("Failed to open stream {stream}"))?;
    let mut found = handle
        .info_with_subjects(filter)
        .await
        .with_context(|| format!("Failed to list the subjects of {stream}"))?;
    let mut regions = std::collections::BTreeSet::new();
    while let Some(subject) = found.next().await {
        let (subject, _) =
            subject.with_context(|| format!("Failed to list the subjects of {stream}"))?;
        let region = subjects::intake_region(&subject)
            .or_else(|| subjects::decision_region(&subject))
            .with_context(|| {
                format!("{stream} holds {subject}, which names no region: the rebuild stops")
            })?;
        regions.insert(region);
    }
    Ok(regions)
}

/// The checkpoint of one region's part of `stream` while a parallel rebuild runs.
fn part_key(stream: &str, region: &Region) -> String {
    format!("{stream}.{region}")
}

/// A batch that failed on a transaction conflict is tried again this many times (it changed
/// nothing: a SurrealDB transaction is all or nothing).
const CONFLICT_RETRIES: usize = 20;

/// Applies one region's part of `stream` (`filter`) from its own checkpoint (`part`) up to
/// sequence `until` or the end of the part, whichever comes first; sends how far it came.
async fn project_part(
    js: &jetstream::Context,
    store: &Store,
    (stream, part, filter): (&'static str, String, String),
    until: u64,
    report: impl Fn(u64),
) -> anyhow::Result<()> {
    let mut checkpoint = store.checkpoint(&part).await?;
    let (mut messages, pending) = replay::ordered(js, stream, filter, checkpoint + 1).await?;
    let mut done = pending == 0;
    while !done {
        let group = replay::next_group(&mut messages, MAX_BATCH, Duration::ZERO)
            .await?
            .with_context(|| format!("The {stream} stream ended while rebuilding {part}"))?;
        let Taken {
            events,
            last,
            past_until,
            at_end,
        } = take_until(stream, &group, checkpoint, until)?;
        done = past_until || at_end;
        if last > checkpoint {
            let mut tries = 0;
            loop {
                match store.apply(&part, &events, checkpoint, last).await {
                    Ok(()) => break,
                    Err(ApplyError::Store(err))
                        if tries < CONFLICT_RETRIES
                            && format!("{err:#}").contains("transaction") =>
                    {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(5 * tries as u64)).await;
                    }
                    Err(ApplyError::CheckpointMoved) => anyhow::bail!(
                        "Another writer is projecting {part} into the rebuild's database"
                    ),
                    Err(ApplyError::Store(err)) => return Err(err),
                }
            }
            checkpoint = last;
            report(checkpoint);
        }
    }
    report(until);
    Ok(())
}

/// Applies `stream` from its start up to sequence `until` into `into`, a fresh database: each
/// region's part on its own (its own consumer, its own checkpoint), `parallelism` parts at
/// once, then the stream's checkpoint set to `until` and the parts' removed, so the result is
/// what [`project_until`] gives. The regions' rows (slots, registrations, lines, dead
/// letters) are disjoint, so the parts' writes commute.
pub async fn project_in_parallel(
    js: &jetstream::Context,
    into: &Store,
    (stream, _): (&'static str, String),
    until: u64,
    parallelism: usize,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        into.checkpoint(stream).await? == 0,
        "The rebuild's database already holds {stream}: rebuild into a fresh one"
    );
    if until == 0 {
        return Ok(());
    }
    let filter_of = |regions: &RegionFilter| {
        worker::projected_streams_of(regions)
            .into_iter()
            .find(|(s, _)| *s == stream)
            .map(|(_, f)| f)
            .expect("a projected stream")
    };
    let regions = regions_in(js, stream, &filter_of(&RegionFilter::All)).await?;
    let permits = Arc::new(tokio::sync::Semaphore::new(parallelism.max(1)));
    let (sender, mut reports) = tokio::sync::mpsc::unbounded_channel::<(Region, u64)>();
    let mut parts = tokio::task::JoinSet::new();
    let mut applied = BTreeMap::new();
    for region in &regions {
        applied.insert(region.clone(), 0u64);
        let (js, into, permits, sender) =
            (js.clone(), into.clone(), permits.clone(), sender.clone());
        let part = (
            stream,
            part_key(stream, region),
            filter_of(&RegionFilter::One(region.clone())),
        );
        let region = region.clone();
        parts.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            project_part(&js, &into, part, until, |seq| {
                let _ = sender.send((region.clone(), seq));
            })
            .await
        });
    }
    drop(sender);
    while let Some((region, seq)) = reports.recv().await {
        applied.insert(region, seq);
        progress(Progress {
            stream,
            applied: applied.values().copied().min().unwrap_or(until),
            target: until,
        });
    }
    while let Some(part) = parts.join_next().await {
        part.context("A rebuild's part panicked")??;
    }
    let keys: Vec<String> = regions.iter().map(|r| part_key(stream, r)).collect();
    into.settle_parts(stream, &keys, until).await?;
    progress(Progress {
        stream,
        applied: until,
        target: until,
    });
    Ok(())
}

/// Rebuilds every projection into `into` (a fresh database: see [`Store::database`]) from the
/// start of the log while `live` goes on, and compares the two at one cut (see the module's
/// documentation).
pub async fn rebuild_and_compare(
    js: &jetstream::Context,
    live: &Store,
    into: &Store,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<Comparison> {
    for (stream, _) in worker::projected_streams() {
        anyhow::ensure!(
            into.checkpoint(stream).await? == 0,
            "The rebuild's database already holds {stream}: rebuild into a fresh one"
        );
    }
    // Most of the work, while the live projections go on, region by region in parallel.
    for projected in worker::projected_streams() {
        let target = live.checkpoint(projected.0).await?;
        project_in_parallel(js, into, projected, target, parallelism(), progress).await?;
    }
    // The cut: the live state and its checkpoints in one read, the rebuild taken to them.
    let live_snapshot = live.snapshot().await?;
    for projected in worker::projected_streams() {
        let target = live_snapshot.checkpoint(projected.0);
        project_until(js, into, projected, target, progress).await?;
    }
    let rebuilt = into.snapshot().await?;
    Ok(compare(&live_snapshot, &rebuilt))
}

/// A rebuild started by an operator (`POST /v1/admin/rebuilds`), as `GET
/// /v1/admin/rebuilds/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildStatus {
    /// Its id: the name of the database it writes.
    pub rebuild_id: String,
    /// `running`, `done` (see `comparison.equal`) or `failed` (see `error`).
    pub state: &'static str,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// How far each stream has come.
    pub progress: Vec<Progress>,
    /// The comparison with the live projections, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<Comparison>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The rebuilds of this process: one runs at a time; the last [`KEPT_REBUILDS`] are kept to
/// be read.
#[derive(Clone)]
pub struct Rebuilds {
    statuses: std::sync::Arc<std::sync::Mutex<Vec<RebuildStatus>>>,
    js: jetstream::Context,
    /// Where rebuilds run: beside the projection workers, not on the HTTP workers' thread.
    runtime: tokio::runtime::Handle,
}

/// How many finished rebuilds stay readable.
pub const KEPT_REBUILDS: usize = 16;

impl Rebuilds {
    /// Rebuilds reading the log through `js`, run on `runtime`.
    pub fn new(js: jetstream::Context, runtime: tokio::runtime::Handle) -> Self {
        Rebuilds {
            statuses: Default::default(),
            js,
            runtime,
        }
    }

    /// Starts a rebuild of `live`'s projections into a fresh database beside it. `Err` with
    /// the running one's id if one is running.
    pub fn start(&self, live: &Store) -> Result<RebuildStatus, String> {
        let now = chrono::Utc::now();
        let status = {
            let mut statuses = self.lock();
            if let Some(running) = statuses.iter().find(|s| s.state == "running") {
                return Err(running.rebuild_id.clone());
            }
            let status = RebuildStatus {
                rebuild_id: format!(
                    "rebuild_{}_{}",
                    now.format("%Y%m%dt%H%M%S"),
                    now.timestamp_subsec_millis()
                ),
                state: "running",
                started_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                finished_at: None,
                progress: Vec::new(),
                comparison: None,
                error: None,
            };
            statuses.push(status.clone());
            let excess = statuses.len().saturating_sub(KEPT_REBUILDS);
            statuses.drain(..excess);
            status
        };
        let (this, live, id) = (self.clone(), live.clone(), status.rebuild_id.clone());
        self.runtime.spawn(async move {
            let report = {
                let this = this.clone();
                let id = id.clone();
                move |progress: Progress| {
                    this.update(&id, |status| {
                        match status.progress.iter_mut().find(|p| p.stream == progress.stream) {
                            Some(p) => *p = progress,
                            None => status.progress.push(progress),
                        }
                    })
                }
            };
            tracing::info!(rebuild = %id, "A rebuild of the projections started.");
            let outcome = match live.database(&id).await {
                Ok(into) => rebuild_and_compare(&this.js, &live, &into, &report).await,
                Err(err) => Err(err),
            };
            let finished = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            this.update(&id, |status| {
                status.finished_at = Some(finished);
                match outcome {
                    Ok(comparison) => {
                        tracing::info!(rebuild = %id, equal = comparison.equal, "A rebuild of the projections finished.");
                        status.state = "done";
                        status.comparison = Some(comparison);
                    }
                    Err(err) => {
                        tracing::error!(rebuild = %id, error = %format!("{err:#}"), "A rebuild of the projections failed.");
                        status.state = "failed";
                        status.error = Some(format!("{err:#}"));
                    }
                }
            });
        });
        Ok(status)
    }

    /// A rebuild's status.
    pub fn get(&self, id: &str) -> Option<RebuildStatus> {
        self.lock().iter().find(|s| s.rebuild_id == id).cloned()
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut RebuildStatus)) {
        if let Some(status) = self.lock().iter_mut().find(|s| s.rebuild_id == id) {
            change(status);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RebuildStatus>> {
        // A panic while holding the lock leaves plain data behind: still readable.
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(rows: &[(&'static str, &str, Value)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (table, key, row) in rows {
            snapshot
                .tables
                .entry(table)
                .or_default()
                .insert((*key).to_owned(), row.clone());
        }
        snapshot
    }

    #[test]
    fn equal_snapshots_compare_equal_whatever_the_key_order_of_their_rows() {
        let a = snapshot(&[
            ("checkpoint", "checkpoint:S", json!({"seq": 7})),
            ("slot", "slot:1", json!({"capacity": 3, "reserved": 1})),
        ]);
        let b = snapshot(&[
            ("checkpoint", "checkpoint:S", json!({"seq": 7})),
            ("slot", "slot:1", json!({"reserved": 1, "capacity": 3})),
        ]);
        let comparison = compare(&a, &b);
        assert!(comparison.equal, "{comparison:?}");
        assert_eq!(comparison.checkpoints["S"], 7);
        for table in &comparison.tables {
            assert_eq!(table.live_checksum, table.rebuilt_checksum);
        }
    }

    #[test]
    fn a_changed_a_missing_and_an_extra_record_are_each_reported() {
        let live = snapshot(&[
            (
                "registration",
                "registration:a",
                json!({"status": "reserved"}),
            ),
            (
                "registration",
                "registration:b",
                json!({"status": "confirmed"}),
            ),
        ]);
        let rebuilt = snapshot(&[
            (
                "registration",
                "registration:a",
                json!({"status": "waitlisted"}),
            ),
            (
                "registration",
                "registration:c",
                json!({"status": "received"}),
            ),
        ]);
        let comparison = compare(&live, &rebuilt);
        assert!(!comparison.equal);
        let table = &comparison.tables[0];
        assert_eq!(table.differences, 3);
        assert_ne!(table.live_checksum, table.rebuilt_checksum);
        let keys: Vec<_> = table.first_differences.iter().map(|d| &d.key).collect();
        assert_eq!(keys, ["registration:a", "registration:b", "registration:c"]);
        assert_eq!(table.first_differences[1].rebuilt, None);
        assert_eq!(table.first_differences[2].live, None);
    }
}
