//! The citizens of a chaos run: each submits once through the HTTP edge (retrying with the
//! same `Idempotency-Key` through 503s and lost answers, as the contract asks), some try a
//! second registration, and some cancel once they see `reserved`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::NaiveDate;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use streams::model::SlotKey;
use tokio::sync::Semaphore;

use super::Options;
use super::services::{ADMIN_TOKEN, System};

/// The deterministic random source of a run.
pub type Rng = rand::rngs::StdRng;

/// A random source from `seed`.
pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// How long a citizen keeps retrying one request before giving up (its outcome then stays
/// unknown to it; the log still has to account for it).
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// An HTTP client that keeps up to `connections` connections per host. ntex's connector keeps
/// at most 8 by default, which would make the load generator, not the system, the limit. (A
/// limit of 0, "unlimited", left requests waiting for a connection forever here.)
pub async fn http_client(connections: usize) -> anyhow::Result<ntex::client::Client> {
    ntex::client::Client::builder()
        .connector::<()>(ntex::client::Connector::new().limit(connections))
        .build(ntex::SharedCfg::default())
        .await
        .map_err(|e| anyhow::anyhow!("an HTTP client: {e:?}"))
}

/// A registration the edge accepted with `202`.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its id.
    pub id: String,
    /// Its token.
    pub token: String,
    /// The citizen's number in the run.
    pub citizen: u32,
}

/// What the citizens saw.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Every `202` for a submission.
    pub accepted: Vec<Accepted>,
    /// Second registrations refused with `409 already_registered`.
    pub already_registered: u64,
    /// Cancellations the edge accepted.
    pub cancelled: Vec<String>,
    /// Requests abandoned after [`GIVE_UP_AFTER`] of retries.
    pub gave_up: u64,
    /// Requests that failed with a status outside the contract's expectations here.
    pub unexpected: Vec<String>,
}

/// One `503` the edge answered: when the request left and when the answer came, and its
/// error code (`unavailable`, `outcome_unknown`, `overloaded`). The failover run sets these
/// beside the times the log had no leader.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// When the request was sent.
    pub sent: Instant,
    /// When the `503` arrived.
    pub answered: Instant,
    /// The error's `code`.
    pub code: String,
}

/// Counters shown while the load runs.
#[derive(Debug, Default)]
struct Counters {
    dispatched: Cell<u64>,
    sent: Cell<u64>,
    accepted: Cell<u64>,
    unavailable: Cell<u64>,
    retried: Cell<u64>,
    /// Every `503` of a write, in the order they arrived.
    refusals: RefCell<Vec<Refusal>>,
    /// Writes that got no answer at all (connection refused or reset, or no answer in time).
    unanswered: Cell<u64>,
}

/// The HTTP side of the load: the edge and the read API.
#[derive(Clone)]
pub struct Client {
    http: ntex::client::Client,
    ingest: Rc<str>,
    read: Rc<str>,
    counters: Rc<Counters>,
}

/// One HTTP answer: status and JSON body (`Null` when empty or not JSON).
type Answer = (u16, Value);

impl Client {
    /// A client of `system`'s edge and read API, with room for `concurrency` requests at
    /// once.
    pub async fn new(system: &System, concurrency: usize) -> Self {
        let http = http_client(concurrency + 16).await.expect("an HTTP client");
        Client {
            http,
            ingest: system.ingest_url().into(),
            read: system.read_url().into(),
            counters: Rc::default(),
        }
    }

    /// Citizens started so far.
    pub fn dispatched(&self) -> u64 {
        self.counters.dispatched.get()
    }

