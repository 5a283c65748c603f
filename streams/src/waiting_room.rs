//! The waiting room (contract 1.2): citizens take a signed ticket at the door and are
//! admitted, in order of arrival, at the rate an operator sets.
//!
//! Nothing here writes per ticket. A ticket is a [`Place`] in its region's line, signed with
//! a key derived from the server secret; any edge issues and checks one with no state of its
//! own. Who may submit is a watermark: each region's serving [`Place`], kept in the
//! [`crate::subjects::WAITING_ROOM_BUCKET`] key-value bucket by one leased controller; every
//! ticket at or below it is admitted, every ticket at or below the `expired` mark (the serving
//! place as it was [`ADMISSION_TTL`] ago) is no longer. A watermark cannot skip anyone, and a
//! ticket admits one registration because its use is a message on its own subject
//! ([`crate::subjects::ticket`]) appended, fenced on that subject being empty, in the same atomic
//! batch as the registration.
//!
//! To advance the watermark at a rate the controller must know how many places lie ahead of
//! it. Each edge counts the tickets it issued and the admissions it used, per second of place,
//! and puts those counts in the bucket twice a second ([`Counts`]); the controller sums them.
//! Within a second, places are assumed spread evenly (their millisecond and random tie-breaker
//! are), which is all the pacing and the positions shown to citizens need.
//!
//! Places: after the region opens, a ticket's place is its arrival (millisecond, then a random
//! tie-breaker). Every ticket taken before the opening gets a random place in the second just
//! before it ([`place_for`]): arriving early gains a place ahead of everyone who comes after
//! the opening, and refreshing at the exact second gains nothing among the early.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio_util::sync::CancellationToken;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::crypto::{Keys, constant_time_eq};
use crate::model::Region;

/// The request header a submission carries its ticket in.
pub const TICKET_HEADER: &str = "Waiting-Room-Ticket";

/// The longest a ticket's text can be (the contract's `maxLength` of [`TICKET_HEADER`]).
pub const MAX_TICKET_LEN: usize = 256;

/// How long an admission lasts: a ticket admitted longer ago than this is expired, and the
/// places it did not use pass on to those still waiting.
pub const ADMISSION_TTL: Duration = Duration::from_secs(300);

/// How often an edge puts its counts in the bucket.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// How far behind the clock the serving place stays: tickets younger than this may not be
/// counted yet (each edge reports every [`REPORT_INTERVAL`]), so they are not admitted yet.
pub const REPORT_LAG_MS: i64 = 1_500;

/// How often the controller measures the pipeline behind a room and adjusts its pace
/// ([`Serving::paced`]).
pub const PACE_INTERVAL: Duration = Duration::from_secs(1);

/// A stage's flow is measured over this long: over one second, stages that work in batches
/// (a reader delivers hundreds at once, a processor acknowledges a batch) look now stopped, now
/// twice as fast.
const FLOW_WINDOW_MS: i64 = 5_000;

/// A stage is behind when its backlog is more than this many seconds of its work (of what it
/// got through lately, or of admissions at the current pace while that is not measured yet),
/// and more than [`BACKLOG_FLOOR`] records...
const BACKLOG_SECONDS: f64 = 2.0;

/// ...and congested when, behind, it takes in more than it gets through by more than this
/// share (its backlog, when its flow is not measured yet, grew by more than this share since
/// the last measurement). A backlog that shrinks is left to
/// drain at the pace that lets it.
const GROWTH: f64 = 0.05;

/// Backlogs below this many records are never behind: a stage that batches holds a few
/// hundred in passing.
const BACKLOG_FLOOR: f64 = 200.0;

/// The edges are congested when the busiest uses more than this share of its open-submission
/// bound (past it, it answers `503`)...
const BUSY_HIGH: f64 = 0.5;

/// ...and clear below this share.
const BUSY_LOW: f64 = 0.25;

/// On congestion the pace is multiplied by this when the congested stage's own flow is not
/// measured (a stage not running, busy edges, a consumer seen for the first time)...
const CUT: f64 = 0.7;

/// ...and, when it is, by the share of what arrives that the stage gets through, times this
/// margin (so its backlog drains), between [`DEEPEST_CUT`] and [`SHALLOWEST_CUT`]: the pace
/// falls to what the slowest stage takes, not by a fixed step (with a fixed 0.7 the record
/// surge swung between 226 and 734 a second around the pipeline's 400, and the peaks cost
/// `503`s and a p99 of 0.9 s).
const DRAIN_MARGIN: f64 = 0.95;

/// See [`DRAIN_MARGIN`].
const DEEPEST_CUT: f64 = 0.5;

/// See [`DRAIN_MARGIN`].
const SHALLOWEST_CUT: f64 = 0.95;

/// ...at most once in this long: what was admitted before a cut takes seconds to reach the
/// pipeline (citizens poll, then submit), so a backlog goes on growing for a while after the
/// cut that will drain it; cutting again sooner overshoots (the first surge runs went from
/// 370 to 89 a second in twelve seconds).
const CUT_HOLD_MS: i64 = 6_000;

/// A stage that is not running is no lagging signal: the pace falls every this long.
const STALL_HOLD_MS: i64 = 3_000;

/// When every stage is clear the pace rises by this share of the operator's rate per second
/// (additive increase: from the start to the rate in 9 s)...
const RISE_PER_SECOND: f64 = 0.1;

/// ...up to [`PLATEAU`] of the ceiling (what the slowest stage was measured to take at the
/// last congestion, or the pace it began at); from there on it probes by this share of the
/// ceiling a second (TCP CUBIC's plateau): the surge runs rose straight back to a cap of
/// 1,000 and met the same congestion every forty seconds, with `503`s at each peak.
const PROBE_PER_SECOND: f64 = 0.02;

/// See [`PROBE_PER_SECOND`].
const PLATEAU: f64 = 0.9;

/// Past the ceiling the probe rises by at least this share of its distance above it a second,
/// so a stage that recovered (or a ceiling measured low) is found again within a minute: from
/// the ceiling to twice it in about 45 s. Slowly, because what a rise admits reaches the slowest
/// stage seconds later: with a quarter a second the first surge run went from the ceiling to
/// the cap (2.5 times it) in fifteen seconds, each time, and each time was cut back.
const PROBE_GROWTH: f64 = 0.05;

/// A cut more than this long after the previous one begins a new congestion: the pace it
/// begins at is the new ceiling.
const EPISODE_MS: i64 = 20_000;

/// A paced room starts at this share of the operator's rate and rises from there (TCP's slow
/// start): a rate set far above what the pipeline takes costs no burst at the opening.
const START_SHARE: f64 = 0.1;

/// The pace rises only while at most this share of the citizens admitted in the last
/// [`RECENT_MS`] have not submitted yet: citizens far back poll seldom, so a pace that jumps
/// is followed by its arrivals only later, and the pipeline's backlogs cannot tell yet. (Only
/// recent admissions count: those who gave up must not hold the pace for the five minutes
/// their admission lasts.)
const NOT_COME_SHARE: f64 = 0.5;

/// See [`NOT_COME_SHARE`]. The edge tells a citizen to poll again after half the expected
/// wait (at most half of [`ADMISSION_TTL`]), so a citizen admitted when foretold has come
/// within a minute of it; one further back polls less often, but only a pace more than
/// doubled since that citizen's last poll admits them that much sooner.
const RECENT_MS: i64 = 60_000;

/// The pace never falls below this many admissions per second: the line keeps moving, and
/// the pipeline keeps being probed.
pub const MIN_PACE: f64 = 1.0;

/// An edge's load report older than this is not counted (the edge is gone or cut off).
const LOAD_FRESH_MS: i64 = 5_000;

/// How often the expired mark's history is sampled (its resolution).
const HISTORY_STEP_MS: i64 = 10_000;

/// 2³²: the tie-breakers' range.
const TIES: f64 = 4_294_967_296.0;

/// A place in a region's line: a millisecond, then a random tie-breaker. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Place {
    /// Milliseconds since the Unix epoch (of the arrival, or a random one in the second before
    /// the opening).
    pub ms: i64,
    /// Random tie-breaker among places of one millisecond.
    pub tie: u32,
}

impl Place {
    /// The second this place counts in.
    pub fn second(self) -> i64 {
        self.ms.div_euclid(1000)
    }

    /// How far into its second this place lies, in `[0, 1)`.
    fn fraction(self) -> f64 {
        (self.ms.rem_euclid(1000) as f64 + f64::from(self.tie) / TIES) / 1000.0
    }

