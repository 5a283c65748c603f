//! The edge's side of the waiting room ([`streams::waiting_room`]): it hands out tickets,
//! counts them (and the admissions used) for the controller, checks the ticket a submission
//! carries, and keeps operators' settings. Issuing a ticket writes nothing durable: the counts
//! go to the bucket twice a second, whatever the number of tickets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use streams::crypto::Keys;
use streams::model::Region;
use streams::subjects;
use streams::waiting_room::{
    ADMISSION_TTL, Admission, Counts, MAX_TICKET_LEN, REPORT_INTERVAL, Room, RoomConfig, Rooms,
    Ticket, TicketError,
};
use tokio_util::sync::CancellationToken;

use crate::error::EdgeError;

/// The longest a citizen is told to wait before polling again: half of what an admission
/// lasts, so a citizen admitted just after a poll, far sooner than the wait foretold (the
/// pace rose), still finds it with more than half its time left, the page's jitter included
/// (at most a fifth more).
const MAX_POLL: Duration = Duration::from_secs(ADMISSION_TTL.as_secs() / 2);

/// The shortest: a ticket whose place is not counted yet asks again soon.
const MIN_POLL: Duration = Duration::from_secs(2);

/// When a citizen whose expected wait is `wait` should ask again: after half of it, between
/// [`MIN_POLL`] and [`MAX_POLL`]. Halving makes the polls of a long wait few (about the
/// logarithm of the wait, plus one per `MAX_POLL` of it beyond twice that; with a tenth of
/// it, the first benchmark run saw 28 per citizen for a four-minute line), and a citizen
/// still arrives when admitted unless the pace more than doubled since the last poll.
fn poll_after(wait: Duration) -> Duration {
    (wait / 2).clamp(MIN_POLL, MAX_POLL)
}

/// The door of every region's waiting room, on this edge replica. Cheap to clone.
#[derive(Clone)]
pub struct Door {
    /// Every room, followed from the bucket.
    pub rooms: Rooms,
    /// This replica's counts per region, and whether they changed since last reported.
    own: Arc<Mutex<HashMap<Region, (Counts, bool)>>>,
    /// This replica's name in the bucket's count keys.
    edge: String,
    /// The bucket, once open.
    bucket: Arc<OnceLock<kv::Store>>,
    /// How busy this replica is, reported with its counts for the controller's pacing.
    load: Load,
}

/// How busy an edge replica is: the share of its open-submission bound in use. Past the bound
/// it answers `503`, so a busy edge slows a headroom-paced room.
#[derive(Clone, Default)]
pub struct Load {
    open: Option<(Arc<tokio::sync::Semaphore>, usize)>,
}

impl Load {
    /// The load of the `bound` submissions `open` admits (`None`: unbounded, never busy).
    pub fn of(open: Option<Arc<tokio::sync::Semaphore>>, bound: usize) -> Load {
        Load {
            open: open.map(|semaphore| (semaphore, bound.max(1))),
        }
    }

    /// The share in use now (0 to 1).
    pub fn busy(&self) -> f64 {
        self.open.as_ref().map_or(0.0, |(semaphore, bound)| {
            let free = semaphore.available_permits().min(*bound);
            (bound - free) as f64 / *bound as f64
        })
    }
}

/// Where a ticket stands, for the citizen.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Whether it may submit now.
    pub admission: Admission,
    /// Places ahead of it (0 once admitted).
    pub ahead: u64,
    /// Expected wait at the room's rate.
    pub wait: Duration,
    /// When to ask again.
    pub poll_after: Duration,
}

impl Door {
    /// Opens the bucket, follows it and reports this replica's counts and `load` until
    /// `shutdown`.
    pub fn start(js: jetstream::Context, load: Load, shutdown: CancellationToken) -> Door {
        let door = Door {
            rooms: Rooms::default(),
            own: Arc::default(),
            edge: uuid::Uuid::now_v7().simple().to_string(),
            bucket: Arc::default(),
            load,
        };
        let started = door.clone();
        tokio::spawn(async move {
            let Some(bucket) = streams::waiting_room::open(&js, &shutdown).await else {
                return;
            };
            let _ = started.bucket.set(bucket.clone());
            tokio::spawn(started.rooms.clone().follow(bucket, shutdown.clone()));
            started.report(shutdown).await;
        });
        door
    }

