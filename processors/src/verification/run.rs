//! The consumer wiring of the verification processor: one durable consumer per region on
//! that region's reservation decisions (`verification_<region>`), shared by every replica
//! serving the region, so replicas split the work and a stopped one loses nothing.
//!
//! Per decision that holds a place: read the sealed submission from intake by its sequence,
//! open it, ask the registry (behind a circuit breaker and a rate limit), and append the
//! verdict to the region's intake (`reg.intake.<region>.verification`), packed with the
//! verdicts of every other verification in flight: one durable write for all of them
//! ([`streams::pack`]). The decision is acknowledged only after its verdict is stored; a
//! failed call is put back with a delay (a nak with delay: JetStream holds it, no worker
//! sleeps). The reservation processor turns the verdict into the registration's one
//! outcome, so a verdict written twice (a crash between the append and the ack, a pack
//! written again after a lost acknowledgement) still decides once.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use streams::consume::{self, Decoded, DurableSpec, Outcome};
use streams::crypto::Keys;
use streams::events::{Envelope, Event};
use streams::regions;
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

use super::breaker::{Breaker, BreakerConfig};
use super::decide::{self, Failure, Held, Limits, Next, Target};
use super::registry::{Person, RegistryClient};
use crate::metrics::{Metrics, VerificationMetrics, processor};

/// What a verification replica does and how hard it may push the registry.
#[derive(Debug, Clone)]
pub struct VerificationConfig {
    /// The region(s) this replica verifies for.
    pub regions: RegionFilter,
    /// The registry's base URL (`REG_REGISTRY_URL`).
    pub registry_url: String,
    /// How long one registry call may take.
    pub timeout: Duration,
    /// Registry calls in flight at once, per region served.
    pub concurrency: usize,
    /// Registry calls per second from this replica (0: unlimited).
    pub rate_per_second: u32,
    /// When to stop trying and ask an operator.
    pub limits: Limits,
    /// When to stop calling a registry that is down.
    pub breaker: BreakerConfig,
    /// Its own NATS identity (`REG_NATS_VERIFICATION_USER`), when it has one: a connection
    /// that may append verdicts and nothing else. `None`: the process's connection.
    pub nats: Option<streams::runtime::NatsOptions>,
}

impl VerificationConfig {
    /// Defaults for a registry at `registry_url`.
    pub fn new(regions: RegionFilter, registry_url: impl Into<String>) -> Self {
        VerificationConfig {
            regions,
            registry_url: registry_url.into(),
            timeout: Duration::from_secs(5),
            concurrency: 64,
            rate_per_second: 500,
            limits: Limits::default(),
            breaker: BreakerConfig::default(),
            nats: None,
        }
    }
}

/// Everything the regions' steps share: one breaker and one rate limit per replica, because
/// they guard one registry.
struct Verifier {
    js: jetstream::Context,
    /// Verdicts, packed: one durable write for every verification in flight.
    packer: streams::pack::Packer,
    registry: RegistryClient,
    keys: Keys,
    breaker: Mutex<Breaker>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Registry calls per verification round (decision sequence), while it is in flight.
    /// Lost on a restart, so a restarted replica may call a few more times: `max_age`
    /// still bounds the whole.
    attempts: Mutex<HashMap<u64, u32>>,
    limits: Limits,
    metrics: VerificationMetrics,
}

