//! Filling a real system to N registrations quickly: the messages the edge, the verification
//! processor, the reservation processor and the notification processor would have written for
//! N citizens, written in atomic batches instead of one request at a time.
//!
//! What is the same as the running system: every message's subject, headers and payload (the
//! edge's claim record on the citizen's own subject, the registration's own sealing key, the
//! sealed submission; the registry's verdict; the reservation rule's own decisions
//! ([`State::handle`]); the notification processor's packed `NotificationSent` records, two
//! channels per decision). What is not: no HTTP, no claim fence (every citizen is new, so
//! the fence could not fail), many citizens per atomic batch, and nats-server without fsync
//! while filling (reading back does not depend on it).

use std::collections::BTreeMap;
use std::time::Instant;

use async_nats::jetstream;
use chrono::NaiveDate;
use processors::reservation::decide::{Input, Policy, State};
use processors::reservation::rebuild::Pending;
use streams::appender::{Outgoing, publish_atomic};
use streams::claims::{Claim, ClaimRecord};
use streams::crypto::Keys;
use streams::events::{
    CapacitySet, Envelope, Event, NotificationSent, PersonalData, RegistrationSubmitted,
    VerificationPassed,
};
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::subjects::{self, IntakeKind};

/// Poland's sixteen regions and their share of the population (millions, 2023): the
/// campaign's registrations are spread the same way (mazowieckie about 14.6 %).
pub const REGIONS: [(&str, f64); 16] = [
    ("mazowieckie", 5.51),
    ("slaskie", 4.35),
    ("wielkopolskie", 3.49),
    ("malopolskie", 3.43),
    ("dolnoslaskie", 2.89),
    ("lodzkie", 2.38),
    ("pomorskie", 2.35),
    ("podkarpackie", 2.08),
    ("lubelskie", 2.03),
    ("kujawsko-pomorskie", 2.01),
    ("zachodniopomorskie", 1.64),
    ("warminsko-mazurskie", 1.38),
    ("swietokrzyskie", 1.19),
    ("podlaskie", 1.15),
    ("lubuskie", 0.98),
    ("opolskie", 0.95),
];

/// Places per slot, and the days the campaign's slots span.
pub const CAPACITY: u32 = 100;
/// Days of slots per location.
pub const DAYS: u32 = 30;
/// Citizens per intake batch: three messages each (claim, sealing key, submission) and the
/// previous batch's verdicts, within the server's 1,000 messages per atomic batch.
const CITIZENS_PER_BATCH: usize = 240;
/// Records per `NotificationSent` pack.
const PACK: usize = 100;

/// The largest region, whose takeover and replay are measured.
pub fn largest() -> Region {
    Region::parse(REGIONS[0].0).expect("a region")
}

/// What the fill wrote.
pub struct Filled {
    /// Registrations submitted (all verified, nearly all reserved and confirmed).
    pub registrations: u64,
    /// Messages written to intake.
    pub intake_messages: u64,
    /// Messages written to decisions (packs count once).
    pub decision_messages: u64,
    /// Wall time of the fill.
    pub seconds: f64,
    /// A sample of citizens: (citizen key, registration id), spread over the fill.
    pub sample: Vec<(String, RegistrationId)>,
    /// The largest region's live state after its last decision.
    pub largest_state: State,
    /// The largest region's last decision sequence.
    pub largest_fence: u64,
    /// The largest region's snapshot, taken `snapshot_every` decisions before its end, and
    /// the seconds encoding it took.
    pub snapshot: Option<(Pending, f64)>,
}

/// A region's share of the fill.
struct RegionFill {
    region: Region,
    state: State,
    /// Registrations this region takes in all.
    quota: u64,
    submitted: u64,
    decisions: u64,
    locations: u32,
}

fn slot(region: &Region, n: u64, locations: u32) -> SlotKey {
    let location = (n % u64::from(locations)) as u32;
    let day = ((n / u64::from(locations)) % u64::from(DAYS)) as i64;
    SlotKey {
        region: region.clone(),
        location: Location::parse(&format!("site-{location:05}")).expect("a location"),
        date: NaiveDate::from_ymd_opt(2027, 3, 1).expect("a date") + chrono::Duration::days(day),
    }
}

fn personal(n: u64) -> PersonalData {
    let birth = NaiveDate::from_ymd_opt(1940, 1, 1).expect("a date")
        + chrono::Duration::days((n % 25_000) as i64);
    PersonalData {
        // Unique up to 250 million citizens: a birth date, then a serial number on it.
        national_id: streams::national_id::generate_pesel(birth, ((n / 25_000) % 10_000) as u32),
        full_name: format!("Obywatel Numer {n}"),
        birth_date: birth,
        email: Some(format!("citizen{n}@example.pl")),
        phone: Some(format!("+48{:09}", 500_000_000 + n % 400_000_000)),
        attributes: [
            ("priority_group".to_owned(), serde_json::json!("60+")),
            (
                "chronic_conditions".to_owned(),
                serde_json::json!(n.is_multiple_of(3)),
            ),
            ("doses_taken".to_owned(), serde_json::json!(n % 3)),
        ]
        .into_iter()
        .collect(),
    }
}