    /// Whether the rooms are known (every key of the bucket read once).
    pub fn known(&self) -> bool {
        self.rooms.known()
    }

    /// A new ticket for `region`, counted; the line opens at `opens_ms` (`None`: open).
    pub fn issue(&self, region: &Region, now_ms: i64, opens_ms: Option<i64>) -> Ticket {
        let ticket = Ticket::issue(region.clone(), now_ms, opens_ms);
        let mut own = self.own.lock().expect("lock");
        let (counts, changed) = own.entry(region.clone()).or_default();
        counts.issue(ticket.place);
        *changed = true;
        ticket
    }

    /// Counts one admission used (the registration it admitted is stored).
    pub fn used(&self, ticket: &Ticket) {
        let mut own = self.own.lock().expect("lock");
        let (counts, changed) = own.entry(ticket.region.clone()).or_default();
        counts.use_one(ticket.place);
        *changed = true;
    }

    /// Where `ticket` stands in `room`.
    pub fn standing(room: &Room, ticket: &Ticket) -> Standing {
        let rate = room.rate().max(1.0);
        let (admission, ahead) = match &room.serving {
            None => (Admission::Waiting, 0.0),
            Some(serving) => (
                serving.admits(ticket.place),
                serving.ahead(&room.total, ticket.place),
            ),
        };
        let ahead = ahead.max(0.0).round() as u64;
        let wait = Duration::from_secs_f64(ahead as f64 / rate);
        let poll_after = poll_after(wait);
        Standing {
            admission,
            ahead: if admission == Admission::Waiting {
                ahead
            } else {
                0
            },
            wait,
            poll_after,
        }
    }

    /// The ticket a submission for `region` must carry (`header`), checked: `None` when the
    /// region's room is off (a ticket, if any, is then ignored).
    pub fn check(
        &self,
        keys: &Keys,
        region: &Region,
        header: Option<&str>,
    ) -> Result<Option<Ticket>, EdgeError> {
        // A header that cannot be a ticket at all is bad input whatever the room's state
        // (a ticket is otherwise ignored while the room is off).
        if header.is_some_and(|text| text.trim().len() > MAX_TICKET_LEN) {
            return Err(EdgeError::TicketInvalid(format!(
                "a ticket is at most {MAX_TICKET_LEN} characters"
            )));
        }
        if !self.known() {
            return Err(EdgeError::Unavailable("the list of waiting rooms"));
        }
        // On the submission path: a room that is off costs no copy of it.
        if !self.rooms.is_on(region) {
            return Ok(None);
        }
        let room = self.rooms.get(region);
        let ticket = read(keys, header.ok_or(EdgeError::TicketRequired)?)?;
        if ticket.region != *region {
            return Err(EdgeError::TicketInvalid(format!(
                "this ticket is for region {}, not {region}",
                ticket.region
            )));
        }
        let standing = Self::standing(&room, &ticket);
        match standing.admission {
            Admission::Admitted => Ok(Some(ticket)),
            Admission::Expired => Err(EdgeError::TicketExpired),
            Admission::Waiting => Err(EdgeError::NotAdmitted {
                ahead: standing.ahead,
                wait: standing.poll_after,
            }),
        }
    }

    /// Writes `region`'s settings.
    pub async fn configure(&self, region: &Region, config: &RoomConfig) -> Result<(), EdgeError> {
        let bucket = self
            .bucket
            .get()
            .ok_or(EdgeError::Unavailable("the waiting-room bucket"))?;
        let value = serde_json::to_vec(config).expect("settings serialize");
        bucket
            .put(subjects::room_config(region), value.clone().into())
            .await
            .map_err(|err| {
                tracing::warn!(%region, error = %err, "A waiting room's settings were not written.");
                EdgeError::Unavailable("the waiting-room bucket")
            })?;
        // Read-your-writes on this replica; the others follow the bucket.
        self.rooms
            .apply(&subjects::room_config(region), Some(&value), 0);
        Ok(())
    }

