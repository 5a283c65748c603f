//! Helpers for the reservation processor's integration tests: a real nats-server, intake
//! events appended the way the edge appends them, and the decision log read back.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDate;
use processors::metrics::Metrics;
use processors::reservation::decide::Policy;
use processors::reservation::{ReservationConfig, run};
use streams::appender::{Appender, AppenderOptions, Outgoing};
use streams::config::{Replication, ensure_streams};
use streams::events::*;
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::replay::read_to_end;
use streams::subjects::{self, IntakeKind, RegionFilter};
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// Decisions between two snapshots in these tests: small, so they happen.
pub const SNAPSHOT_EVERY: u64 = 7;

pub struct World {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub appender: Appender,
}

pub fn region() -> Region {
    Region::parse("mazowieckie").unwrap()
}

pub fn slot(location: &str) -> SlotKey {
    slot_in(&region(), location)
}

pub fn slot_in(region: &Region, location: &str) -> SlotKey {
    SlotKey {
        region: region.clone(),
        location: Location::parse(location).unwrap(),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).unwrap(),
    }
}

impl World {
    pub async fn start() -> World {
        testkit::init_test_log();
        let nats = NatsServer::start();
        let client = nats.connect().await;
        ensure_streams(&async_nats::jetstream::new(client.clone()), Replication(1))
            .await
            .unwrap();
        let appender = Appender::start(
            client.clone(),
            streams::subjects::INTAKE_STREAM,
            AppenderOptions::default(),
        );
        World {
            nats,
            client,
            appender,
        }
    }

    pub async fn append(&self, kind: IntakeKind, region: &Region, event: Event) -> u64 {
        self.appender
            .append(Outgoing::event(
                subjects::intake(region, kind),
                &Envelope::new("test", event),
            ))
            .await
            .expect("the intake stream accepts the event")
    }

    pub async fn set_capacity(&self, slot: &SlotKey, capacity: u32) {
        self.append(
            IntakeKind::Capacity,
            &slot.region,
            Event::CapacitySet(CapacitySet {
                slot: slot.clone(),
                capacity,
            }),
        )
        .await;
    }

    /// Appends a submission and returns (id, intake sequence).
    pub async fn submit(&self, slot: &SlotKey) -> (RegistrationId, u64) {
        let id = RegistrationId::generate(&slot.region);
        let seq = self
            .append(IntakeKind::Submitted, &slot.region, submitted(&id, slot))
            .await;
        (id, seq)
    }

    pub async fn cancel(&self, id: &RegistrationId) -> u64 {
        self.append(
            IntakeKind::Cancel,
            &id.region(),
            Event::CancellationRequested(CancellationRequested {
                registration_id: id.clone(),
            }),
        )
        .await
    }

    /// Starts one reservation replica for the test region; returns its shutdown token,
    /// metrics and task.
    pub fn replica(&self) -> Replica {
        self.replica_for(RegionFilter::One(region()))
    }

    /// Starts one reservation replica for `regions` (one region, or `*`), snapshotting every
    /// [`SNAPSHOT_EVERY`] decisions, so every test here also writes and reads snapshots.
    pub fn replica_for(&self, regions: RegionFilter) -> Replica {
        self.replica_with(regions, SNAPSHOT_EVERY)
    }

    /// Starts one reservation replica for `regions`, snapshotting every `snapshot_every`
    /// decisions (0: never).
    pub fn replica_with(&self, regions: RegionFilter, snapshot_every: u64) -> Replica {
        self.replica_deciding(regions, snapshot_every, Policy::default())
    }

    /// Starts one reservation replica for `regions` deciding with `policy`.
    pub fn replica_deciding(
        &self,
        regions: RegionFilter,
        snapshot_every: u64,
        policy: Policy,
    ) -> Replica {
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let task = tokio::spawn(run(
            self.client.clone(),
            ReservationConfig {
                regions,
                policy,
                snapshot_every,
                calendar: Default::default(),
            },
            metrics.clone(),
            shutdown.clone(),
        ));
        Replica {
            shutdown,
            metrics,
            task,
        }
    }

