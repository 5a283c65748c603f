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

/// How long an admission lasts: a ticket admitted longer ago than this is expired, and the
/// places it did not use pass on to those still waiting.
pub const ADMISSION_TTL: Duration = Duration::from_secs(300);

/// How often an edge puts its counts in the bucket.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// How far behind the clock the serving place stays: tickets younger than this may not be
/// counted yet (each edge reports every [`REPORT_INTERVAL`]), so they are not admitted yet.
pub const REPORT_LAG_MS: i64 = 1_500;

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
        if text.len() > 256 {
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
        }
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

    /// One step of the controller: advances the serving place by `rate × elapsed` places plus
    /// owed credit, never past the report lag nor, before `config.opens_ms`, into the line.
    pub fn step(&self, config: &RoomConfig, counts: &Counts, now_ms: i64) -> Serving {
        let mut next = self.clone();
        let elapsed = ((now_ms - self.updated_ms).max(0) as f64 / 1000.0).min(1.0);
        let fresh = f64::from(config.rate) * elapsed;
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

    /// Adds another report's counts.
    pub fn add(&mut self, other: &Counts) {
        for (second, n) in &other.issued {
            *self.issued.entry(*second).or_default() += n;
        }
        for (second, n) in &other.used {
            *self.used.entry(*second).or_default() += n;
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
}

/// A room and the reports its total is the sum of, as [`Rooms`] keeps them.
#[derive(Default)]
struct Followed {
    room: Room,
    /// Every edge's counts, by edge: only summing needs them, so they stay here.
    by_edge: HashMap<String, Counts>,
}

impl Followed {
    fn recount(&mut self) {
        let mut total = Counts::default();
        for counts in self.by_edge.values() {
            total.add(counts);
        }
        self.room.total = Arc::new(total);
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
                match value.and_then(|v| {
                    serde_json::from_slice::<Counts>(v)
                        .map_err(decode("counts"))
                        .ok()
                }) {
                    Some(counts) => followed.by_edge.insert(edge, counts),
                    None => followed.by_edge.remove(&edge),
                };
                followed.recount();
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

    fn counts(per_second: &[(i64, u64)]) -> Counts {
        Counts {
            issued: per_second.iter().copied().collect(),
            used: BTreeMap::new(),
        }
    }

    #[test]
    fn the_serving_place_advances_by_the_rate_and_never_past_the_clock() {
        let config = RoomConfig {
            enabled: true,
            rate: 100,
            opens_ms: None,
        };
        let t0 = 1_800_000_000_000;
        // 1,000 tickets in each of ten seconds, all already old enough to count.
        let c = counts(
            &(0..10)
                .map(|s| (t0 / 1000 - 20 + s, 1000))
                .collect::<Vec<_>>(),
        );
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