    /// The place `fraction` (in `[0, 1)`) of the way into `second`.
    fn at(second: i64, fraction: f64) -> Place {
        let thousandths = fraction.clamp(0.0, 1.0) * 1000.0;
        let ms = (thousandths.floor() as i64).min(999);
        let tie = ((thousandths - ms as f64) * TIES).clamp(0.0, TIES - 1.0) as u32;
        Place {
            ms: second * 1000 + ms,
            tie,
        }
    }

    /// The last place of the millisecond before `ms`.
    pub fn before(ms: i64) -> Place {
        Place {
            ms: ms - 1,
            tie: u32::MAX,
        }
    }
}

/// The place of a ticket taken at `arrived_ms` in a line that opens at `opens_ms` (`None`: open).
pub fn place_for(arrived_ms: i64, opens_ms: Option<i64>, rng: &mut impl Rng) -> Place {
    match opens_ms {
        Some(opens) if arrived_ms < opens => Place {
            ms: (prequeue_second(opens)) * 1000 + rng.random_range(0..1000),
            tie: rng.random(),
        },
        _ => Place {
            ms: arrived_ms,
            tie: rng.random(),
        },
    }
}

/// The second that holds every place taken before an opening at `opens_ms`.
fn prequeue_second(opens_ms: i64) -> i64 {
    opens_ms.div_euclid(1000) - 1
}

/// A ticket: a region and a place, with an id that its one use is recorded under. No personal
/// data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// 32 hex digits, random.
    pub id: String,
    /// The region whose line it stands in.
    pub region: Region,
    /// When it was taken (Unix milliseconds).
    pub arrived_ms: i64,
    /// Its place in the line.
    pub place: Place,
}

/// Why a ticket was refused before its place was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not a ticket of this system's format.
    #[error("the ticket is not in the format this server issues")]
    Malformed,
    /// Its signature does not match its contents: forged or altered.
    #[error("the ticket's signature does not match: it was not issued here or was altered")]
    Forged,
}

/// The purpose a ticket's signature is keyed with ([`Keys::digest`]).
const TICKET_PURPOSE: &str = "waiting-room-ticket";

impl Ticket {
    /// A new ticket for `region`, taken at `arrived_ms` in a line opening at `opens_ms`.
    pub fn issue(region: Region, arrived_ms: i64, opens_ms: Option<i64>) -> Ticket {
        let mut rng = rand::rng();
        let id: [u8; 16] = rng.random();
        Ticket {
            id: hex::encode(id),
            region,
            arrived_ms,
            place: place_for(arrived_ms, opens_ms, &mut rng),
        }
    }

    fn body(&self) -> String {
        format!(
            "w1.{}.{}.{}.{}.{}",
            self.region, self.arrived_ms, self.place.ms, self.place.tie, self.id
        )
    }

    /// The ticket as the citizen carries it: its fields, then a keyed signature of them.
    pub fn encode(&self, keys: &Keys) -> String {
        let body = self.body();
        let signature = keys.digest(TICKET_PURPOSE, body.as_bytes());
        format!("{body}.{}", &signature[..32])
    }

    /// Reads a ticket back, checking its signature.
    pub fn decode(text: &str, keys: &Keys) -> Result<Ticket, TicketError> {
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::Malformed);
        }
        let (body, signature) = text.rsplit_once('.').ok_or(TicketError::Malformed)?;
        let expected = keys.digest(TICKET_PURPOSE, body.as_bytes());
        let parts: Vec<&str> = body.split('.').collect();
        let [version, region, arrived, ms, tie, id] = parts[..] else {
            return Err(TicketError::Malformed);
        };
        if version != "w1" {
            return Err(TicketError::Malformed);
        }
        if !constant_time_eq(signature.as_bytes(), &expected.as_bytes()[..32]) {
            return Err(TicketError::Forged);
        }
        let ticket = Ticket {
            region: Region::parse(region).map_err(|_| TicketError::Malformed)?,
            arrived_ms: arrived.parse().map_err(|_| TicketError::Malformed)?,
            place: Place {
                ms: ms.parse().map_err(|_| TicketError::Malformed)?,
                tie: tie.parse().map_err(|_| TicketError::Malformed)?,
            },
            id: id.to_owned(),
        };
        let hex_id = ticket.id.len() == 32 && ticket.id.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_id {
            return Err(TicketError::Malformed);
        }
        Ok(ticket)
    }
}

/// What an operator set for a region's waiting room (key [`crate::subjects::room_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    /// Whether submissions to the region need an admitted ticket.
    pub enabled: bool,
    /// Admissions per second.
    pub rate: u32,
    /// When the line opens (Unix milliseconds): tickets taken earlier are drawn at random
    /// among themselves. `None`: open.
    pub opens_ms: Option<i64>,
    /// Whether `rate` is the pace or a cap on it.
    #[serde(default)]
    pub pacing: Pacing,
}

/// How a room's admission rate ([`RoomConfig::rate`]) is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// The rate is a cap: the controller admits as fast as the pipeline's measured headroom
    /// allows, up to it ([`Serving::paced`]).
    #[default]
    Headroom,
    /// The controller admits at the rate, whatever the pipeline's state.
    Fixed,
}

impl Pacing {
    /// The name operators use (`headroom`, `fixed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Pacing::Headroom => "headroom",
            Pacing::Fixed => "fixed",
        }
    }

    /// Reads an operator's name for it.
    pub fn parse(name: &str) -> Option<Pacing> {
        [Pacing::Headroom, Pacing::Fixed]
            .into_iter()
            .find(|p| p.as_str() == name)
    }
}

/// The pipeline behind a region's room as the controller measures it every
/// [`PACE_INTERVAL`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    /// A stage that is not running for the region at all (no reservation processor holds its
    /// lease): nothing admitted now could be decided.
    pub stalled: Option<String>,
    /// Each stage's backlog and progress, as its consumer reports them.
    pub stages: Vec<Stage>,
    /// The busiest edge's share of its open-submission bound in use (0 to 1).
    pub busy: f64,
    /// The citizens admitted in the last minute, and of them those who have not submitted
    /// yet ([`Serving::recent`]).
    pub recent: (f64, f64),
}

impl Pressure {
    /// The stages behind `region`'s room, from the consumers JetStream lists on the intake
    /// stream (`intake`) and the decisions stream (`decisions`): the reservation processor's
    /// and the projection workers' ordered readers (known by
    /// [`crate::subjects::READER_METADATA`]), the verification and notification processors'
    /// durable consumers. Any other consumer (an analyst's replay) is none of the room's
    /// business. Where several consumers serve one stage (readers of several replicas), the one
    /// furthest behind stands for it.
    pub fn stages_of(
        region: &Region,
        intake: &[jetstream::consumer::Info],
        decisions: &[jetstream::consumer::Info],
    ) -> Vec<Stage> {
        use crate::subjects as s;
        let readers = [
            (intake, s::reservation_reader(region)),
            (intake, s::projection_reader(s::INTAKE_STREAM)),
            (decisions, s::projection_reader(s::DECISIONS_STREAM)),
        ];
        let durables = [
            (decisions, s::verification_consumer(region)),
            (decisions, s::notification_consumer(region)),
        ];
        let furthest = |name: String,
                        infos: &[jetstream::consumer::Info],
                        is: &dyn Fn(&jetstream::consumer::Info) -> bool| {
            infos
                .iter()
                .filter(|i| is(i))
                .map(|i| Stage::of(name.clone(), i))
                .max_by_key(|stage| stage.pending)
        };
        let mut stages = Vec::new();
        for (infos, name) in readers {
            let reader = |i: &jetstream::consumer::Info| {
                i.config.metadata.get(s::READER_METADATA) == Some(&name)
            };
            stages.extend(furthest(name.clone(), infos, &reader));
        }
        for (infos, name) in durables {
            stages.extend(furthest(name.clone(), infos, &|i| i.name == name));
        }
        stages
    }
}

/// One stage behind a room as its consumer reports it: how much waits for it, and how far it
/// got. Two measurements give its flow ([`Stage::flow`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stage {
    /// The stage: a reader's name ([`crate::subjects::READER_METADATA`]) or a durable
    /// consumer's.
    pub name: String,
    /// Records waiting for it: not delivered yet, or delivered and not acknowledged yet (a
    /// processor's work in hand is behind it too).
    pub pending: u64,
    /// The consumer measured. An ordered reader gets a new one whenever it is recreated, and
    /// its sequence starts again: progress compares only within one consumer.
    pub consumer: String,
    /// Records it got through, in its consumer's own sequence: the acknowledgement floor of a
    /// durable consumer, the delivered sequence of a reader (which acknowledges nothing).
    pub done: u64,
}