/// Runs the verification processor until `shutdown` fires.
pub async fn run(
    client: async_nats::Client,
    keys: Keys,
    config: VerificationConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let limiter = NonZeroU32::new(config.rate_per_second)
        .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
    let verifier = Arc::new(Verifier {
        js: js.clone(),
        packer: streams::pack::Packer::start(client, streams::pack::PackerOptions::default()),
        registry: RegistryClient::new(&config.registry_url, config.timeout)
            .context("Failed to build the registry client")?,
        keys,
        breaker: Mutex::new(Breaker::new(config.breaker)),
        limiter,
        attempts: Mutex::new(HashMap::new()),
        limits: config.limits,
        metrics: metrics.verification.clone(),
    });
    tracing::info!(registry = %config.registry_url, "Verification processor starting.");
    regions::serve_each(&js, config.regions.clone(), &shutdown, |region| {
        let (verifier, health, shutdown, flow) = (
            verifier.clone(),
            metrics.health.clone(),
            shutdown.clone(),
            metrics.flow.clone(),
        );
        let spec = DurableSpec {
            name: subjects::verification_consumer(&region),
            stream: subjects::DECISIONS_STREAM,
            consumer: pull::Config {
                filter_subject: subjects::reservation_decisions(&region),
                // Longer than a registry call, so a slow answer is not delivered twice.
                ack_wait: config.timeout * 3,
                max_ack_pending: (config.concurrency * 4) as i64,
                ..Default::default()
            },
            concurrency: config.concurrency,
        };
        async move {
            let region = region.to_string();
            flow.start(processor::VERIFICATION, &region);
            let step = |record: Decoded| {
                let (verifier, flow, region) = (verifier.clone(), flow.clone(), region.clone());
                async move {
                    flow.read(processor::VERIFICATION, &region, &record);
                    let outcome = verifier.handle(record).await;
                    flow.handled(processor::VERIFICATION, &region, 1);
                    outcome
                }
            };
            consume::run_durable(&verifier.js.clone(), &spec, step, &health, &shutdown).await
        }
    })
    .await;
    Ok(())
}

impl Verifier {
    /// One decision: verify if it holds a place, else nothing.
    async fn handle(&self, record: Decoded) -> Outcome {
        let Some(target) = decide::target(&record.envelope.event) else {
            return Outcome::Done;
        };
        let round = record.seq;
        let outcome = self.verify(&target, round, &record.envelope).await;
        if outcome == Outcome::Done {
            self.attempts.lock().expect("lock").remove(&round);
        }
        outcome
    }