    /// Puts the counts every [`REPORT_INTERVAL`] (those that changed, and those of every room
    /// that is on, whose controller paces by this replica's load), forgetting what the
    /// controller has passed for good (expired places).
    async fn report(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REPORT_INTERVAL) => {}
            }
            let Some(bucket) = self.bucket.get() else {
                continue;
            };
            let busy = self.load.busy();
            let now = chrono::Utc::now().timestamp_millis();
            let changed: Vec<(Region, Vec<u8>)> = {
                let mut own = self.own.lock().expect("lock");
                for (region, room) in self.rooms.all() {
                    if room.is_on() {
                        own.entry(region).or_default().1 = true;
                    }
                }
                own.iter_mut()
                    .filter(|(_, (_, changed))| *changed)
                    .map(|(region, (counts, changed))| {
                        if let Some(serving) = self.rooms.get(region).serving {
                            counts.forget_before(serving.expired);
                        }
                        counts.busy = busy;
                        counts.reported_ms = now;
                        *changed = false;
                        (
                            region.clone(),
                            serde_json::to_vec(counts).expect("counts serialize"),
                        )
                    })
                    .collect()
            };
            for (region, value) in changed {
                let key = subjects::room_counts(&region, &self.edge);
                if let Err(err) = bucket.put(&key, value.into()).await {
                    tracing::warn!(%region, error = %err, "Ticket counts were not reported; trying again.");
                    if let Some((_, changed)) = self.own.lock().expect("lock").get_mut(&region) {
                        *changed = true;
                    }
                }
            }
        }
    }
}

/// Reads a ticket, mapping its errors to the edge's.
pub fn read(keys: &Keys, text: &str) -> Result<Ticket, EdgeError> {
    Ticket::decode(text.trim(), keys).map_err(|err| match err {
        TicketError::Malformed | TicketError::Forged => EdgeError::TicketInvalid(err.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_is_the_share_of_open_submissions_in_use() {
        let open = Arc::new(tokio::sync::Semaphore::new(8));
        let load = Load::of(Some(open.clone()), 8);
        assert_eq!(load.busy(), 0.0);
        let held = open.try_acquire_many(6).unwrap();
        assert_eq!(load.busy(), 0.75);
        drop(held);
        assert_eq!(load.busy(), 0.0);
        assert_eq!(Load::of(None, 0).busy(), 0.0);
    }

    /// A citizen who follows the advice through a steady line polls a few times however
    /// long the wait (a 25-minute wait: 17 polls, where a one-minute ceiling made 30), and is
    /// never told to wait so long that an admission could lapse before the next poll, the
    /// page's jitter (up to a fifth more) included.
    #[test]
    fn polls_are_few_for_a_long_wait_and_never_outlast_an_admission() {
        let polls = |wait_s: u64| {
            let (mut left, mut polls) = (Duration::from_secs(wait_s), 0);
            while !left.is_zero() {
                let next = poll_after(left);
                assert!(next.mul_f64(1.2) < ADMISSION_TTL, "{next:?}");
                left = left.saturating_sub(next);
                polls += 1;
            }
            polls
        };
        assert_eq!(polls(1), 1);
        assert_eq!(polls(60), 6);
        assert_eq!(polls(25 * 60), 17);
        // A far longer wait adds one poll per MAX_POLL of it, no more.
        assert_eq!(
            polls(120 * 60) - polls(60 * 60),
            (3600 / MAX_POLL.as_secs()) as usize
        );
        assert_eq!(poll_after(Duration::from_secs(3600)), MAX_POLL);
        assert_eq!(poll_after(Duration::ZERO), MIN_POLL);
    }
}