/// A stage's records per second between two measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flow {
    /// Got through.
    pub drained: f64,
    /// Arrived: got through, plus what its backlog grew by.
    pub arrived: f64,
}

impl Stage {
    /// A stage as `info` reports it.
    pub fn of(name: String, info: &jetstream::consumer::Info) -> Stage {
        let done = if info.config.ack_policy == jetstream::consumer::AckPolicy::None {
            info.delivered.consumer_sequence
        } else {
            info.ack_floor.consumer_sequence
        };
        Stage {
            name,
            pending: info.num_pending + info.num_ack_pending as u64,
            consumer: info.name.clone(),
            done,
        }
    }

    /// Its flow since `before`, `seconds` ago (`None` when that cannot tell: another consumer,
    /// a sequence that went back, too short a time).
    pub fn flow(&self, before: &Stage, seconds: f64) -> Option<Flow> {
        if self.consumer != before.consumer || self.done < before.done || seconds < 0.2 {
            return None;
        }
        let drained = (self.done - before.done) as f64 / seconds;
        let grew = (self.pending as f64 - before.pending as f64) / seconds;
        Some(Flow {
            drained,
            arrived: (drained + grew).max(0.0),
        })
    }
}

/// The controller's state of a region's line (key [`crate::subjects::room_serving`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Serving {
    /// Every ticket at or below this place is admitted.
    pub serving: Place,
    /// Every ticket at or below this place was admitted more than [`ADMISSION_TTL`] ago:
    /// expired.
    pub expired: Place,
    /// Places admitted since the room was turned on (estimated from the counts).
    pub admitted: f64,
    /// Admissions owed to those waiting: places that expired unused.
    pub credit: f64,
    /// Samples of the serving place (Unix ms, place), one per [`HISTORY_STEP_MS`], for the
    /// last [`ADMISSION_TTL`]: where `expired` comes from.
    pub history: Vec<(i64, Place)>,
    /// When the controller last wrote this (Unix ms).
    pub updated_ms: i64,
    /// Admissions per second the pipeline's headroom allows now, at most the operator's rate
    /// (`None`: the operator's rate; fixed pacing, or nothing measured yet).
    #[serde(default)]
    pub pace: Option<f64>,
    /// Why the pace was last cut below the operator's rate, for operators (`None` while it is
    /// at the rate).
    #[serde(default)]
    pub limited_by: Option<String>,
    /// When the pace was last adjusted (Unix ms).
    #[serde(default)]
    pub paced_ms: i64,
    /// When the pace was last cut (Unix ms).
    #[serde(default)]
    pub cut_ms: i64,
    /// The pace the last congestion began at: the pace rises quickly up to near it, then
    /// probes slowly ([`PROBE_PER_SECOND`]).
    #[serde(default)]
    pub ceiling: Option<f64>,
    /// The stages at each measurement of the last [`FLOW_WINDOW_MS`] (Unix ms, stages): their
    /// flow over that window is what cuts, and by how much.
    #[serde(default)]
    pub marks: Vec<(i64, Vec<Stage>)>,
}

impl Serving {
    /// A line that starts now, behind the first ticket `counts` holds (tickets taken in the
    /// moment between an operator turning the room on and the controller's first step wait
    /// their turn too); nothing is expired.
    pub fn start(now_ms: i64, counts: &Counts) -> Serving {
        let first = counts
            .issued
            .first_key_value()
            .map_or(i64::MAX, |(second, _)| second * 1000);
        Serving {
            serving: Place::before((now_ms - REPORT_LAG_MS).min(first)),
            expired: Place { ms: 0, tie: 0 },
            admitted: 0.0,
            credit: 0.0,
            history: Vec::new(),
            updated_ms: now_ms,
            pace: None,
            limited_by: None,
            paced_ms: now_ms,
            cut_ms: 0,
            ceiling: None,
            marks: Vec::new(),
        }
    }

    /// Admissions per second now: the operator's rate, or under headroom pacing the pace
    /// (which starts at [`START_SHARE`] of the rate).
    pub fn rate(&self, config: &RoomConfig) -> f64 {
        let cap = f64::from(config.rate);
        match config.pacing {
            Pacing::Fixed => cap,
            Pacing::Headroom => self
                .pace
                .unwrap_or(cap * START_SHARE)
                .clamp(MIN_PACE.min(cap), cap),
        }
    }

    /// Adjusts the pace to `pressure` (additive increase, multiplicative decrease, as TCP
    /// finds a link's rate, from a slow start). A stage that is not running, a stage behind
    /// (more than [`BACKLOG_SECONDS`] of its work waiting) that takes in more than it gets
    /// through, or edges near their bound cut it, at most once per [`CUT_HOLD_MS`] and never
    /// below [`MIN_PACE`]: to what the congested stage gets through when its flow is measured
    /// ([`DRAIN_MARGIN`]), by [`CUT`] otherwise. With every stage clear it rises by
    /// [`RISE_PER_SECOND`] of the operator's rate per second up to near the ceiling (what the
    /// last congestion measured), then probes ([`PROBE_PER_SECOND`]); a stage behind but
    /// draining, or more than [`NOT_COME_SHARE`] of the citizens admitted in the last minute
    /// not come yet, holds it.
    pub fn paced(&self, config: &RoomConfig, pressure: &Pressure, now_ms: i64) -> Serving {
        let mut next = self.clone();
        next.paced_ms = now_ms;
        next.marks.retain(|(at, _)| now_ms - at < FLOW_WINDOW_MS);
        next.marks.push((now_ms, pressure.stages.clone()));
        if config.pacing == Pacing::Fixed {
            next.pace = None;
            next.limited_by = None;
            return next;
        }
        let cap = f64::from(config.rate);
        let pace = self.rate(config);
        // Each stage with its flow over the last few seconds (one second is too noisy: stages
        // work in batches), where known.
        let before = self.marks.first();
        let measured: Vec<(&Stage, Option<Flow>)> = pressure
            .stages
            .iter()
            .map(|stage| {
                let flow = before.and_then(|(at, stages)| {
                    let seconds = (now_ms - at) as f64 / 1000.0;
                    let was = stages.iter().find(|b| b.name == stage.name)?;
                    stage.flow(was, seconds)
                });
                (stage, flow)
            })
            .collect();
        let last = |stage: &Stage| {
            self.marks
                .last()
                .and_then(|(_, stages)| stages.iter().find(|b| b.name == stage.name).cloned())
        };
        let behind = |(stage, flow): &(&Stage, Option<Flow>)| {
            let takes = flow.map(|f| f.drained).filter(|d| *d > 0.0);
            stage.pending as f64 > (takes.unwrap_or(pace) * BACKLOG_SECONDS).max(BACKLOG_FLOOR)
        };
        // Behind, a stage is congested when it takes in more than it gets through, or gets
        // nothing through at all (stuck: its backlog holds still only because nothing more
        // arrives).
        let congested = |(stage, flow): &(&Stage, Option<Flow>)| match flow {
            Some(f) => f.arrived > f.drained * (1.0 + GROWTH) || f.drained == 0.0,
            None => last(stage)
                .is_some_and(|was| stage.pending as f64 > was.pending as f64 * (1.0 + GROWTH)),
        };
        let waiting = |(stage, flow): &(&Stage, Option<Flow>)| match flow {
            Some(f) => format!(
                "{} has {} records waiting and gets through {:.0} of the {:.0} arriving a second",
                stage.name, stage.pending, f.drained, f.arrived
            ),
            None => format!("{} has {} records waiting", stage.name, stage.pending),
        };
        let behind_stages: Vec<&(&Stage, Option<Flow>)> =
            measured.iter().filter(|m| behind(m)).collect();
        let furthest = behind_stages
            .iter()
            .copied()
            .max_by_key(|(stage, _)| stage.pending);
        // Why to cut, and the share it takes in that the congested stage gets through (`None`:
        // not measured).
        let congestion: Option<(String, Option<f64>)> = if let Some(stage) = &pressure.stalled {
            Some((format!("{stage} is not running"), None))
        } else if let Some(growing) = behind_stages
            .iter()
            .copied()
            .filter(|m| congested(m))
            .max_by_key(|(stage, _)| stage.pending)
        {
            let share = growing.1.map(|f| {
                if f.drained == 0.0 {
                    0.0
                } else {
                    (f.drained / f.arrived).min(1.0)
                }
            });
            Some((waiting(growing), share))
        } else if pressure.busy > BUSY_HIGH {
            Some((
                format!(
                    "the busiest edge holds {:.0}% of its open submissions",
                    pressure.busy * 100.0
                ),
                None,
            ))
        } else {
            None
        };
        let hold = if pressure.stalled.is_some() {
            STALL_HOLD_MS
        } else {
            CUT_HOLD_MS
        };
        if let Some((why, share)) = congestion {
            if now_ms - self.cut_ms >= hold {
                let factor = share.map_or(CUT, |share| {
                    (share * DRAIN_MARGIN).clamp(DEEPEST_CUT, SHALLOWEST_CUT)
                });
                match share {
                    // What the stage takes, in admissions a second: the ceiling to climb
                    // back to. (A stage that got nothing through measured no capacity.)
                    Some(share) if share > 0.0 => next.ceiling = Some((pace * share).max(MIN_PACE)),
                    _ if now_ms - self.cut_ms > EPISODE_MS => next.ceiling = Some(pace),
                    _ => {}
                }
                next.pace = Some((pace * factor).max(MIN_PACE).min(cap));
                next.cut_ms = now_ms;
            } else {
                next.pace = Some(pace);
            }
            next.limited_by = Some(why);
        } else if let Some(draining) = furthest {
            next.pace = Some(pace);
            next.limited_by = Some(waiting(draining));
        } else if pressure.recent.1 > BACKLOG_FLOOR
            && pressure.recent.1 > pressure.recent.0 * NOT_COME_SHARE
        {
            next.pace = Some(pace);
            if pace < cap {
                next.limited_by = Some(format!(
                    "{:.0} of the {:.0} citizens admitted in the last minute have not submitted yet",
                    pressure.recent.1, pressure.recent.0
                ));
            }
        } else if pressure.busy < BUSY_LOW {
            let elapsed = ((now_ms - self.paced_ms).max(0) as f64 / 1000.0).min(1.0);
            let near = self.ceiling.map_or(cap, |c| c * PLATEAU);
            let ceiling = self.ceiling.unwrap_or(cap);
            let risen = if pace < near {
                (pace + cap * RISE_PER_SECOND * elapsed).min(near)
            } else {
                // Past the ceiling, the probe grows with the distance (CUBIC's convex side):
                // what the last congestion measured no longer holds.
                let step = (ceiling * PROBE_PER_SECOND).max((pace - ceiling) * PROBE_GROWTH);
                pace + step * elapsed
            }
            .min(cap);
            next.pace = Some(risen);
            if risen >= cap {
                next.limited_by = None;
            }
        } else {
            next.pace = Some(pace);
        }
        next
    }

