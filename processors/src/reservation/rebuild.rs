//! Rebuilding a region's state from the log, from the newest snapshot when there is a good
//! one (see [`super::snapshot`]), and writing snapshots.

use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store::ObjectStore};
use streams::consume::{Halt, Undecodable};
use streams::events::{Envelope, Event};
use streams::model::Region;
use streams::replay::{self, Record};
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio::io::AsyncReadExt as _;

use super::decide::{Policy, State};
use super::snapshot::{self, FORMAT_VERSION, Header};

/// Object-store chunk size of a snapshot: fewer, larger writes (each one acknowledged after
/// its fsync), well under nats-server's default 1 MiB `max_payload`.
const CHUNK_BYTES: usize = 512 * 1024;

/// A region's state rebuilt from the log.
#[derive(Debug)]
pub struct Rebuilt {
    /// The state: the fold of every decision of the region, with the operators' settings up
    /// to its checkpoint.
    pub state: State,
    /// Stream sequence of the region's last decision: what the next write's fence expects.
    pub fence: u64,
    /// The decision sequence of the snapshot it started from (`None`: a full fold).
    pub from_snapshot: Option<u64>,
    /// Decisions read from the log (after the snapshot, if any).
    pub folded: u64,
    /// What became of the snapshot ([`Loaded::label`]; `None`: none was looked for).
    pub snapshot: Option<&'static str>,
}

/// What became of the region's snapshot when rebuilding.
#[derive(Debug)]
pub enum Loaded {
    /// None stored yet.
    Absent,
    /// Stored but not used (and why): the rebuild folds the whole log.
    Ignored(String),
    /// Good: the rebuild folds only what follows it.
    Used(Box<(Header, State)>),
}

impl Loaded {
    /// The outcome's label in `reservation_snapshot_loads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Loaded::Absent => "absent",
            Loaded::Ignored(_) => "ignored",
            Loaded::Used(_) => "used",
        }
    }
}