    /// Every reservation decision in the log that this code can decode (tests plant records
    /// it cannot), in order, with its stream sequence.
    pub async fn decisions(&self) -> Vec<(u64, Event)> {
        let js = async_nats::jetstream::new(self.client.clone());
        let mut out = Vec::new();
        read_to_end(
            &js,
            subjects::DECISIONS_STREAM,
            subjects::reservation_decisions_filter(&RegionFilter::All),
            1,
            |r| {
                if let Ok(envelope) = r.envelope {
                    out.push((r.seq, envelope.event));
                }
            },
        )
        .await
        .unwrap();
        out
    }

    /// Appends raw bytes on `subject`, as a newer (or broken) writer would; returns the
    /// sequence.
    pub async fn append_raw(&self, subject: String, payload: &'static [u8]) -> u64 {
        let js = async_nats::jetstream::new(self.client.clone());
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Waits until every one of `ids` has a first decision; returns the log.
    pub async fn wait_decided(&self, ids: &[RegistrationId]) -> Vec<(u64, Event)> {
        testkit::eventually(
            &format!("{} registrations decided", ids.len()),
            Duration::from_secs(30),
            || async {
                let log = self.decisions().await;
                let firsts = first_decisions(&log);
                ids.iter().all(|id| firsts.contains_key(id)).then_some(log)
            },
        )
        .await
    }

    /// Appends many submissions for `slot` at once (the appender groups them, as it does
    /// the edge's); returns their ids in acceptance order.
    pub async fn submit_many(&self, slot: &SlotKey, n: usize) -> Vec<RegistrationId> {
        let ids: Vec<RegistrationId> = (0..n)
            .map(|_| RegistrationId::generate(&slot.region))
            .collect();
        let mut appended = Vec::with_capacity(n);
        for chunk in ids.chunks(500) {
            let seqs =
                futures::future::join_all(chunk.iter().map(|id| {
                    self.append(IntakeKind::Submitted, &slot.region, submitted(id, slot))
                }))
                .await;
            appended.extend(seqs.into_iter().zip(chunk.iter().cloned()));
        }
        appended.sort();
        appended.into_iter().map(|(_, id)| id).collect()
    }

    /// Waits until the decisions stream holds `n` messages (cheaper than reading it back
    /// while many thousands are written); returns the reservation decisions then.
    pub async fn wait_for_decision_count(&self, n: u64) -> Vec<(u64, Event)> {
        let js = async_nats::jetstream::new(self.client.clone());
        testkit::eventually(
            &format!("{n} decisions"),
            Duration::from_secs(120),
            || async {
                let mut stream = js.get_stream(subjects::DECISIONS_STREAM).await.ok()?;
                let info = stream.info().await.ok()?;
                (info.state.messages >= n).then_some(())
            },
        )
        .await;
        self.decisions().await
    }

    /// Waits until `n` registrations have a first decision.
    pub async fn wait_for_first_decisions(&self, n: usize) -> Vec<(u64, Event)> {
        testkit::eventually(
            &format!("{n} first decisions"),
            Duration::from_secs(30),
            || async {
                let log = self.decisions().await;
                (first_decisions(&log).len() >= n).then_some(log)
            },
        )
        .await
    }
}

pub struct Replica {
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Waits until the test region's reader stalls at a record it cannot decode.
    pub async fn wait_for_stall(&self) -> streams::consume::Undecodable {
        testkit::eventually("the reader to stall", Duration::from_secs(30), || async {
            self.metrics.health.stall_of("reservation.mazowieckie")
        })
        .await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

pub fn submitted(id: &RegistrationId, slot: &SlotKey) -> Event {
    Event::RegistrationSubmitted(RegistrationSubmitted {
        registration_id: id.clone(),
        slot: slot.clone(),
        citizen_key: id.to_string(),
        request_hash: String::new(),
        language: "en".into(),
        personal: Sealed {
            key_id: "k1".into(),
            nonce: String::new(),
            ciphertext: String::new(),
        },
    })
}

/// First decision (reserved, waitlisted or rejected) per registration, counting duplicates.
pub fn first_decisions(log: &[(u64, Event)]) -> HashMap<RegistrationId, Vec<Event>> {
    let mut map: HashMap<RegistrationId, Vec<Event>> = HashMap::new();
    for (_, e) in log {
        if let Event::SlotReserved(SlotReserved {
            registration_id, ..
        })
        | Event::RegistrationWaitlisted(RegistrationWaitlisted {
            registration_id, ..
        })
        | Event::SlotRejected(SlotRejected {
            registration_id, ..
        }) = e
        {
            if matches!(e, Event::SlotRejected(r) if map.contains_key(&r.registration_id)) {
                continue; // a waiting registration's end, not a second first decision
            }
            map.entry(registration_id.clone())
                .or_default()
                .push(e.clone());
        }
    }
    map
}

/// Replays the decision log and checks that no slot ever holds more than `capacity`.
pub fn max_active(log: &[(u64, Event)]) -> HashMap<SlotKey, u32> {
    let mut active: HashMap<SlotKey, u32> = HashMap::new();
    let mut max: HashMap<SlotKey, u32> = HashMap::new();
    for (_, e) in log {
        match e {
            Event::SlotReserved(SlotReserved { slot, .. })
            | Event::WaitlistPromoted(WaitlistPromoted { slot, .. }) => {
                let a = active.entry(slot.clone()).or_default();
                *a += 1;
                let m = max.entry(slot.clone()).or_default();
                *m = (*m).max(*a);
            }
            Event::SlotReleased(r) => *active.entry(r.slot.clone()).or_default() -= 1,
            _ => {}
        }
    }
    max
}

impl World {
    /// The snapshots bucket.
    pub async fn snapshot_store(&self) -> async_nats::jetstream::object_store::ObjectStore {
        async_nats::jetstream::new(self.client.clone())
            .get_object_store(subjects::SNAPSHOTS_BUCKET)
            .await
            .expect("ensure_streams created the snapshots bucket")
    }

    /// Rebuilds the test region's state as a replica taking it over would, from its
    /// snapshot (`with_snapshot`) or from the whole log.
    pub async fn rebuild(&self, with_snapshot: bool) -> processors::reservation::rebuild::Rebuilt {
        let js = async_nats::jetstream::new(self.client.clone());
        let store = self.snapshot_store().await;
        processors::reservation::rebuild::rebuild(
            &js,
            &region(),
            Default::default(),
            with_snapshot.then_some(&store),
        )
        .await
        .unwrap_or_else(|halt| panic!("rebuild halted: {halt:?}"))
    }

    /// The decisions one sequential run of the rule takes over the test region's intake, in
    /// order: what the log must hold whatever replicas took over, from snapshots or not.
    pub async fn one_run_of_the_rule_with(&self, policy: Policy) -> Vec<Event> {
        use processors::reservation::decide::{Input, State};
        let js = async_nats::jetstream::new(self.client.clone());
        let mut state = State::new(policy);
        let mut out = Vec::new();
        read_to_end(
            &js,
            subjects::INTAKE_STREAM,
            subjects::intake_filter(&RegionFilter::One(region())),
            1,
            |r| {
                let event = r.envelope.expect("intake decodes").event;
                out.extend(state.handle(&Input { seq: r.seq, event }));
            },
        )
        .await
        .unwrap();
        out
    }

    /// Waits until the log holds every decision one run of the rule takes over intake, and
    /// returns both.
    pub async fn wait_all_decided(&self) -> (Vec<Event>, Vec<Event>) {
        self.wait_all_decided_with(Policy::default()).await
    }

    /// [`World::wait_all_decided`] for replicas deciding with `policy`.
    pub async fn wait_all_decided_with(&self, policy: Policy) -> (Vec<Event>, Vec<Event>) {
        testkit::eventually(
            "every intake event decided",
            Duration::from_secs(30),
            || async {
                let expected = self.one_run_of_the_rule_with(policy).await;
                let log: Vec<Event> = self.decisions().await.into_iter().map(|(_, e)| e).collect();
                (log.len() >= expected.len()).then_some((expected, log))
            },
        )
        .await
    }
}