    /// The citizens admitted in the last [`RECENT_MS`] (about: the serving place's history is
    /// sampled every [`HISTORY_STEP_MS`]), and of them those who have not submitted yet.
    pub fn recent(&self, counts: &Counts, now_ms: i64) -> (f64, f64) {
        let since = self
            .history
            .iter()
            .rev()
            .find(|(at, _)| now_ms - at >= RECENT_MS)
            .map_or(self.expired, |(_, place)| *place)
            .max(self.expired);
        let admitted = between(&counts.issued, since, self.serving);
        // Every ticket used was admitted, so every use in the serving place's second counts,
        // not the share of them below the serving place: a second's uses are not spread over
        // it evenly (those past the serving place cannot have come), and with the pre-queue's
        // thousands in one second that share made nearly all of them look not come and held
        // the pace for a minute of the surge runs.
        let used = between(
            &counts.used,
            since,
            Place::before((self.serving.second() + 1) * 1000),
        );
        (admitted, (admitted - used).max(0.0))
    }

    /// Whether `place` may submit now.
    pub fn admits(&self, place: Place) -> Admission {
        if place <= self.expired {
            Admission::Expired
        } else if place <= self.serving {
            Admission::Admitted
        } else {
            Admission::Waiting
        }
    }

    /// One step of the controller: advances the serving place by [`Serving::rate`] × elapsed
    /// places plus owed credit, never past the report lag nor, before `config.opens_ms`, into
    /// the line.
    pub fn step(&self, config: &RoomConfig, counts: &Counts, now_ms: i64) -> Serving {
        let mut next = self.clone();
        let elapsed = ((now_ms - self.updated_ms).max(0) as f64 / 1000.0).min(1.0);
        let fresh = self.rate(config) * elapsed;
        let owed = self.credit.min(fresh);
        let mut limit = Place::before(now_ms - REPORT_LAG_MS);
        if let Some(opens) = config.opens_ms
            && now_ms < opens
        {
            limit = limit.min(Place::before(prequeue_second(opens) * 1000));
        }
        let (serving, admitted) = advance(self.serving, fresh + owed, &counts.issued, limit);
        next.serving = serving.max(self.serving);
        next.admitted += admitted;
        next.credit -= (admitted - fresh).clamp(0.0, owed);
        next.updated_ms = now_ms;
        // The expired mark: the serving place as it was ADMISSION_TTL ago.
        if next
            .history
            .last()
            .is_none_or(|(at, _)| now_ms - at >= HISTORY_STEP_MS)
        {
            next.history.push((now_ms, next.serving));
        }
        let horizon = now_ms - ADMISSION_TTL.as_millis() as i64;
        if let Some(index) = next.history.iter().rposition(|(at, _)| *at <= horizon) {
            let expired = next.history[index].1.max(self.expired);
            // Places that expired unused pass on to those still waiting.
            let lapsed = between(&counts.issued, self.expired, expired)
                - between(&counts.used, self.expired, expired);
            next.credit += lapsed.max(0.0);
            next.expired = expired;
            next.history.drain(..index);
        }
        next
    }

    /// Places between the serving place and `place` (its position in the line; 0 once
    /// admitted).
    pub fn ahead(&self, counts: &Counts, place: Place) -> f64 {
        between(&counts.issued, self.serving, place)
    }

    /// Places waiting: issued beyond the serving place.
    pub fn waiting(&self, counts: &Counts) -> f64 {
        let last = counts
            .issued
            .last_key_value()
            .map_or(self.serving, |(second, _)| Place::at(*second, 1.0));
        between(&counts.issued, self.serving, last)
    }
}

/// Whether a ticket may submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its place was reached less than [`ADMISSION_TTL`] ago.
    Admitted,
    /// Its place was not reached yet.
    Waiting,
    /// Its place was reached more than [`ADMISSION_TTL`] ago.
    Expired,
}

/// Tickets issued and admissions used, per second of place (cumulative). One edge's report,
/// or the sum of every edge's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Tickets issued, by the second of their place.
    pub issued: BTreeMap<i64, u64>,
    /// Tickets used for a registration, by the second of their place.
    pub used: BTreeMap<i64, u64>,
    /// The reporting edge's load: the share of its open-submission bound in use (0 to 1).
    /// Not summed ([`Room::busiest`] takes the largest fresh one).
    #[serde(default)]
    pub busy: f64,
    /// When the edge reported (Unix ms).
    #[serde(default)]
    pub reported_ms: i64,
}

impl Counts {
    /// Counts one ticket issued at `place`.
    pub fn issue(&mut self, place: Place) {
        *self.issued.entry(place.second()).or_default() += 1;
    }

    /// Counts one admission used at `place`.
    pub fn use_one(&mut self, place: Place) {
        *self.used.entry(place.second()).or_default() += 1;
    }

    /// Adds another report's counts (not its load).
    pub fn add(&mut self, other: &Counts) {
        for (second, n) in &other.issued {
            *self.issued.entry(*second).or_default() += n;
        }
        for (second, n) in &other.used {
            *self.used.entry(*second).or_default() += n;
        }
    }

    /// Takes away another report's counts (added before), dropping the seconds left empty.
    pub fn subtract(&mut self, other: &Counts) {
        for (mine, theirs) in [
            (&mut self.issued, &other.issued),
            (&mut self.used, &other.used),
        ] {
            for (second, n) in theirs {
                if let Some(count) = mine.get_mut(second) {
                    *count = count.saturating_sub(*n);
                    if *count == 0 {
                        mine.remove(second);
                    }
                }
            }
        }
    }

    /// Forgets the seconds before `place`'s: the controller has accounted for them.
    pub fn forget_before(&mut self, place: Place) {
        let keep = place.second();
        self.issued.retain(|second, _| *second >= keep);
        self.used.retain(|second, _| *second >= keep);
    }
}

/// How many of the `per_second` places lie in `(from, to]`, places spread evenly within a
/// second.
fn between(per_second: &BTreeMap<i64, u64>, from: Place, to: Place) -> f64 {
    if to <= from {
        return 0.0;
    }
    let (first, last) = (from.second(), to.second());
    let mut total = 0.0;
    for (second, n) in per_second.range(first..=last) {
        let n = *n as f64;
        let start = if *second == first {
            from.fraction()
        } else {
            0.0
        };
        let end = if *second == last { to.fraction() } else { 1.0 };
        total += n * (end - start).max(0.0);
    }
    total
}