/// Loads `region`'s snapshot from `store` and checks it against the decisions log: the
/// decision it says it stops at must be on the region's decision subject, with the payload
/// digest it recorded. Never fails: whatever goes wrong makes the snapshot [`Loaded::Ignored`].
pub async fn load(js: &jetstream::Context, store: &ObjectStore, region: &Region) -> Loaded {
    let name = subjects::reservation_snapshot(region);
    let mut object = match store.get(&name).await {
        Ok(object) => object,
        Err(err) if err.kind() == jetstream::object_store::GetErrorKind::NotFound => {
            return Loaded::Absent;
        }
        Err(err) => return Loaded::Ignored(format!("cannot be read: {err}")),
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    // The object store checks the object's SHA-256 at its end.
    if let Err(err) = object.read_to_end(&mut bytes).await {
        return Loaded::Ignored(format!("cannot be read: {err}"));
    }
    // The header first: a snapshot of another format or region is not worth decoding.
    let header = match snapshot::decode_header(&bytes) {
        Ok(header) => header,
        Err(err) => return Loaded::Ignored(err.to_string()),
    };
    if &header.region != region {
        return Loaded::Ignored(format!("it is {}'s", header.region));
    }
    if let Err(why) = matches_the_log(js, region, &header).await {
        return Loaded::Ignored(why);
    }
    match snapshot::decode(&bytes) {
        Ok(decoded) => Loaded::Used(Box::new(decoded)),
        Err(err) => Loaded::Ignored(err.to_string()),
    }
}

/// Whether the decision `header` stops at is in the log as it was when snapshotted.
async fn matches_the_log(
    js: &jetstream::Context,
    region: &Region,
    header: &Header,
) -> Result<(), String> {
    let stream = js
        .get_stream_no_info(subjects::DECISIONS_STREAM)
        .await
        .map_err(|err| format!("the decisions stream cannot be opened: {err}"))?;
    let message = stream
        .direct_get(header.decision_seq)
        .await
        .map_err(|err| format!("decision {} cannot be read: {err}", header.decision_seq))?;
    if message.subject.as_str() != subjects::reservation_decisions(region) {
        return Err(format!(
            "decision {} is on {}, not the region's decisions",
            header.decision_seq, message.subject
        ));
    }
    if snapshot::digest(&message.payload) != header.decision_digest {
        return Err(format!(
            "decision {} is not the one it was taken after (digest differs)",
            header.decision_seq
        ));
    }
    Ok(())
}

/// Rebuilds `region`'s state: from its snapshot in `snapshots` when one is good, else from
/// the start of the log, folding the decisions that follow, then the operators' capacities
/// and closed waiting lists up to the state's checkpoint. Stops at a record it cannot
/// decode: a state that skipped a decision could overbook.
pub async fn rebuild(
    js: &jetstream::Context,
    region: &Region,
    policy: Policy,
    snapshots: Option<&ObjectStore>,
) -> Result<Rebuilt, Halt> {
    let started = Instant::now();
    let loaded = match snapshots {
        Some(store) => Some(load(js, store, region).await),
        None => None,
    };
    let snapshot = loaded.as_ref().map(Loaded::label);
    let (mut state, mut fence, from_snapshot) = match loaded {
        Some(Loaded::Used(used)) => {
            let (header, state) = *used;
            let state = State { policy, ..state };
            (state, header.decision_seq, Some(header.decision_seq))
        }
        Some(Loaded::Ignored(why)) => {
            tracing::warn!(%region, reason = %why, "The region's snapshot is ignored; folding the whole decision log.");
            (State::new(policy), 0, None)
        }
        Some(Loaded::Absent) | None => (State::new(policy), 0, None),
    };
    // Settings at or before the snapshot's checkpoint are in the snapshot already.
    let settings_after = state.checkpoint;
    let filter = RegionFilter::One(region.clone());
    let mut bad: Option<Undecodable> = None;
    let mut note_bad = |stream: &str, record: &Record, reason: String| {
        bad.get_or_insert_with(|| Undecodable {
            stream: stream.to_owned(),
            seq: record.seq,
            subject: record.subject.clone(),
            reason,
        });
    };
    let folded = replay::read_to_end(
        js,
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(&filter),
        fence + 1,
        |record: Record| {
            fence = record.seq;
            match &record.envelope {
                Ok(envelope) => state.apply(&envelope.event),
                Err(err) => note_bad(subjects::DECISIONS_STREAM, &record, err.to_string()),
            }
        },
    )
    .await
    .context("Failed to read back the decisions log")?;
    let checkpoint = state.checkpoint;
    // The operators' windows (a few per region), in log order: the rule judges a closing by
    // the window in force before it, and decides on from the one at the checkpoint.
    let mut windows = Vec::new();
    replay::read_to_end(
        js,
        subjects::INTAKE_STREAM,
        subjects::intake_kind_filter(&filter, IntakeKind::Window),
        1,
        |record: Record| match &record.envelope {
            Ok(Envelope {
                event: Event::WindowSet(w),
                ..
            }) if record.seq <= checkpoint => windows.push((record.seq, w.closes_at)),
            Ok(_) => {}
            Err(err) if record.seq <= checkpoint => {
                note_bad(subjects::INTAKE_STREAM, &record, err.to_string())
            }
            Err(_) => {} // after the checkpoint: the live reader stops at it
        },
    )
    .await
    .context("Failed to read back the region's windows")?;
    let window_before = |seq: u64| {
        windows
            .iter()
            .take_while(|(at, _)| *at < seq)
            .last()
            .map(|(_, closes_at)| *closes_at)
    };
    if checkpoint > settings_after {
        for kind in [IntakeKind::Capacity, IntakeKind::Waitlist] {
            replay::read_to_end(
                js,
                subjects::INTAKE_STREAM,
                subjects::intake_kind_filter(&filter, kind),
                settings_after + 1,
                |record: Record| {
                    if record.seq > checkpoint {
                        return;
                    }
                    match &record.envelope {
                        Ok(Envelope {
                            event: Event::CapacitySet(set),
                            ..
                        }) => state.set_capacity(&set.slot, set.capacity),
                        Ok(Envelope {
                            event: Event::WaitlistClosed(closed),
                            ..
                        }) => {
                            state.window_closes_at = window_before(record.seq);
                            if state.closing_is_current(closed) {
                                state.close_waitlist(&closed.slot);
                            }
                        }
                        Ok(_) => {}
                        Err(err) => note_bad(subjects::INTAKE_STREAM, &record, err.to_string()),
                    }
                },
            )
            .await
            .context("Failed to read back the slots' settings")?;
        }
    }
    state.window_closes_at = window_before(checkpoint + 1);
    if let Some(why) = bad {
        return Err(Halt::Undecodable(why));
    }
    tracing::info!(
        %region,
        from_snapshot,
        folded,
        registrations = state.registrations.len(),
        slots = state.slots.len(),
        checkpoint = state.checkpoint,
        seconds = started.elapsed().as_secs_f64(),
        "Reservation state rebuilt from the log."
    );
    Ok(Rebuilt {
        state,
        fence,
        from_snapshot,
        folded,
        snapshot,
    })
}

/// A snapshot's body encoded from the decider's state right after the write that ended at
/// decision `decision_seq`; [`write`] stores it.
pub struct Pending {
    region: Region,
    decision_seq: u64,
    checkpoint: u64,
    body: Vec<u8>,
}

impl Pending {
    /// Encodes `state`, which must be exactly the fold of the region's log up to the
    /// decision at `decision_seq` (see [`super::snapshot`]). Synchronous, so the state
    /// cannot change under it; the slow part (storing) is [`write`].
    pub fn of(region: &Region, decision_seq: u64, state: &State) -> Self {
        Pending {
            region: region.clone(),
            decision_seq,
            checkpoint: state.checkpoint,
            body: snapshot::encode_body(state),
        }
    }
}

/// Stores `pending` as the region's snapshot, replacing the previous one. Returns its size.
pub async fn write(
    js: &jetstream::Context,
    store: &ObjectStore,
    pending: Pending,
) -> anyhow::Result<usize> {
    let stream = js
        .get_stream_no_info(subjects::DECISIONS_STREAM)
        .await
        .context("Failed to open the decisions stream")?;
    let decision = stream
        .direct_get(pending.decision_seq)
        .await
        .context("Failed to read the decision the snapshot stops at")?;
    anyhow::ensure!(
        decision.subject.as_str() == subjects::reservation_decisions(&pending.region),
        "decision {} is not the region's",
        pending.decision_seq
    );
    let header = Header {
        version: FORMAT_VERSION,
        region: pending.region.clone(),
        decision_seq: pending.decision_seq,
        decision_digest: snapshot::digest(&decision.payload),
        checkpoint: pending.checkpoint,
    };
    let head = snapshot::encode_header(&header);
    let size = head.len() + pending.body.len();
    let meta = jetstream::object_store::ObjectMetadata {
        name: subjects::reservation_snapshot(&pending.region),
        description: Some(format!(
            "reservation state of {}: decisions through stream sequence {}, intake through {}, format {}",
            pending.region, pending.decision_seq, pending.checkpoint, FORMAT_VERSION
        )),
        chunk_size: Some(CHUNK_BYTES),
        ..Default::default()
    };
    let mut bytes = head.as_slice().chain(pending.body.as_slice());
    store
        .put(meta, &mut bytes)
        .await
        .context("Failed to store the snapshot")?;
    Ok(size)
}