/// Appends `messages` (at most 1,000) atomically; their sequences.
async fn append(
    js: &jetstream::Context,
    client: &async_nats::Client,
    messages: Vec<Outgoing>,
) -> anyhow::Result<Vec<u64>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    publish_atomic(js, client, messages)
        .await
        .map_err(|e| anyhow::anyhow!("A fill batch failed: {e}"))
}

/// Writes `registrations` citizens' worth of the pipeline's messages; see the module.
pub async fn fill(
    js: &jetstream::Context,
    client: &async_nats::Client,
    keys: &Keys,
    registrations: u64,
    snapshot_every: u64,
    samples: usize,
) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let total: f64 = REGIONS.iter().map(|(_, share)| share).sum();
    let mut regions: Vec<RegionFill> = REGIONS
        .iter()
        .map(|(name, share)| {
            let quota = (registrations as f64 * share / total).round() as u64;
            let slots = quota.div_ceil(u64::from(CAPACITY)).max(u64::from(DAYS));
            RegionFill {
                region: Region::parse(name).expect("a region"),
                state: State::new(Policy::default()),
                quota,
                submitted: 0,
                decisions: 0,
                locations: slots.div_ceil(u64::from(DAYS)) as u32,
            }
        })
        .collect();
    let quota: u64 = regions.iter().map(|r| r.quota).sum();
    let index: BTreeMap<Region, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.region.clone(), i))
        .collect();

    // Every slot's capacity, as an operator sets it, decided like any intake event.
    let mut capacities = Vec::new();
    for r in &regions {
        for n in 0..u64::from(r.locations) * u64::from(DAYS) {
            capacities.push(Event::CapacitySet(CapacitySet {
                slot: slot(&r.region, n, r.locations),
                capacity: CAPACITY,
            }));
        }
    }
    let (mut intake_messages, mut decision_messages) = (0u64, 0u64);
    for chunk in capacities.chunks(1000) {
        let messages = chunk
            .iter()
            .map(|e| {
                let Event::CapacitySet(c) = e else {
                    unreachable!()
                };
                Outgoing::event(
                    subjects::intake(&c.slot.region, IntakeKind::Capacity),
                    &Envelope::new("bench-scale", e.clone()),
                )
            })
            .collect::<Vec<_>>();
        let seqs = append(js, client, messages).await?;
        intake_messages += seqs.len() as u64;
        for (event, seq) in chunk.iter().zip(seqs) {
            let Event::CapacitySet(c) = event else {
                unreachable!()
            };
            let r = &mut regions[index[&c.slot.region]];
            let decided = r.state.handle(&Input {
                seq,
                event: event.clone(),
            });
            anyhow::ensure!(decided.is_empty(), "a capacity decided something");
        }
    }

    let largest = largest();
    let largest_quota = regions[index[&largest]].quota;
    // Decisions in the largest region: about two per registration (reserved, confirmed).
    let snapshot_at = (largest_quota * 2).saturating_sub(snapshot_every);
    let mut snapshot: Option<(Pending, f64)> = None;
    let mut largest_fence = 0;
    let sample_every = (quota / samples.max(1) as u64).max(1);
    let mut sample = Vec::new();
    let mut verdicts: Vec<(Region, RegistrationId)> = Vec::new();
    let mut next = 0u64;
    let mut region_cursor = 0usize;
    let mut reported = 0u64;
    while next < quota || !verdicts.is_empty() {
        // Intake: the previous batch's verdicts, then this batch's citizens.
        let mut messages = Vec::with_capacity(1000);
        let mut events: Vec<Option<(Region, Event)>> = Vec::with_capacity(1000);
        for (region, id) in verdicts.drain(..) {
            let event = Event::VerificationPassed(VerificationPassed {
                registration_id: id.clone(),
                reviewer: None,
            });
            messages.push(Outgoing::event(
                subjects::intake(&region, IntakeKind::Verification),
                &Envelope::new(id.to_string(), event.clone()),
            ));
            events.push(Some((region, event)));
        }
        let mut submitted = Vec::new();
        while submitted.len() < CITIZENS_PER_BATCH && next < quota {
            // Round robin over the regions still short of their quota, so that every
            // region's registrations are spread over the whole fill.
            let r = loop {
                let i = region_cursor % regions.len();
                region_cursor += 1;
                if regions[i].submitted < regions[i].quota {
                    break i;
                }
            };
            let rf = &mut regions[r];
            let n = next;
            next += 1;
            rf.submitted += 1;
            let id = RegistrationId::generate(&rf.region);
            let data = personal(n);
            let citizen_key = keys.citizen_key(&data.national_id);
            let (sealed, own_key) = keys.seal_own(&id, &data);
            let request_hash = keys.digest("request", &n.to_be_bytes());
            let event = Event::RegistrationSubmitted(RegistrationSubmitted {
                registration_id: id.clone(),
                slot: slot(&rf.region, rf.submitted - 1, rf.locations),
                citizen_key: citizen_key.clone(),
                request_hash: request_hash.clone(),
                language: "pl".into(),
                personal: sealed,
            });
            let claim = Claim {
                registration_id: id.clone(),
                request_hash,
                idempotency_key_hash: None,
            };
            messages.push(ClaimRecord::held(claim, None).message(&citizen_key));
            events.push(None);
            messages.push(streams::seals::message(&id, own_key));
            events.push(None);
            messages.push(Outgoing::event(
                subjects::intake(&rf.region, IntakeKind::Submitted),
                &Envelope::new(id.to_string(), event.clone()),
            ));
            events.push(Some((rf.region.clone(), event)));
            if n.is_multiple_of(sample_every) && sample.len() < samples {
                sample.push((citizen_key, id.clone()));
            }
            submitted.push((rf.region.clone(), id));
        }
        let seqs = append(js, client, messages).await?;
        intake_messages += seqs.len() as u64;

        // Decisions: the rule over this batch's inputs in the order they were accepted.
        let mut decisions = Vec::new();
        let mut decided_regions = Vec::new();
        for (event, seq) in events.into_iter().zip(&seqs) {
            let Some((region, event)) = event else {
                continue;
            };
            let r = &mut regions[index[&region]];
            for decision in r.state.handle(&Input { seq: *seq, event }) {
                decisions.push(Outgoing::event(
                    subjects::reservation_decisions(&region),
                    &Envelope::new("bench-scale", decision.clone()),
                ));
                decided_regions.push((region.clone(), decision));
            }
        }
        let mut decision_seqs = Vec::new();
        for chunk in decisions.chunks(1000) {
            decision_seqs.extend(append(js, client, chunk.to_vec()).await?);
        }
        decision_messages += decision_seqs.len() as u64;

        // The notification processor's records: two channels per decision, packed.
        let mut notes: BTreeMap<Region, Vec<Envelope>> = BTreeMap::new();
        for ((region, decision), seq) in decided_regions.iter().zip(&decision_seqs) {
            let (id, template) = match decision {
                Event::SlotReserved(d) => (&d.registration_id, "reserved"),
                Event::RegistrationConfirmed(d) => (&d.registration_id, "confirmed"),
                Event::RegistrationWaitlisted(d) => (&d.registration_id, "waitlisted"),
                Event::SlotRejected(d) => (&d.registration_id, "rejected"),
                _ => continue,
            };
            let r = &mut regions[index[region]];
            r.decisions += 1;
            if *region == largest {
                largest_fence = *seq;
            }
            for channel in ["email", "webhook"] {
                notes.entry(region.clone()).or_default().push(Envelope::new(
                    id.to_string(),
                    Event::NotificationSent(NotificationSent {
                        notification_id: format!("{id}.{seq}.{channel}"),
                        registration_id: id.clone(),
                        channel: channel.into(),
                        template: template.into(),
                        decision_seq: *seq,
                    }),
                ));
            }
        }
        let mut packs = Vec::new();
        for (region, records) in notes {
            for pack in records.chunks(PACK) {
                packs.push(packed(&region, pack));
            }
        }
        decision_messages += append(js, client, packs).await?.len() as u64;

        // The largest region's snapshot, as its snapshot thread would take it at that point.
        let big = &regions[index[&largest]];
        if snapshot.is_none() && big.decisions >= snapshot_at && largest_fence > 0 {
            let started = Instant::now();
            let pending = Pending::of(&largest, largest_fence, &big.state);
            snapshot = Some((pending, started.elapsed().as_secs_f64()));
        }

        // Verified a batch later, as the registry answers after the reservation.
        verdicts = submitted;
        if next / 100_000 > reported {
            reported = next / 100_000;
            eprintln!(
                "scale: {next} registrations written ({:.0}/s)",
                next as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let big = regions.swap_remove(index[&largest]);
    Ok(Filled {
        registrations: quota,
        intake_messages,
        decision_messages,
        seconds: started.elapsed().as_secs_f64(),
        sample,
        largest_state: big.state,
        largest_fence,
        snapshot,
    })
}

/// A pack of `records` on the region's notification subject, as [`streams::pack`] writes it.
fn packed(region: &Region, records: &[Envelope]) -> Outgoing {
    let subject = subjects::notification_decisions(region);
    if let [one] = records {
        return Outgoing::event(subject, one);
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(subjects::EVENT_TYPE_HEADER, "NotificationSent");
    headers.insert(
        streams::pack::PACK_HEADER,
        records.len().to_string().as_str(),
    );
    Outgoing {
        subject,
        headers,
        payload: serde_json::to_vec(records)
            .expect("envelopes serialize")
            .into(),
    }
}