/// Moves `from` forward over `budget` of the `per_second` places, no further than `limit`;
/// returns where it stopped and how many places it passed.
fn advance(
    from: Place,
    budget: f64,
    per_second: &BTreeMap<i64, u64>,
    limit: Place,
) -> (Place, f64) {
    if limit <= from {
        return (from, 0.0);
    }
    let mut left = budget;
    let mut at = from;
    for (second, n) in per_second.range(from.second()..=limit.second()) {
        let n = *n as f64;
        let start = if *second == at.second() {
            at.fraction()
        } else {
            0.0
        };
        let end = if *second == limit.second() {
            limit.fraction()
        } else {
            1.0
        };
        let here = n * (end - start).max(0.0);
        if left < here {
            let stop = Place::at(*second, start + left / n).max(at);
            return (stop, budget);
        }
        left -= here;
        at = Place::at(*second, end).min(limit);
    }
    // Fewer places than the budget before the limit: everyone up to it is admitted.
    (limit, budget - left)
}

/// One region's waiting room as the bucket holds it.
#[derive(Debug, Clone, Default)]
pub struct Room {
    /// What an operator set (`None`: never set, the room is off).
    pub config: Option<RoomConfig>,
    /// The controller's state (`None`: not started yet).
    pub serving: Option<Serving>,
    /// The revision of the serving key (0: none), for the controller's conditional update.
    pub serving_revision: u64,
    /// Every edge's counts summed, kept up to date as reports arrive (shared: a copy of the
    /// room costs no copy of the line).
    pub total: Arc<Counts>,
    /// Every edge's last load report: (busy share, reported at Unix ms).
    pub loads: Vec<(f64, i64)>,
}

impl Room {
    /// Whether submissions to the region need an admitted ticket.
    pub fn is_on(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.enabled)
    }

    /// Tickets waiting beyond the serving place (0 before the controller's first step).
    pub fn waiting(&self) -> f64 {
        self.serving
            .as_ref()
            .map_or(0.0, |s| s.waiting(&self.total))
    }

    /// Places admitted since the room was turned on.
    pub fn admitted(&self) -> f64 {
        self.serving.as_ref().map_or(0.0, |s| s.admitted)
    }

    /// Admissions per second now (0 while the room is off).
    pub fn rate(&self) -> f64 {
        match (&self.config, &self.serving) {
            (Some(config), Some(serving)) => serving.rate(config),
            (Some(config), None) => f64::from(config.rate),
            (None, _) => 0.0,
        }
    }

    /// The busiest edge's share of its open-submission bound, among those that reported in
    /// the last few seconds.
    pub fn busiest(&self, now_ms: i64) -> f64 {
        self.loads
            .iter()
            .filter(|(_, at)| now_ms - at <= LOAD_FRESH_MS)
            .map(|(busy, _)| *busy)
            .fold(0.0, f64::max)
    }
}

/// A room and the reports its total is the sum of, as [`Rooms`] keeps them.
#[derive(Default)]
struct Followed {
    room: Room,
    /// Every edge's counts, by edge: only summing needs them, so they stay here.
    by_edge: HashMap<String, Counts>,
}

impl Followed {
    /// Replaces `edge`'s report (`None`: removes it), keeping the total by difference: a report
    /// costs the seconds it covers, not every edge's (each edge reports twice a second, so a
    /// total summed afresh cost every follower edges² × seconds a second).
    fn report(&mut self, edge: String, counts: Option<Counts>) {
        let mut total = std::mem::take(&mut self.room.total);
        let total_mut = Arc::make_mut(&mut total);
        if let Some(old) = self.by_edge.remove(&edge) {
            total_mut.subtract(&old);
        }
        if let Some(new) = counts {
            total_mut.add(&new);
            self.by_edge.insert(edge, new);
        }
        self.room.total = total;
        self.room.loads = self
            .by_edge
            .values()
            .map(|c| (c.busy, c.reported_ms))
            .collect();
    }
}

/// Every region's waiting room as this process knows it, followed from the bucket (see
/// [`Rooms::follow`]). Cheap to clone.
#[derive(Clone, Default)]
pub struct Rooms {
    inner: Arc<RwLock<HashMap<Region, Followed>>>,
    /// Whether the bucket's every key has been read once: until then a room that is on could
    /// look off.
    known: Arc<AtomicBool>,
}

impl Rooms {
    /// `region`'s room (a default, off, when none was ever set).
    pub fn get(&self, region: &Region) -> Room {
        self.inner
            .read()
            .expect("lock")
            .get(region)
            .map(|f| f.room.clone())
            .unwrap_or_default()
    }

    /// How many edges' counts `region`'s total sums.
    pub fn reporting(&self, region: &Region) -> usize {
        self.inner
            .read()
            .expect("lock")
            .get(region)
            .map_or(0, |f| f.by_edge.len())
    }

    /// Whether `region`'s room is on, without copying it.
    pub fn is_on(&self, region: &Region) -> bool {
        self.inner
            .read()
            .expect("lock")
            .get(region)
            .is_some_and(|f| f.room.is_on())
    }

    /// Every region with a room, and its room.
    pub fn all(&self) -> Vec<(Region, Room)> {
        let mut all: Vec<_> = self
            .inner
            .read()
            .expect("lock")
            .iter()
            .map(|(r, f)| (r.clone(), f.room.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether every key of the bucket has been read once.
    pub fn known(&self) -> bool {
        self.known.load(Ordering::Acquire)
    }

    /// Applies one entry of the bucket.
    pub fn apply(&self, key: &str, value: Option<&[u8]>, revision: u64) {
        let Some(key) = crate::subjects::RoomKey::parse(key) else {
            tracing::debug!(key, "A key of the waiting-room bucket is not one of ours.");
            return;
        };
        let mut rooms = self.inner.write().expect("lock");
        let decode = |what: &'static str| {
            move |err: serde_json::Error| {
                tracing::warn!(key = what, error = %err, "A waiting-room entry is unreadable; ignored.");
            }
        };
        match key {
            crate::subjects::RoomKey::Config(region) => {
                rooms.entry(region).or_default().room.config =
                    value.and_then(|v| serde_json::from_slice(v).map_err(decode("config")).ok());
            }
            crate::subjects::RoomKey::Serving(region) => {
                let room = &mut rooms.entry(region).or_default().room;
                room.serving =
                    value.and_then(|v| serde_json::from_slice(v).map_err(decode("serving")).ok());
                room.serving_revision = revision;
            }
            crate::subjects::RoomKey::Counts(region, edge) => {
                let followed = rooms.entry(region).or_default();
                let counts = value.and_then(|v| {
                    serde_json::from_slice::<Counts>(v)
                        .map_err(decode("counts"))
                        .ok()
                });
                followed.report(edge, counts);
            }
        }
    }

    /// Follows `bucket` until `shutdown`: every key's last value, then every change. A watch
    /// that ends (NATS away) is started again from the current values.
    pub async fn follow(self, bucket: kv::Store, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.follow_once(&bucket, &shutdown).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "Following the waiting rooms failed; starting again.")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn follow_once(
        &self,
        bucket: &kv::Store,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        use futures::StreamExt as _;
        let pending = bucket
            .status()
            .await
            .context("Failed to read the waiting-room bucket's status")?
            .values();
        if pending == 0 {
            self.known.store(true, Ordering::Release);
        }
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .context("Failed to watch the waiting-room bucket")?;
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                entry = watch.next() => entry,
            };
            let Some(entry) = entry else {
                anyhow::bail!("the watch ended");
            };
            let entry = entry.context("Failed to read the waiting-room bucket")?;
            let value = matches!(entry.operation, kv::Operation::Put).then_some(&entry.value[..]);
            self.apply(&entry.key, value, entry.revision);
            if entry.seen_current || entry.delta == 0 {
                self.known.store(true, Ordering::Release);
            }
        }
    }
}

/// Opens the waiting-room bucket (created by [`crate::config::ensure_streams`]), waiting
/// through a NATS outage; `None` when `shutdown` fires first.
pub async fn open(js: &jetstream::Context, shutdown: &CancellationToken) -> Option<kv::Store> {
    crate::lease::open_bucket(js, crate::subjects::WAITING_ROOM_BUCKET, shutdown).await
}

