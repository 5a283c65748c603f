//! The verdict of a chaos run, from the event log and the projection only.
//!
//! The log is checked two ways: directly (every submission has exactly one decision; replayed
//! in order, no slot is ever above its capacity and no citizen ever holds two slots), and
//! against a deliberately simple model of the rule run over the intake stream (whose
//! decisions must be the log's, registration by registration: that is first come, first
//! served). Then the projection must agree with the log: every slot's remaining places and
//! every accepted registration's status.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use streams::events::{Envelope, Event};
use streams::model::SlotKey;
use streams::replay::{Record, read_to_end};
use streams::subjects::{self, RegionFilter};

use super::load::{Client, Outcome};
use super::{Chaos, Options};

/// The counts a run prints, and the violations that fail it.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Counts, in print order.
    pub counts: Vec<(&'static str, u64)>,
    /// Every broken invariant, one line each.
    pub violations: Vec<String>,
}

impl Verdict {
    pub(crate) fn count(&mut self, name: &'static str, value: impl TryInto<u64>) {
        self.counts
            .push((name, value.try_into().unwrap_or(u64::MAX)));
    }

    pub(crate) fn violation(&mut self, line: String) {
        self.violations.push(line);
    }

    /// Prints the counts and the violations (the first 20 of each kind are enough).
    pub fn print(&self) {
        println!("\nchaos verdict");
        for (name, value) in &self.counts {
            println!("  {name:<48} {value:>9}");
        }
        if self.violations.is_empty() {
            println!("  violations                                               0");
        } else {
            println!("  violations {:>46}", self.violations.len());
            for line in self.violations.iter().take(40) {
                println!("    {line}");
            }
        }
    }
}

/// What the intake stream says happened, in acceptance order.
#[derive(Debug, Default)]
struct Intake {
    /// First submission of each registration: (intake seq, slot, citizen key).
    submitted: HashMap<String, (u64, SlotKey, String)>,
    /// Submissions appended more than once (retries whose first append did land).
    repeated: u64,
    /// Every event, in order, for the model.
    events: Vec<(u64, Event)>,
    /// Records no reader could decode: each one a violation (readers stop at them).
    undecodable: Vec<u64>,
}

/// One registration's decisions in the log.
#[derive(Debug, Default, Clone)]
struct Decided {
    /// `true` = reserved, `false` = rejected; one entry per first decision written.
    firsts: Vec<bool>,
    cancelled: bool,
}

async fn read_intake(js: &async_nats::jetstream::Context) -> anyhow::Result<Intake> {
    let mut intake = Intake::default();
    read_to_end(
        js,
        subjects::INTAKE_STREAM,
        subjects::intake_filter(&RegionFilter::All),
        1,
        |record: Record| {
            let Ok(Envelope { event, .. }) = record.envelope else {
                intake.undecodable.push(record.seq);
                return;
            };
            if let Event::RegistrationSubmitted(s) = &event {
                let id = s.registration_id.to_string();
                match intake.submitted.entry(id) {
                    Entry::Occupied(_) => intake.repeated += 1,
                    Entry::Vacant(first) => {
                        first.insert((record.seq, s.slot.clone(), s.citizen_key.clone()));
                    }
                }
            }
            intake.events.push((record.seq, event));
        },
    )
    .await
    .context("Failed to read the intake stream")?;
    Ok(intake)
}