    async fn verify(&self, target: &Target, round: u64, decision: &Envelope) -> Outcome {
        let id = &target.registration_id;
        let found =
            crate::submission::read(&self.js, target.submission_seq, &target.registration_id).await;
        let (submitted_at, submission) = match found {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "The submission could not be read; trying again.");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        let age = (chrono::Utc::now() - decision.occurred_at)
            .to_std()
            .unwrap_or_default();
        let personal = match streams::seals::open(&self.js, &self.keys, id, &submission.personal)
            .await
        {
            Ok(personal) => personal,
            Err(err) if err.is_transient() => {
                tracing::warn!(registration_id = %id, error = %err, "The registration's key could not be read; trying again.");
                return Outcome::Retry(Duration::from_secs(1));
            }
            // Erased on the citizen's request, which also ended the registration: there is
            // nobody left to verify.
            Err(streams::seals::Unopenable::Erased) => {
                tracing::info!(registration_id = %id, "The personal data was erased; nothing to verify.");
                return Outcome::Done;
            }
            Err(_) => {
                // Another replica may hold the right key; give it (and an operator) time.
                tracing::error!(registration_id = %id, key_id = %submission.personal.key_id, "Personal data cannot be opened with this replica's key.");
                let failure = Failure {
                    retryable: true,
                    at_least: Some(Duration::from_secs(30)),
                    error: streams::outside::OutsideError::new(
                        "key_unavailable",
                        "the personal data could not be opened with this replica's key",
                    ),
                };
                return self.after_failure(target, 0, age, &failure).await;
            }
        };
        if let Some((held, wait)) = self.defer() {
            let attempts = self.attempts(round);
            // Held back, not failed: a put-back is not counted as a retry.
            return match decide::while_held(id, attempts, age, held, wait, &self.limits) {
                Next::Retry(wait) => Outcome::Retry(wait),
                review => self.next(target, attempts, review).await,
            };
        }
        let attempts = {
            let mut attempts = self.attempts.lock().expect("lock");
            let n = attempts.entry(round).or_default();
            *n += 1;
            *n
        };
        let request_id = uuid::Uuid::now_v7().to_string();
        let person = Person {
            national_id: &personal.national_id,
            full_name: &personal.full_name,
            birth_date: personal.birth_date,
        };
        let timer = self.metrics.registry_seconds.start_timer();
        let answer = self.registry.verify(&person, &request_id).await;
        timer.observe_duration();
        let now = Instant::now();
        match answer {
            Ok(verdict) => {
                self.breaker.lock().expect("lock").succeeded();
                self.show_breaker(now);
                let event = decide::verdict_event(id, verdict);
                self.metrics
                    .calls
                    .with_label_values(&[verdict_label(&event)])
                    .inc();
                match self.append(target, event).await {
                    Ok(()) => {
                        let since = (chrono::Utc::now() - submitted_at)
                            .to_std()
                            .unwrap_or_default();
                        self.metrics
                            .submission_to_verdict_seconds
                            .observe(since.as_secs_f64());
                        Outcome::Done
                    }
                    Err(err) => {
                        tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "A verdict could not be stored; trying again.");
                        Outcome::Retry(Duration::from_secs(1))
                    }
                }
            }
            Err(err) => {
                self.metrics.calls.with_label_values(&[err.label()]).inc();
                if err.counts_against_breaker() {
                    self.breaker.lock().expect("lock").failed(now);
                    self.show_breaker(now);
                }
                tracing::debug!(registration_id = %id, attempts, error = %err, "A registry call failed.");
                let failure = Failure::of(&err);
                self.after_failure(target, attempts, age, &failure).await
            }
        }
    }

    /// Whether to put the verification back without calling: the breaker is open, or the
    /// rate limit is spent. The delay carries jitter so the retries spread out.
    fn defer(&self) -> Option<(Held, Duration)> {
        let now = Instant::now();
        let refused = self.breaker.lock().expect("lock").allow(now);
        self.show_breaker(now);
        if let Err(wait) = refused {
            self.metrics.deferred.with_label_values(&["breaker"]).inc();
            return Some((
                Held::Breaker,
                wait + jitter(wait.max(Duration::from_millis(500))),
            ));
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check()
        {
            self.metrics
                .deferred
                .with_label_values(&["rate_limit"])
                .inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Some((Held::RateLimit, wait + jitter(Duration::from_millis(200))));
        }
        None
    }

    async fn after_failure(
        &self,
        target: &Target,
        attempts: u32,
        age: Duration,
        failure: &Failure,
    ) -> Outcome {
        let next = decide::after_failure(
            &target.registration_id,
            attempts,
            age,
            failure,
            &self.limits,
            rand::random::<f64>(),
        );
        self.next(target, attempts, next).await
    }

    /// Carries out what the rules decided after a failed or held-back call.
    async fn next(&self, target: &Target, attempts: u32, next: Next) -> Outcome {
        let id = &target.registration_id;
        match next {
            Next::Retry(delay) => {
                self.metrics.retries.inc();
                Outcome::Retry(delay)
            }
            Next::Review(inconclusive) => {
                tracing::info!(registration_id = %id, attempts, last_error = %inconclusive.last_error, "The registry gave no answer in time; the registration goes to manual review.");
                match self
                    .append(target, Event::VerificationInconclusive(inconclusive))
                    .await
                {
                    Ok(()) => {
                        self.metrics.manual_reviews.inc();
                        Outcome::Done
                    }
                    Err(err) => {
                        tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "A manual review could not be recorded; trying again.");
                        Outcome::Retry(Duration::from_secs(1))
                    }
                }
            }
        }
    }

    /// Registry calls made so far for one verification round.
    fn attempts(&self, round: u64) -> u32 {
        let attempts = self.attempts.lock().expect("lock");
        attempts.get(&round).copied().unwrap_or_default()
    }

    /// Appends a verdict, packed with the others in flight. A verdict stored twice decides
    /// once (the reservation processor acts only on a registration awaiting one).
    async fn append(&self, target: &Target, event: Event) -> anyhow::Result<()> {
        let id = &target.registration_id;
        self.packer
            .append(
                subjects::intake(&target.slot.region, IntakeKind::Verification),
                &Envelope::new(id.to_string(), event),
            )
            .await
            .context("Failed to store a verdict")?;
        Ok(())
    }

    fn show_breaker(&self, now: Instant) {
        let state = self.breaker.lock().expect("lock").state(now);
        self.metrics.breaker.set(state.gauge());
    }
}

fn verdict_label(event: &Event) -> &'static str {
    match event {
        Event::VerificationPassed(_) => "match",
        Event::VerificationFailed(f) => f.reason.as_str(),
        _ => "other",
    }
}

/// Up to `max` of random delay.
fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}