/// Measures the pipeline behind each of `regions`' rooms: whether a reservation processor holds
/// the region's lease, and every stage's backlog from the consumers JetStream lists
/// ([`Pressure::stages_of`]). The edges' load and the admissions not used yet come from
/// the bucket, not from here.
pub async fn measure(
    js: &jetstream::Context,
    leases: &kv::Store,
    regions: &[Region],
) -> anyhow::Result<HashMap<Region, Pressure>> {
    use anyhow::Context as _;
    let intake = consumers(js, crate::subjects::INTAKE_STREAM).await?;
    let decisions = consumers(js, crate::subjects::DECISIONS_STREAM).await?;
    let mut pressures = HashMap::new();
    for region in regions {
        let held = leases
            .get(crate::subjects::reservation_lease(region))
            .await
            .context("Failed to read a reservation lease")?
            .is_some();
        pressures.insert(
            region.clone(),
            Pressure {
                stalled: (!held).then(|| format!("the reservation processor of {region}")),
                stages: Pressure::stages_of(region, &intake, &decisions),
                busy: 0.0,
                recent: (0.0, 0.0),
            },
        );
    }
    Ok(pressures)
}

/// Every consumer of `stream`, as JetStream lists them.
async fn consumers(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<jetstream::consumer::Info>> {
    use anyhow::Context as _;
    use futures::TryStreamExt as _;
    js.get_stream_no_info(stream)
        .await
        .with_context(|| format!("Failed to open stream {stream}"))?
        .consumers()
        .try_collect()
        .await
        .with_context(|| format!("Failed to list the consumers of {stream}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn keys() -> Keys {
        Keys::from_secret("a test secret of enough length")
    }

    fn region() -> Region {
        Region::parse("mazowieckie").unwrap()
    }

    #[test]
    fn a_ticket_round_trips_and_any_change_is_forged() {
        let ticket = Ticket::issue(region(), 1_800_000_000_123, None);
        let text = ticket.encode(&keys());
        assert_eq!(Ticket::decode(&text, &keys()), Ok(ticket.clone()));
        // Every single changed character of the signed part is caught.
        let body_len = text.rfind('.').unwrap();
        for i in 0..body_len {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'1' { b'2' } else { b'1' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(Ticket::decode(&altered, &keys()).is_err(), "{altered}");
        }
        // Another server's secret did not sign it.
        let other = Keys::from_secret("another secret, another server");
        assert_eq!(Ticket::decode(&text, &other), Err(TicketError::Forged));
        assert_eq!(
            Ticket::decode("not a ticket", &keys()),
            Err(TicketError::Malformed)
        );
        // An earlier place with a signature made up by the holder.
        let earlier = Ticket {
            place: Place { ms: 0, tie: 0 },
            ..ticket
        };
        let forged = format!("{}.{}", earlier.body(), "0".repeat(32));
        assert_eq!(Ticket::decode(&forged, &keys()), Err(TicketError::Forged));
    }

    #[test]
    fn early_arrivals_are_drawn_into_the_second_before_the_opening_and_later_ones_queue_by_arrival()
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let opens = 1_800_000_000_500;
        let early: Vec<Place> = (0..2000)
            .map(|i| place_for(opens - 3_600_000 + i * 1000, Some(opens), &mut rng))
            .collect();
        let late = place_for(opens, Some(opens), &mut rng);
        for p in &early {
            assert_eq!(p.second(), opens / 1000 - 1);
            assert!(*p < late);
        }
        // The order among the early is not their order of arrival: about half of the
        // neighbouring pairs are swapped.
        let swapped = early.windows(2).filter(|w| w[0] > w[1]).count();
        assert!((800..1200).contains(&swapped), "{swapped} of 1999 swapped");
        let after = place_for(opens + 10, Some(opens), &mut rng);
        assert!(late < after);
        assert_eq!(after.ms, opens + 10);
    }

    /// 1,000 tickets in each of the ten seconds from 20 s before `t0`: old enough to count.
    fn ten_busy_seconds(t0: i64) -> Counts {
        counts(
            &(0..10)
                .map(|s| (t0 / 1000 - 20 + s, 1000))
                .collect::<Vec<_>>(),
        )
    }

    fn counts(per_second: &[(i64, u64)]) -> Counts {
        Counts {
            issued: per_second.iter().copied().collect(),
            ..Counts::default()
        }
    }

    #[test]
    fn the_serving_place_advances_by_the_rate_and_never_past_the_clock() {
        let config = RoomConfig {
            enabled: true,
            rate: 100,
            opens_ms: None,
            pacing: Pacing::Fixed,
        };
        let t0 = 1_800_000_000_000;
        // 1,000 tickets in each of ten seconds, all already old enough to count.
        let c = ten_busy_seconds(t0);
        let mut state = Serving {
            serving: Place::before(t0 - 20_000),
            ..Serving::start(t0, &Counts::default())
        };
        let waiting = state.waiting(&c);
        assert!((waiting - 10_000.0).abs() < 1e-6, "{waiting}");
        for tick in 1..=50 {
            state = state.step(&config, &c, t0 + tick * 100);
        }
        // Five seconds at 100/s: 500 admitted, the rest still waiting.
        assert!((state.admitted - 500.0).abs() < 1e-6, "{}", state.admitted);
        assert!((state.waiting(&c) - 9_500.0).abs() < 1e-3);
        // With nobody left, it catches up with the clock minus the report lag, no further.
        let empty = Counts::default();
        let caught_up = state.step(&config, &empty, t0 + 6_000);
        assert_eq!(caught_up.serving, Place::before(t0 + 6_000 - REPORT_LAG_MS));
    }

    #[test]
    fn before_the_opening_nobody_is_admitted_then_the_early_go_first() {
        let opens = 1_800_000_100_000;
        let config = RoomConfig {
            enabled: true,
            rate: 100,
            opens_ms: Some(opens),
            pacing: Pacing::Fixed,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut c = Counts::default();
        let early: Vec<Place> = (0..1000)
            .map(|_| place_for(opens - 60_000, Some(opens), &mut rng))
            .collect();
        early.iter().for_each(|p| c.issue(*p));
        let mut state = Serving::start(opens - 120_000, &Counts::default());
        let mut now = opens - 110_000;
        while now < opens {
            state = state.step(&config, &c, now);
            assert!(early.iter().all(|p| state.admits(*p) == Admission::Waiting));
            now += 100;
        }
        // After the opening, the early are admitted at the rate once the report lag has
        // passed the second they were drawn into (half a second after the opening).
        while now <= opens + 3_000 {
            state = state.step(&config, &c, now);
            now += 100;
        }
        let admitted = early
            .iter()
            .filter(|p| state.admits(**p) == Admission::Admitted)
            .count();
        // 2.5 s at 100/s, give or take how evenly 1,000 random places fall in their second.
        assert!((200..=300).contains(&admitted), "{admitted}");
    }

    #[test]
    fn an_admission_expires_after_its_ttl_and_unused_places_pass_on() {
        let config = RoomConfig {
            enabled: true,
            rate: 10,
            opens_ms: None,
            pacing: Pacing::Fixed,
        };
        let t0 = 1_800_000_000_000;
        let c = counts(&[(t0 / 1000 - 10, 100), (t0 / 1000 - 9, 10_000)]);
        let first = Place {
            ms: t0 - 10_000 + 500,
            tie: 0,
        };
        let mut state = Serving {
            serving: Place::before(t0 - 10_000),
            ..Serving::start(t0, &Counts::default())
        };
        let mut now = t0;
        while state.admits(first) == Admission::Waiting {
            now += 100;
            state = state.step(&config, &c, now);
        }
        let admitted_at = now;
        while state.admits(first) == Admission::Admitted {
            now += 100;
            state = state.step(&config, &c, now);
        }
        let lasted = now - admitted_at;
        let ttl = ADMISSION_TTL.as_millis() as i64;
        assert!(
            (ttl..=ttl + HISTORY_STEP_MS + 100).contains(&lasted),
            "admitted for {lasted} ms"
        );
        // Nobody used an admission: what expired is owed and admitted on top of the rate.
        assert!(state.credit > 0.0);
        let before = state.admitted;
        for _ in 0..10 {
            now += 100;
            state = state.step(&config, &c, now);
        }
        let in_a_second = state.admitted - before;
        assert!(in_a_second > 10.5, "{in_a_second}");
    }

    fn paced(rate: u32) -> RoomConfig {
        RoomConfig {
            enabled: true,
            rate,
            opens_ms: None,
            pacing: Pacing::Headroom,
        }
    }

    /// A pressure of one stage with `n` waiting whose flow is not measured (its consumer is
    /// new each time, as a reader's is when it is recreated), beside a clear one.
    fn backlog(stage: &str, n: u64) -> Pressure {
        Pressure {
            stages: vec![
                measured("projection.reg_intake", 3, 0),
                Stage {
                    consumer: format!("c{n}"),
                    ..measured(stage, n, 0)
                },
            ],
            ..Pressure::default()
        }
    }

    /// A stage with `pending` waiting and `done` got through, in one consumer.
    fn measured(stage: &str, pending: u64, done: u64) -> Stage {
        Stage {
            name: stage.into(),
            pending,
            consumer: "c".into(),
            done,
        }
    }

    /// Runs the pacing rule once a second for `seconds` under `pressure`.
    fn pace_for(
        mut state: Serving,
        config: &RoomConfig,
        pressure: &Pressure,
        seconds: i64,
    ) -> Serving {
        let start = state.paced_ms;
        for s in 1..=seconds {
            state = state.paced(config, pressure, start + s * 1000);
        }
        state
    }

    /// Runs the pacing rule once a second, each second under the next pressure.
    fn pace_through(mut state: Serving, config: &RoomConfig, pressures: &[Pressure]) -> Serving {
        let start = state.paced_ms;
        for (s, pressure) in pressures.iter().enumerate() {
            state = state.paced(config, pressure, start + (s as i64 + 1) * 1000);
        }
        state
    }

    #[test]
    fn a_clear_pipeline_is_admitted_from_a_slow_start_up_to_the_operators_rate_and_never_faster() {
        let config = paced(400);
        let state = Serving::start(1_800_000_000_000, &Counts::default());
        assert_eq!(state.rate(&config), 40.0);
        let rising = pace_for(state, &config, &backlog("reservation.r", 10), 3);
        assert!((rising.rate(&config) - 160.0).abs() < 1e-6);
        let state = pace_for(rising, &config, &backlog("reservation.r", 10), 30);
        assert_eq!(state.rate(&config), 400.0);
        assert_eq!(state.limited_by, None);
    }

    #[test]
    fn a_growing_backlog_cuts_the_pace_a_draining_one_holds_it_and_once_drained_it_climbs_back() {
        let config = paced(400);
        let full = Serving {
            pace: Some(400.0),
            ..Serving::start(1_800_000_000_000, &Counts::default())
        };
        // More than two seconds of admissions waiting at the reservation processor, and more
        // each second: congested.
        let growing: Vec<Pressure> = (1..=10)
            .map(|s| backlog("reservation.r", 1_000 * s))
            .collect();
        let cut_down = pace_through(full.clone(), &config, &growing);
        let cut = cut_down.rate(&config);
        // Cut at most once per hold, as its effect takes seconds to show: 400 × 0.7² in ten
        // seconds.
        assert!((cut - 400.0 * CUT.powi(2)).abs() < 1e-6, "{cut}");
        assert_eq!(cut_down.ceiling, Some(400.0));
        assert_eq!(
            cut_down.limited_by.as_deref(),
            Some("reservation.r has 10000 records waiting")
        );
        // Behind but shrinking: the pace holds while it drains, and says why.
        let shrinking: Vec<Pressure> = (0..10)
            .map(|s| backlog("reservation.r", 9_000 - 800 * s))
            .collect();
        let held = pace_through(cut_down.clone(), &config, &shrinking);
        assert_eq!(held.rate(&config), cut);
        assert_eq!(
            held.limited_by.as_deref(),
            Some("reservation.r has 1800 records waiting")
        );
        // Behind and flat (the stage gets through exactly what arrives): holds too.
        let flat: Vec<Pressure> = (1..=10)
            .map(|s| Pressure {
                stages: vec![measured("reservation.r", 9_000, 1_000 * s)],
                ..Pressure::default()
            })
            .collect();
        let flat = pace_through(cut_down.clone(), &config, &flat);
        assert_eq!(flat.rate(&config), cut);
        // Drained: it rises by a tenth of the rate a second up to near where the congestion
        // began, then probes by a fiftieth of that, back to the rate and no further.
        let drained = backlog("reservation.r", 0);
        let rising = pace_for(held, &config, &drained, 2);
        assert!((rising.rate(&config) - (cut + 2.0 * 40.0)).abs() < 1e-6);
        let plateau = pace_for(rising.clone(), &config, &drained, 4);
        assert!(
            (plateau.rate(&config) - (360.0 + 8.0)).abs() < 1e-6,
            "{}",
            plateau.rate(&config)
        );
        let back = pace_for(rising, &config, &drained, 60);
        assert_eq!(back.rate(&config), 400.0);
        assert_eq!(back.limited_by, None);
        // A backlog under the floor never cuts, however it grows.
        let small: Vec<Pressure> = (1..=10).map(|s| backlog("reservation.r", 15 * s)).collect();
        assert_eq!(pace_through(full, &config, &small).rate(&config), 400.0);
    }

    #[test]
    fn a_congested_stage_brings_the_pace_down_to_what_it_gets_through_in_one_cut() {
        let config = paced(1_000);
        let fast = Serving {
            pace: Some(600.0),
            ..Serving::start(1_800_000_000_000, &Counts::default())
        };
        // The notification stage, behind, gets through 1,200 records a second of 1,800
        // arriving: its backlog grows by 600 a second.
        let flowing = |seconds: u64| Pressure {
            stages: vec![measured(
                "notification_r",
                3_000 + 600 * seconds,
                1_200 * seconds,
            )],
            ..Pressure::default()
        };
        let pressures: Vec<Pressure> = (0..=6).map(flowing).collect();
        let state = pace_through(fast, &config, &pressures);
        // Cut once, to what it takes (600 × 1,200 / 1,800 = 400) less the margin that drains
        // the backlog; that is the ceiling to climb back to.
        let rate = state.rate(&config);
        assert!((rate - 400.0 * DRAIN_MARGIN).abs() < 1e-6, "{rate}");
        assert!((state.ceiling.unwrap() - 400.0).abs() < 1e-6);
        assert_eq!(
            state.limited_by.as_deref(),
            Some(
                "notification_r has 6600 records waiting and gets through 1200 of the 1800 \
                 arriving a second"
            )
        );
        // Drained, it probes from there, slowly near the ceiling (a fiftieth of it a
        // second), then faster the further it gets past it.
        let clear = (7..=66)
            .map(|s| Pressure {
                stages: vec![measured("notification_r", 0, 1_200 * s)],
                ..Pressure::default()
            })
            .collect::<Vec<_>>();
        let probed = pace_through(state.clone(), &config, &clear[..3]);
        let rate = probed.rate(&config);
        assert!(
            (rate - (400.0 * DRAIN_MARGIN + 3.0 * 8.0)).abs() < 1e-6,
            "{rate}"
        );
        let rates: Vec<f64> = (4..=clear.len())
            .map(|n| pace_through(state.clone(), &config, &clear[..n]).rate(&config))
            .collect();
        let steps: Vec<f64> = rates.windows(2).map(|w| w[1] - w[0]).collect();
        let rising = rates
            .iter()
            .position(|r| *r >= 1_000.0)
            .expect("back at the rate");
        assert!(
            steps[..rising - 1].windows(2).all(|w| w[1] >= w[0] - 1e-9),
            "{steps:?}"
        );
        // Slowly near the ceiling: ten seconds after the cut, within a fifth above it.
        assert!(rates[6] < 400.0 * 1.2, "{rates:?}");
        assert!(rising < 60, "{rates:?}");
        // A stage that gets nothing through at all is cut by half each time, not to nothing
        // at once; so is one stuck while nothing more arrives.
        let stuck = (0..=6)
            .map(|s| Pressure {
                stages: vec![measured("verification_r", 2_000 + 500 * s, 0)],
                ..Pressure::default()
            })
            .collect::<Vec<_>>();
        let start = Serving {
            pace: Some(600.0),
            ..Serving::start(1_800_000_000_000, &Counts::default())
        };
        assert_eq!(
            pace_through(start.clone(), &config, &stuck).rate(&config),
            300.0
        );
        let still = Pressure {
            stages: vec![measured("verification_r", 2_000, 0)],
            ..Pressure::default()
        };
        assert_eq!(pace_for(start, &config, &still, 8).rate(&config), 150.0);
    }

    #[test]
    fn a_stages_flow_compares_one_consumer_with_itself() {
        let before = measured("s", 100, 1_000);
        let flow = measured("s", 300, 2_000).flow(&before, 2.0).unwrap();
        assert_eq!(flow.drained, 500.0);
        assert_eq!(flow.arrived, 600.0);
        // A recreated reader starts its sequence again: no flow, rather than a wrong one.
        let recreated = Stage {
            consumer: "c2".into(),
            ..measured("s", 300, 20)
        };
        assert_eq!(recreated.flow(&before, 2.0), None);
        assert_eq!(measured("s", 0, 900).flow(&before, 2.0), None);
        assert_eq!(measured("s", 0, 1_100).flow(&before, 0.0), None);
    }

    #[test]
    fn a_stage_that_is_not_running_brings_the_pace_down_to_the_floor_not_to_zero() {
        let config = paced(1_000);
        let stalled = Pressure {
            stalled: Some("reservation of r".into()),
            ..Pressure::default()
        };
        let state = pace_for(
            Serving::start(1_800_000_000_000, &Counts::default()),
            &config,
            &stalled,
            120,
        );
        assert_eq!(state.rate(&config), MIN_PACE);
        assert_eq!(
            state.limited_by.as_deref(),
            Some("reservation of r is not running")
        );
    }

    #[test]
    fn recently_admitted_citizens_who_have_not_come_yet_hold_the_pace_and_those_who_gave_up_do_not()
    {
        let config = paced(400);
        let state = Serving {
            pace: Some(100.0),
            ..Serving::start(1_800_000_000_000, &Counts::default())
        };
        let recent = |admitted, not_come| Pressure {
            recent: (admitted, not_come),
            ..Pressure::default()
        };
        let held = pace_for(state.clone(), &config, &recent(6_000.0, 5_000.0), 5);
        assert_eq!(held.rate(&config), 100.0);
        assert_eq!(
            held.limited_by.as_deref(),
            Some("5000 of the 6000 citizens admitted in the last minute have not submitted yet")
        );
        // A few, or a minority (some always give up): it rises.
        assert_eq!(
            pace_for(state.clone(), &config, &recent(6_000.0, 1_500.0), 1).rate(&config),
            140.0
        );
        assert_eq!(
            pace_for(state, &config, &recent(150.0, 150.0), 1).rate(&config),
            140.0
        );
        // Counted from the line over the last minute: admitted less used. Those admitted
        // earlier who never came are not counted.
        let t0 = 1_800_000_000_000;
        let mut c = counts(&[
            (t0 / 1000 - 100, 1000),
            (t0 / 1000, 1000),
            (t0 / 1000 + 1, 1000),
        ]);
        c.used.insert(t0 / 1000, 600);
        let serving = Serving {
            serving: Place::before(t0 + 1_500),
            history: vec![(t0 - 70_000, Place::before(t0 - 50_000))],
            ..Serving::start(t0, &Counts::default())
        };
        let (admitted, not_come) = serving.recent(&c, t0 + 2_000);
        assert!((admitted - 1500.0).abs() < 1.0, "{admitted}");
        assert!((not_come - 900.0).abs() < 1.0, "{not_come}");
    }

    #[test]
    fn the_citizens_not_come_are_counted_within_a_crowded_second() {
        let t0 = 1_800_000_000_000;
        let second = t0 / 1000 - 10;
        // The pre-queue: 24,000 places in one second, the first fifth admitted, all but 100
        // of them used.
        let mut counts = counts(&[(second, 24_000)]);
        counts.used.insert(second, 4_700);
        let state = Serving {
            serving: Place::at(second, 0.2),
            ..Serving::start(t0, &Counts::default())
        };
        let (admitted, not_come) = state.recent(&counts, t0);
        assert!((admitted - 4_800.0).abs() < 1.0, "{admitted}");
        assert!((not_come - 100.0).abs() < 1.0, "{not_come}");
    }

    #[test]
    fn busy_edges_cut_the_pace_and_a_fixed_room_ignores_every_signal() {
        let config = paced(200);
        let busy = Pressure {
            busy: 0.8,
            ..Pressure::default()
        };
        let state = pace_for(
            Serving {
                pace: Some(200.0),
                ..Serving::start(1_800_000_000_000, &Counts::default())
            },
            &config,
            &busy,
            1,
        );
        assert_eq!(state.rate(&config), 140.0);
        let fixed = RoomConfig {
            pacing: Pacing::Fixed,
            ..config
        };
        let state = pace_for(state, &fixed, &busy, 10);
        assert_eq!(state.rate(&fixed), 200.0);
        assert_eq!(state.pace, None);
    }

    #[test]
    fn the_serving_place_moves_at_the_pace() {
        let config = paced(100);
        let t0 = 1_800_000_000_000;
        let c = ten_busy_seconds(t0);
        let mut state = Serving {
            serving: Place::before(t0 - 20_000),
            pace: Some(25.0),
            ..Serving::start(t0, &Counts::default())
        };
        for tick in 1..=40 {
            state = state.step(&config, &c, t0 + tick * 100);
        }
        assert!((state.admitted - 100.0).abs() < 1e-6, "{}", state.admitted);
    }

    #[test]
    fn the_stages_behind_a_room_are_found_among_the_consumers_jetstream_lists() {
        let r = region();
        let info = |name: &str, reader: Option<String>, pending: u64| {
            let mut config = jetstream::consumer::Config::default();
            if let Some(reader) = reader {
                config
                    .metadata
                    .insert(crate::subjects::READER_METADATA.into(), reader);
            }
            let value = serde_json::json!({
                "stream_name": "S", "name": name, "created": "2026-12-07T00:00:00Z",
                "config": config,
                "delivered": {"consumer_seq": 0, "stream_seq": 0},
                "ack_floor": {"consumer_seq": 0, "stream_seq": 0},
                "num_ack_pending": 0, "num_redelivered": 0, "num_waiting": 0,
                "num_pending": pending,
            });
            serde_json::from_value::<jetstream::consumer::Info>(value).unwrap()
        };
        let other = Region::parse("slaskie").unwrap();
        let intake = vec![
            info("a1", Some(crate::subjects::reservation_reader(&r)), 40),
            info(
                "a2",
                Some(crate::subjects::reservation_reader(&other)),
                9_000,
            ),
            // An analyst's replay from the start: not a stage.
            info("a3", None, 1_000_000),
        ];
        let decisions = vec![
            info(&crate::subjects::verification_consumer(&r), None, 7),
            info(&crate::subjects::notification_consumer(&other), None, 5_000),
            info(
                "p",
                Some(crate::subjects::projection_reader(
                    crate::subjects::DECISIONS_STREAM,
                )),
                12,
            ),
        ];
        let mut found: Vec<(String, u64)> = Pressure::stages_of(&r, &intake, &decisions)
            .into_iter()
            .map(|stage| (stage.name, stage.pending))
            .collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("projection.reg_decisions".to_owned(), 12),
                (format!("reservation.{r}"), 40),
                (format!("verification_{r}"), 7),
            ]
        );
    }

    #[test]
    fn a_room_keeps_the_sum_of_its_edges_latest_reports() {
        let rooms = Rooms::default();
        let r = region();
        let report = |per_second: &[(i64, u64)], used: &[(i64, u64)]| {
            let mut c = counts(per_second);
            c.used = used.iter().copied().collect();
            serde_json::to_vec(&c).unwrap()
        };
        let key = |edge: &str| crate::subjects::room_counts(&r, edge);
        rooms.apply(&key("a"), Some(&report(&[(10, 5), (11, 7)], &[(10, 1)])), 1);
        rooms.apply(&key("b"), Some(&report(&[(11, 3)], &[])), 2);
        // Edge a reports again: its newer counts replace its older ones.
        rooms.apply(&key("a"), Some(&report(&[(11, 8), (12, 2)], &[(11, 4)])), 3);
        let total = rooms.get(&r).total;
        assert_eq!(total.issued, [(11, 11), (12, 2)].into_iter().collect());
        assert_eq!(total.used, [(11, 4)].into_iter().collect());
        // An edge's key deleted: its counts go.
        rooms.apply(&key("a"), None, 4);
        let total = rooms.get(&r).total;
        assert_eq!(total.issued, [(11, 3)].into_iter().collect());
        assert!(total.used.is_empty());
        assert_eq!(rooms.reporting(&r), 1);
    }

    #[test]
    fn only_fresh_load_reports_count() {
        let room = Room {
            loads: vec![(0.9, 1_000), (0.3, 9_000)],
            ..Room::default()
        };
        assert_eq!(room.busiest(10_000), 0.3);
        assert_eq!(room.busiest(5_000), 0.9);
    }

    #[test]
    fn a_position_counts_the_places_between_the_serving_place_and_the_ticket() {
        let t0 = 1_800_000_000_000;
        let c = counts(&[(t0 / 1000, 1000), (t0 / 1000 + 1, 1000)]);
        let state = Serving {
            serving: Place::before(t0),
            ..Serving::start(t0, &Counts::default())
        };
        let middle = Place {
            ms: t0 + 1500,
            tie: 0,
        };
        assert!((state.ahead(&c, middle) - 1500.0).abs() < 1e-6);
        assert_eq!(state.ahead(&c, Place::before(t0 - 5)), 0.0);
    }
}