/// The reservation decisions in order, and the sequences of those that could not be decoded.
async fn read_decisions(
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<(Vec<(u64, Event)>, Vec<u64>)> {
    let mut log = Vec::new();
    let mut undecodable = Vec::new();
    read_to_end(
        js,
        subjects::DECISIONS_STREAM,
        subjects::reservation_decisions_filter(&RegionFilter::All),
        1,
        |record: Record| match record.envelope {
            Ok(envelope) => log.push((record.seq, envelope.event)),
            Err(_) => undecodable.push(record.seq),
        },
    )
    .await
    .context("Failed to read the decisions stream")?;
    Ok((log, undecodable))
}

fn decided(log: &[(u64, Event)]) -> HashMap<String, Decided> {
    let mut map: HashMap<String, Decided> = HashMap::new();
    for (_, event) in log {
        match event {
            Event::SlotReserved(e) => map
                .entry(e.registration_id.to_string())
                .or_default()
                .firsts
                .push(true),
            Event::SlotRejected(e) => map
                .entry(e.registration_id.to_string())
                .or_default()
                .firsts
                .push(false),
            Event::RegistrationCancelled(e) => {
                map.entry(e.registration_id.to_string())
                    .or_default()
                    .cancelled = true
            }
            _ => {}
        }
    }
    map
}

/// The simple model: capacities and holders per slot, driven by the intake stream in order.
/// Returns each registration's first decision (`true` = reserved) and the registrations a
/// cancellation released.
fn model(intake: &Intake) -> (HashMap<String, bool>, HashSet<String>) {
    let mut capacity: HashMap<SlotKey, u32> = HashMap::new();
    let mut holders: HashMap<SlotKey, HashSet<String>> = HashMap::new();
    let mut first: HashMap<String, bool> = HashMap::new();
    let mut slot_of: HashMap<String, SlotKey> = HashMap::new();
    let mut released = HashSet::new();
    for (_, event) in &intake.events {
        match event {
            Event::CapacitySet(c) => {
                capacity.insert(c.slot.clone(), c.capacity);
            }
            Event::RegistrationSubmitted(s) => {
                let id = s.registration_id.to_string();
                if first.contains_key(&id) {
                    continue;
                }
                let held = holders.entry(s.slot.clone()).or_default();
                let free = capacity
                    .get(&s.slot)
                    .is_some_and(|c| (held.len() as u32) < *c);
                if free {
                    held.insert(id.clone());
                }
                first.insert(id.clone(), free);
                slot_of.insert(id, s.slot.clone());
            }
            Event::CancellationRequested(c) => {
                let id = c.registration_id.to_string();
                if let Some(slot) = slot_of.get(&id)
                    && holders.entry(slot.clone()).or_default().remove(&id)
                {
                    released.insert(id);
                }
            }
            _ => {}
        }
    }
    (first, released)
}

/// Waits until the processors have decided everything the intake holds, then checks the
/// logs and the projection.
pub async fn settle_and_check(
    nats_url: &str,
    client: &Client,
    pool: &[(SlotKey, u32, bool)],
    outcome: &Outcome,
    chaos: &Chaos,
    options: &Options,
) -> anyhow::Result<Verdict> {
    let nats_client = async_nats::connect(streams::runtime::server_addrs(nats_url)?)
        .await
        .context("Failed to connect to nats-server for the checks")?;
    let js = async_nats::jetstream::new(nats_client);
    let intake = read_intake(&js).await?;
    let (expected_first, expected_released) = model(&intake);

    // Settle: every submission decided and every release written (or a deadline).
    let deadline = Instant::now() + Duration::from_secs(180);
    let (log, undecodable) = loop {
        let (log, undecodable) = read_decisions(&js).await?;
        let decided = decided(&log);
        let done = intake.submitted.keys().all(|id| decided.contains_key(id))
            && expected_released
                .iter()
                .all(|id| decided.get(id).is_some_and(|d| d.cancelled));
        if done || Instant::now() > deadline {
            break (log, undecodable);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut verdict = Verdict::default();
    verdict.count("seed", options.seed);
    verdict.count("reservation replica SIGKILLs", chaos.kills);
    verdict.count("  of which the active replica", chaos.killed_active);
    verdict.count("nats-server kills and restarts", chaos.nats_restarts);
    verdict.count("citizens", options.submissions);
    verdict.count("slots in the pool", options.slots);
    let distinct: HashSet<&str> = outcome.accepted.iter().map(|a| a.id.as_str()).collect();
    verdict.count("202 answers to submissions", outcome.accepted.len());
    verdict.count("  distinct registrations accepted", distinct.len());
    verdict.count(
        "409 second registration refused",
        outcome.already_registered,
    );
    verdict.count("requests given up after retries", outcome.gave_up);
    verdict.count("cancellations accepted", outcome.cancelled.len());
    verdict.count("registrations in the intake log", intake.submitted.len());
    verdict.count("  repeated appends of one registration", intake.repeated);
    if chaos.kills < options.kills || chaos.nats_restarts < options.nats_restarts {
        verdict.violation(format!(
            "the chaos fell short: {} kills and {} nats restarts were planned",
            options.kills, options.nats_restarts
        ));
    }
    for line in &outcome.unexpected {
        verdict.violation(format!("unexpected answer: {line}"));
    }
    for (stream, seqs) in [("intake", &intake.undecodable), ("decisions", &undecodable)] {
        if !seqs.is_empty() {
            verdict.violation(format!(
                "{} undecodable record(s) in the {stream} stream, first at {}",
                seqs.len(),
                seqs[0]
            ));
        }
    }

    check_log(&mut verdict, &intake, &log, outcome, pool);
    let decided = decided(&log);
    let mut mismatched = 0u64;
    for (id, want) in &expected_first {
        if let Some(got) = decided.get(id).and_then(|d| d.firsts.first())
            && got != want
        {
            mismatched += 1;
            if mismatched <= 10 {
                verdict.violation(format!(
                    "first come, first served: {id} was {} but the model, replaying intake in order, {}",
                    if *got { "reserved" } else { "rejected" },
                    if *want { "reserves it" } else { "rejects it" },
                ));
            }
        }
    }
    verdict.count("decisions differing from the in-order model", mismatched);
    if mismatched > 10 {
        verdict.violation(format!(
            "... {} more first-come-first-served differences",
            mismatched - 10
        ));
    }

    check_projection(&mut verdict, client, pool, &log, outcome).await;
    Ok(verdict)
}

/// The log on its own: one decision each, capacity and one-slot-per-citizen at every point.
fn check_log(
    verdict: &mut Verdict,
    intake: &Intake,
    log: &[(u64, Event)],
    outcome: &Outcome,
    pool: &[(SlotKey, u32, bool)],
) {
    let decided = decided(log);
    verdict.count("decision events in the log", log.len());
    let lost = outcome
        .accepted
        .iter()
        .filter(|a| !intake.submitted.contains_key(&a.id))
        .count();
    verdict.count("accepted (202) but not in the intake log", lost);
    if lost > 0 {
        verdict.violation(format!("{lost} accepted registrations are not in the log"));
    }
    let (mut none, mut twice) = (0u64, 0u64);
    // Decided in the region the one-region replicas share with the others, and elsewhere: a
    // replica resuming after another region's decisions would leave the latter undecided.
    let (mut first_region, mut elsewhere) = (0u64, 0u64);
    for (id, (_, slot, _)) in &intake.submitted {
        match decided.get(id).map_or(0, |d| d.firsts.len()) {
            0 => none += 1,
            1 if slot.region == super::region() => first_region += 1,
            1 => elsewhere += 1,
            _ => twice += 1,
        }
    }
    verdict.count(
        "registrations decided in the one-region replicas' region",
        first_region,
    );
    verdict.count("registrations decided in the other region", elsewhere);
    verdict.count("registrations without a decision", none);
    verdict.count("registrations with more than one decision", twice);
    if none > 0 {
        verdict.violation(format!("{none} registrations never got a decision"));
    }
    if twice > 0 {
        verdict.violation(format!("{twice} registrations got two decisions"));
    }

    // The capacity in effect for a decision is the last one the operators set before the
    // submission it answers was accepted.
    let mut capacities: HashMap<&SlotKey, Vec<(u64, u32)>> = HashMap::new();
    for (seq, event) in &intake.events {
        if let Event::CapacitySet(c) = event {
            capacities
                .entry(&c.slot)
                .or_default()
                .push((*seq, c.capacity));
        }
    }
    let capacity_at = |slot: &SlotKey, intake_seq: u64| -> u32 {
        let Some(history) = capacities.get(slot) else {
            return 0;
        };
        match history.partition_point(|(seq, _)| *seq < intake_seq) {
            0 => 0,
            n => history[n - 1].1,
        }
    };

    // Replay the decisions in log order.
    let mut active: HashMap<SlotKey, u32> = HashMap::new();
    let mut citizen_holds: HashMap<String, u32> = HashMap::new();
    let mut holder_citizen: HashMap<String, String> = HashMap::new();
    let mut last_seq: HashMap<SlotKey, u64> = HashMap::new();
    let (mut over, mut double_held, mut out_of_order) = (0u64, 0u64, 0u64);
    let (mut reserved, mut rejected, mut released) = (0u64, 0u64, 0u64);
    for (seq, event) in log {
        let first = match event {
            Event::SlotReserved(e) => Some((&e.slot, e.intake_seq)),
            Event::SlotRejected(e) => Some((&e.slot, e.intake_seq)),
            _ => None,
        };
        if let Some((slot, intake_seq)) = first {
            let last = last_seq.entry(slot.clone()).or_default();
            if intake_seq < *last {
                out_of_order += 1;
            }
            *last = intake_seq;
        }
        match event {
            Event::SlotReserved(e) => {
                reserved += 1;
                let a = active.entry(e.slot.clone()).or_default();
                *a += 1;
                if *a > capacity_at(&e.slot, e.intake_seq) {
                    over += 1;
                    verdict.violation(format!(
                        "overbooked: {} holds {a} at decision seq {seq}",
                        e.slot
                    ));
                }
                let held = citizen_holds.entry(e.citizen_key.clone()).or_default();
                *held += 1;
                if *held > 1 {
                    double_held += 1;
                    verdict.violation(format!(
                        "citizen {} holds two slots at decision seq {seq}",
                        e.citizen_key
                    ));
                }
                holder_citizen.insert(e.registration_id.to_string(), e.citizen_key.clone());
            }
            Event::SlotRejected(_) => rejected += 1,
            Event::SlotReleased(e) => {
                released += 1;
                *active.entry(e.slot.clone()).or_default() -= 1;
                if let Some(citizen) = holder_citizen.get(&e.registration_id.to_string()) {
                    *citizen_holds.entry(citizen.clone()).or_default() -= 1;
                }
            }
            _ => {}
        }
    }
    verdict.count("reserved", reserved);
    verdict.count("rejected", rejected);
    verdict.count("released", released);
    verdict.count("times a slot went over capacity", over);
    verdict.count("times a citizen held two slots", double_held);
    verdict.count("decisions out of acceptance order in a slot", out_of_order);
    if out_of_order > 0 {
        verdict.violation(format!(
            "{out_of_order} decisions were written out of acceptance order"
        ));
    }
    let full: BTreeMap<String, (u32, u32)> = pool
        .iter()
        .map(|(s, c, _)| (s.to_string(), (active.get(s).copied().unwrap_or(0), *c)))
        .collect();
    let filled = full.values().filter(|(a, c)| a >= c).count();
    verdict.count("slots filled to capacity at the end", filled);
}

/// The projection against the log: remaining places per slot, status per registration.
async fn check_projection(
    verdict: &mut Verdict,
    client: &Client,
    pool: &[(SlotKey, u32, bool)],
    log: &[(u64, Event)],
    outcome: &Outcome,
) {
    let mut active: HashMap<SlotKey, i64> = HashMap::new();
    let mut status: HashMap<String, &'static str> = HashMap::new();
    for (_, event) in log {
        match event {
            Event::SlotReserved(e) => {
                *active.entry(e.slot.clone()).or_default() += 1;
                status.insert(e.registration_id.to_string(), "reserved");
            }
            Event::SlotRejected(e) => {
                status.insert(e.registration_id.to_string(), "rejected");
            }
            Event::SlotReleased(e) => *active.entry(e.slot.clone()).or_default() -= 1,
            Event::RegistrationCancelled(e) => {
                status.insert(e.registration_id.to_string(), "cancelled");
            }
            _ => {}
        }
    }
    // The projection follows the log a little behind: give it a deadline to agree.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut slot_mismatch = Vec::new();
    loop {
        slot_mismatch.clear();
        for (slot, capacity, _) in pool {
            // A capacity lowered below the reservations shows no room, never a negative.
            let want = (i64::from(*capacity) - active.get(slot).copied().unwrap_or(0)).max(0);
            match client.availability(slot).await {
                Some((_, remaining)) if remaining == want => {}
                got => slot_mismatch.push(format!(
                    "{slot}: projection says {got:?}, the log says {want} remaining"
                )),
            }
        }
        if slot_mismatch.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    verdict.count(
        "slots whose projection disagrees with the log",
        slot_mismatch.len(),
    );
    for line in slot_mismatch {
        verdict.violation(line);
    }

    let mut wrong = Vec::new();
    for accepted in &outcome.accepted {
        let want = status.get(&accepted.id).copied().unwrap_or("received");
        let mut got = None;
        while Instant::now() < deadline {
            got = client.status(&accepted.id, &accepted.token).await;
            if matches!(&got, Some((200, s)) if s == want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !matches!(&got, Some((200, s)) if s == want) {
            wrong.push(format!(
                "status of {}: projection says {got:?}, the log says {want}",
                accepted.id
            ));
        }
    }
    verdict.count("statuses whose projection disagrees", wrong.len());
    for line in wrong.into_iter().take(10) {
        verdict.violation(line);
    }
}

/// Every message the decisions log calls for reached the receivers exactly once: the stored
/// notification ids are exactly the ones the log implies (one per decision a citizen is told
/// of and channel; every chaos citizen gives an e-mail address and a phone), however many
/// deliveries the failing receivers and the killed replicas caused.
pub async fn check_notifications(
    verdict: &mut Verdict,
    nats: &testkit::NatsServer,
    receivers: &receivers::Receivers,
) -> anyhow::Result<()> {
    use processors::notification::decide::{Channel, notice, notification_id};
    let client = async_nats::connect(nats.url())
        .await
        .context("Failed to connect to nats-server for the checks")?;
    let js = async_nats::jetstream::new(client);
    let (log, _) = read_decisions(&js).await?;
    let expected = |channel| -> HashSet<String> {
        log.iter()
            .filter_map(|(seq, event)| {
                notice(event).map(|n| notification_id(&n.registration_id, *seq, channel))
            })
            .collect()
    };
    let (mail, texts) = (expected(Channel::Email), expected(Channel::Webhook));
    let stored = |t: &receivers::TransportCounts| -> HashSet<String> {
        t.by_notification_id
            .iter()
            .filter(|(_, c)| c.stored)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let counts = loop {
        let counts = receivers.counts();
        let done =
            mail.is_subset(&stored(&counts.smtp)) && texts.is_subset(&stored(&counts.webhook));
        if done || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut missing = 0;
    let mut unexpected = 0;
    for (want, transport) in [(&mail, &counts.smtp), (&texts, &counts.webhook)] {
        let got = stored(transport);
        missing += want.difference(&got).count();
        unexpected += got.difference(want).count();
    }
    verdict.count("messages the decisions call for", mail.len() + texts.len());
    verdict.count(
        "  e-mails stored at the mail receiver",
        stored(&counts.smtp).len(),
    );
    verdict.count(
        "  texts stored at the webhook receiver",
        stored(&counts.webhook).len(),
    );
    verdict.count(
        "  deliveries refused by the receivers' failures",
        counts.smtp.failed_by_knob + counts.webhook.failed_by_knob,
    );
    verdict.count(
        "  repeated deliveries the receivers recognised",
        counts.smtp.duplicates + counts.webhook.duplicates,
    );
    verdict.count("  messages missing", missing);
    verdict.count("  messages nothing called for", unexpected);
    if missing > 0 {
        verdict.violation(format!("{missing} messages never reached the citizen"));
    }
    if unexpected > 0 {
        verdict.violation(format!(
            "{unexpected} messages were sent that no decision called for"
        ));
    }
    Ok(())
}