    /// Every `503` the edge answered to a write so far.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.counters.refusals.borrow().clone()
    }

    /// Writes that got no answer at all so far.
    pub fn unanswered(&self) -> u64 {
        self.counters.unanswered.get()
    }

    /// One line of progress.
    pub fn progress(&self) -> String {
        let c = &self.counters;
        format!(
            "{} requests, {} accepted, {} answered 503 or failed, {} retries",
            c.sent.get(),
            c.accepted.get(),
            c.unavailable.get(),
            c.retried.get()
        )
    }

    async fn send(
        &self,
        request: ntex::client::ClientRequest,
        body: Option<&Value>,
    ) -> Option<Answer> {
        self.counters.sent.set(self.counters.sent.get() + 1);
        let request = request.timeout(Duration::from_secs(10));
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let response = sent.ok()?;
        let bytes = response.body().limit(1 << 24).await.ok()?;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some((response.status().as_u16(), json))
    }

    /// Sends until the answer is final: retries, with backoff, on a lost answer, `503`,
    /// `429` and `409 request_in_flight` (the previous try may still be in flight).
    async fn until_final(
        &self,
        make: impl Fn() -> ntex::client::ClientRequest,
        body: Option<&Value>,
    ) -> Option<Answer> {
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut backoff = Duration::from_millis(50);
        loop {
            let sent = Instant::now();
            let answer = self.send(make(), body).await;
            match &answer {
                Some((503, body)) => self.counters.refusals.borrow_mut().push(Refusal {
                    sent,
                    answered: Instant::now(),
                    code: body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                }),
                None => self
                    .counters
                    .unanswered
                    .set(self.counters.unanswered.get() + 1),
                Some(_) => {}
            }
            let retry = match &answer {
                None => true,
                Some((503 | 429, _)) => true,
                Some((409, body)) => body["error"]["code"] == "request_in_flight",
                Some(_) => false,
            };
            if !retry {
                return answer;
            }
            self.counters
                .unavailable
                .set(self.counters.unavailable.get() + 1);
            if Instant::now() >= deadline {
                return None;
            }
            self.counters.retried.set(self.counters.retried.get() + 1);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Sets a slot's capacity through the operators' endpoint.
    pub async fn set_capacity(&self, slot: &SlotKey, capacity: u32) -> anyhow::Result<()> {
        let body = json!({
            "region": slot.region, "location": slot.location, "date": slot.date,
            "capacity": capacity,
        });
        let url = format!("{}/v1/admin/capacity", self.ingest);
        let answer = self
            .until_final(|| self.http.put(&url).bearer_auth(ADMIN_TOKEN), Some(&body))
            .await;
        match answer {
            Some((200, _)) => Ok(()),
            other => anyhow::bail!("setting the capacity of {slot} answered {other:?}"),
        }
    }

    /// A registration's status through the read API: (HTTP status, `status` field).
    pub async fn status(&self, id: &str, token: &str) -> Option<(u16, String)> {
        let url = format!("{}/v1/registrations/{id}", self.read);
        let (code, body) = self
            .send(self.http.get(&url).bearer_auth(token), None)
            .await?;
        Some((code, body["status"].as_str().unwrap_or_default().to_owned()))
    }

    /// Availability of one slot through the read API: `(capacity, remaining)`.
    pub async fn availability(&self, slot: &SlotKey) -> Option<(i64, i64)> {
        let url = format!(
            "{}/v1/availability?region={}&location={}&date={}",
            self.read, slot.region, slot.location, slot.date
        );
        let (code, body) = self.send(self.http.get(&url), None).await?;
        let row = body.as_array().filter(|_| code == 200)?.first()?.clone();
        Some((row["capacity"].as_i64()?, row["remaining"].as_i64()?))
    }

    async fn submit(&self, body: &Value, key: &str) -> Option<Answer> {
        let url = format!("{}/v1/registrations", self.ingest);
        self.until_final(
            || self.http.post(&url).header("Idempotency-Key", key),
            Some(body),
        )
        .await
    }

    async fn cancel(&self, id: &str, token: &str) -> Option<Answer> {
        let url = format!("{}/v1/registrations/{id}", self.ingest);
        self.until_final(|| self.http.delete(&url).bearer_auth(token), None)
            .await
    }
}

/// A citizen's registration body: a valid PESEL (unique per citizen number), 4 kB-ish of
/// questionnaire answers like a real record.
pub fn registration(citizen: u32, slot: &SlotKey) -> Value {
    let base = NaiveDate::from_ymd_opt(1940, 1, 1).expect("a valid date");
    let birth = base + chrono::Duration::days(i64::from(citizen % 20_000));
    let mut attributes = serde_json::Map::new();
    for question in 0..8 {
        let mut answer = format!("{citizen}:{question}:").repeat(400);
        answer.truncate(400);
        attributes.insert(format!("answer_{question}"), Value::String(answer));
    }
    json!({
        "national_id": streams::national_id::generate_pesel(birth, citizen / 20_000),
        "full_name": format!("Obywatel {citizen}"),
        "birth_date": birth,
        "email": format!("citizen{citizen}@example.pl"),
        "phone": format!("+48{:09}", 500_000_000 + citizen),
        "region": slot.region,
        "location": slot.location,
        "date": slot.date,
        "attributes": attributes,
        "language": "pl",
    })
}

/// What one citizen does.
#[derive(Debug, Clone)]
struct Plan {
    citizen: u32,
    slot: SlotKey,
    /// Tries to grab a second slot elsewhere (another key) once the first is answered.
    second_try: Option<SlotKey>,
    /// Cancels once the status says `reserved`.
    cancel: bool,
}

fn plans(options: &Options, pool: &[(SlotKey, u32, bool)]) -> Vec<Plan> {
    let mut rng = rng(options.seed);
    let hot: Vec<&SlotKey> = pool.iter().filter(|p| p.2).map(|p| &p.0).collect();
    let cold: Vec<&SlotKey> = pool.iter().filter(|p| !p.2).map(|p| &p.0).collect();
    (0..options.submissions)
        .map(|citizen| {
            // Seven in ten chase a hot location: the contention the design must survive.
            let slot = if cold.is_empty() || rng.random_bool(0.7) {
                hot[rng.random_range(0..hot.len())]
            } else {
                cold[rng.random_range(0..cold.len())]
            };
            let elsewhere = &pool[rng.random_range(0..pool.len())].0;
            Plan {
                citizen,
                slot: slot.clone(),
                second_try: rng.random_bool(0.05).then(|| elsewhere.clone()),
                cancel: rng.random_bool(0.05),
            }
        })
        .collect()
}

/// Runs every citizen, paced evenly over `options.duration`, at most `options.concurrency`
/// at once.
pub async fn run(
    client: Client,
    options: Options,
    pool: Vec<(SlotKey, u32, bool)>,
) -> anyhow::Result<Outcome> {
    let plans = plans(&options, &pool);
    let outcome = Rc::new(RefCell::new(Outcome::default()));
    let room = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let start = Instant::now();
    let n = plans.len().max(1) as f64;
    let mut tasks = Vec::with_capacity(plans.len());
    for (i, plan) in plans.into_iter().enumerate() {
        let due = options.duration.mul_f64(i as f64 / n);
        tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
        let permit = room.clone().acquire_owned().await.context("semaphore")?;
        client.counters.dispatched.set(i as u64 + 1);
        let client = client.clone();
        let outcome = outcome.clone();
        tasks.push(ntex::rt::spawn(async move {
            let accepted = citizen(&client, &plan, &outcome).await;
            // Waiting for a decision is not load: it must not hold back the next citizens.
            drop(permit);
            if let (true, Some(accepted)) = (plan.cancel, accepted) {
                cancel_once_reserved(&client, &accepted, &outcome).await;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|_| anyhow::anyhow!("a citizen task panicked"))?;
    }
    let outcome = outcome.borrow().clone();
    Ok(outcome)
}

/// Submits, and maybe tries a second slot; returns the first registration if accepted.
async fn citizen(client: &Client, plan: &Plan, outcome: &RefCell<Outcome>) -> Option<Accepted> {
    let body = registration(plan.citizen, &plan.slot);
    let first = client.submit(&body, &format!("c{}", plan.citizen)).await;
    let accepted = record(client, plan, first, outcome);
    if let Some(elsewhere) = &plan.second_try {
        let body = registration(plan.citizen, elsewhere);
        let second = client
            .submit(&body, &format!("c{}-again", plan.citizen))
            .await;
        match second {
            Some((409, body)) if body["error"]["code"] == "already_registered" => {
                outcome.borrow_mut().already_registered += 1;
            }
            // A rejected citizen's claim is released: registering again is their right.
            other => {
                record(client, plan, other, outcome);
            }
        }
    }
    accepted
}

fn record(
    client: &Client,
    plan: &Plan,
    answer: Option<Answer>,
    outcome: &RefCell<Outcome>,
) -> Option<Accepted> {
    match answer {
        Some((202, body)) => {
            let accepted = Accepted {
                id: body["registration_id"].as_str().unwrap_or_default().into(),
                token: body["token"].as_str().unwrap_or_default().into(),
                citizen: plan.citizen,
            };
            client
                .counters
                .accepted
                .set(client.counters.accepted.get() + 1);
            outcome.borrow_mut().accepted.push(accepted.clone());
            Some(accepted)
        }
        None => {
            outcome.borrow_mut().gave_up += 1;
            None
        }
        Some((code, body)) => {
            outcome
                .borrow_mut()
                .unexpected
                .push(format!("citizen {}: {code} {body}", plan.citizen));
            None
        }
    }
}

/// Waits (polling the read API, as the citizen's page would) for the decision, and cancels
/// if it is `reserved`.
async fn cancel_once_reserved(client: &Client, accepted: &Accepted, outcome: &RefCell<Outcome>) {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    while Instant::now() < deadline {
        match client.status(&accepted.id, &accepted.token).await {
            Some((200, status)) if status == "reserved" => {
                match client.cancel(&accepted.id, &accepted.token).await {
                    Some((202, _)) => outcome.borrow_mut().cancelled.push(accepted.id.clone()),
                    other => outcome
                        .borrow_mut()
                        .unexpected
                        .push(format!("cancel of {}: {other:?}", accepted.id)),
                }
                return;
            }
            Some((200, status)) if status != "received" => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
