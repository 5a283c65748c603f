//! The consumer wiring of the notification processor: one durable consumer per region on
//! that region's reservation decisions (`notification_<region>`), shared by the replicas
//! serving the region.
//!
//! Per decision a citizen is told of: read the sealed submission (the contact and the
//! language), render the message, and deliver it on every channel the contact allows, all at once, under
//! the notification's deterministic id, which the provider takes as its idempotency key. Each
//! delivery is recorded (`NotificationSent`, carrying the id); the records of every delivery
//! in flight share one durable write, packed into one message ([`streams::pack`]). A dead
//! letter (`NotificationFailed`) is appended alone, with its id as `Nats-Msg-Id`. The decision is
//! acknowledged once every channel is delivered or dead-lettered; a failed delivery is put
//! back with a back-off delay (a nak: JetStream holds it, no worker sleeps). A crash between
//! a delivery and the acknowledgement delivers again under the same id, which the provider
//! recognises: each (registration, decision, channel) reaches the citizen once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use streams::consume::{self, Decoded, DurableSpec, Outcome};
use streams::crypto::Keys;
use streams::events::{Envelope, Event, NotificationFailed, NotificationSent, PersonalDataErased};
use streams::model::RegistrationId;
use streams::regions;
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

use super::decide::{self, Channel, Notice};
use super::transport::{Mailer, SendError, Webhook};
use crate::metrics::{Metrics, NotificationMetrics, processor};

/// Where messages go and how hard to try.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// The region(s) this replica notifies for.
    pub regions: RegionFilter,
    /// The SMTP relay's host.
    pub smtp_host: String,
    /// The SMTP relay's port.
    pub smtp_port: u16,
    /// The sender address.
    pub mail_from: String,
    /// The text-message gateway's webhook URL.
    pub webhook_url: String,
    /// The webhook signing secret (`REG_WEBHOOK_SECRET`).
    pub webhook_secret: streams::settings::Secret,
    /// The citizen page the status link opens (the token goes in its fragment).
    pub page_url: String,
    /// Decisions handled at once, per region.
    pub concurrency: usize,
    /// Deliveries of one decision before its undelivered messages are dead-lettered.
    pub max_attempts: u32,
    /// One delivery's time limit.
    pub timeout: Duration,
    /// The first retry's delay (doubled per attempt, up to a minute).
    pub base_delay: Duration,
    /// Messages per second to the mail relay from this replica (0: unlimited).
    pub mail_rate: u32,
    /// Messages per second to the text-message gateway from this replica (0: unlimited).
    pub webhook_rate: u32,
    /// Its own NATS identity (`REG_NATS_NOTIFICATION_USER`), when it has one: a connection
    /// that may append notification records and nothing else. `None`: the process's
    /// connection.
    pub nats: Option<streams::runtime::NatsOptions>,
}

impl NotificationConfig {
    /// The development defaults: the receivers `deploy/up` starts.
    pub fn development(regions: RegionFilter) -> Self {
        NotificationConfig {
            regions,
            smtp_host: "127.0.0.1".into(),
            smtp_port: 2525,
            mail_from: "Rejestracja <no-reply@rejestracja.example>".into(),
            webhook_url: "http://127.0.0.1:8091/webhook".into(),
            webhook_secret: DEVELOPMENT_WEBHOOK_SECRET.into(),
            page_url: "http://127.0.0.1:8080/".into(),
            concurrency: 256,
            max_attempts: 10,
            timeout: Duration::from_secs(10),
            base_delay: Duration::from_millis(500),
            mail_rate: 200,
            webhook_rate: 200,
            nats: None,
        }
    }
}

fn limit(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    std::num::NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n)))
}

/// The webhook secret used when `REG_WEBHOOK_SECRET` is unset (development mode only).
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = "dev-webhook-secret";

/// One attempt to deliver a decision's messages.
struct Round {
    decision_seq: u64,
    decided_at: chrono::DateTime<chrono::Utc>,
    /// Deliveries of the record being handled (the decision, or the re-drive request).
    attempts: u64,
    /// Only this channel (a re-drive), or every channel the contact allows.
    only: Option<Channel>,
    /// The re-drive request's sequence, when this is one: its dead letter is recorded again
    /// (one per decision, plus one per failed re-drive).
    redrive_seq: Option<u64>,
}

impl Round {
    /// The dead letter's message id for the notification `nid`.
    fn dead_id(&self, nid: &str) -> String {
        match self.redrive_seq {
            None => format!("dead.{nid}"),
            Some(seq) => format!("dead.{nid}.{seq}"),
        }
    }
}

/// How one channel's delivery of a decision ended.
enum Delivery {
    /// Delivered and recorded.
    Recorded,
    /// Delivered, but its record could not be stored.
    Unrecorded,
    /// Not delivered: the channel, its notification id and why.
    Failed(Channel, String, SendError),
}

/// What a message needs of a registration's sealed submission.
struct Contact {
    email: Option<String>,
    phone: Option<String>,
    language: String,
}

/// How long a contact stays in memory after its submission was opened: long enough for the
/// decisions that follow one another within moments (reserved, then confirmed), short
/// enough that a citizen's address does not linger in the process.
const CONTACT_TTL: Duration = Duration::from_secs(120);

/// Most contacts kept (about 100 bytes each).
const CONTACTS: u64 = 100_000;

struct Notifier {
    js: jetstream::Context,
    /// The contacts of registrations told of a decision a moment ago: the confirmation that
    /// follows a reservation finds its contact here instead of reading and opening the 4 kB
    /// submission again.
    contacts: moka::future::Cache<RegistrationId, Arc<Contact>>,
    /// Delivery records, packed: one durable write for every delivery in flight.
    packer: streams::pack::Packer,
    keys: Keys,
    mailer: Mailer,
    webhook: Webhook,
    config: NotificationConfig,
    /// One rate limit per provider: a delivery waits for its turn (the wait is the limit
    /// doing its job, bounded by the consumer's concurrency), so a throttled provider is
    /// never pushed past what it takes.
    mail_limit: Option<DefaultDirectRateLimiter>,
    webhook_limit: Option<DefaultDirectRateLimiter>,
    /// Channels already delivered per decision (by sequence) while it is in flight here, so
    /// a retry for one channel does not resend the other.
    delivered: Mutex<HashMap<u64, HashSet<Channel>>>,
    metrics: NotificationMetrics,
}

/// Runs the notification processor until `shutdown` fires.
pub async fn run(
    client: async_nats::Client,
    keys: Keys,
    config: NotificationConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let notifier = Arc::new(Notifier {
        js: js.clone(),
        contacts: moka::future::Cache::builder()
            .max_capacity(CONTACTS)
            .time_to_live(CONTACT_TTL)
            .build(),
        packer: streams::pack::Packer::start(client, streams::pack::PackerOptions::default()),
        keys,
        mailer: Mailer::new(
            &config.smtp_host,
            config.smtp_port,
            &config.mail_from,
            config.timeout,
            // One session per decision handled at once in each of up to 16 regions (Poland's
            // voivodeships): a session the pool has no room for is closed after its message
            // and the next one opened afresh (a connection, a greeting and a QUIT more).
            u32::try_from(config.concurrency * 16).unwrap_or(u32::MAX),
        )
        .context("Failed to set up the mailer")?,
        webhook: Webhook::new(
            &config.webhook_url,
            config.webhook_secret.expose(),
            config.timeout,
        )
        .context("Failed to set up the webhook")?,
        config: config.clone(),
        mail_limit: limit(config.mail_rate),
        webhook_limit: limit(config.webhook_rate),
        delivered: Mutex::new(HashMap::new()),
        metrics: metrics.notification.clone(),
    });
    tracing::info!(smtp = %format!("{}:{}", config.smtp_host, config.smtp_port), webhook = %config.webhook_url, "Notification processor starting.");
    regions::serve_each(&js, config.regions.clone(), &shutdown, |region| {
        let (notifier, health, shutdown, flow) = (
            notifier.clone(),
            metrics.health.clone(),
            shutdown.clone(),
            metrics.flow.clone(),
        );
        let spec = DurableSpec {
            name: subjects::notification_consumer(&region),
            stream: subjects::DECISIONS_STREAM,
            consumer: pull::Config {
                filter_subject: subjects::reservation_decisions(&region),
                ack_wait: config.timeout * 4,
                max_ack_pending: (config.concurrency * 4) as i64,
                ..Default::default()
            },
            concurrency: config.concurrency,
        };
        let redrives = DurableSpec {
            name: subjects::redrive_consumer(&region),
            stream: subjects::INTAKE_STREAM,
            consumer: pull::Config {
                filter_subject: subjects::intake(&region, IntakeKind::Redrive),
                ack_wait: config.timeout * 4,
                ..Default::default()
            },
            concurrency: 4,
        };
        let erasures = DurableSpec {
            name: subjects::erasure_consumer(&region),
            stream: subjects::INTAKE_STREAM,
            consumer: pull::Config {
                filter_subject: subjects::intake(&region, IntakeKind::Erasure),
                ack_wait: config.timeout * 4,
                ..Default::default()
            },
            concurrency: 4,
        };
        async move {
            let js = notifier.js.clone();
            let region = region.to_string();
            flow.start(processor::NOTIFICATION, &region);
            let decisions = |record: Decoded| {
                let (notifier, flow, region) = (notifier.clone(), flow.clone(), region.clone());
                async move {
                    flow.read(processor::NOTIFICATION, &region, &record);
                    let outcome = notifier.handle(record).await;
                    flow.handled(processor::NOTIFICATION, &region, 1);
                    outcome
                }
            };
            let redrive = |record: Decoded| {
                let notifier = notifier.clone();
                async move { notifier.redrive(record).await }
            };
            let erase = |record: Decoded| {
                let notifier = notifier.clone();
                async move { notifier.erase(record).await }
            };
            tokio::join!(
                consume::run_durable(&js, &spec, decisions, &health, &shutdown),
                consume::run_durable(&js, &redrives, redrive, &health, &shutdown),
                consume::run_durable(&js, &erasures, erase, &health, &shutdown),
            );
        }
    })
    .await;
    Ok(())
}

impl Notifier {
    async fn handle(&self, record: Decoded) -> Outcome {
        let Some(notice) = decide::notice(&record.envelope.event) else {
            return Outcome::Done;
        };
        let round = Round {
            decision_seq: record.seq,
            decided_at: record.envelope.occurred_at,
            attempts: record.delivered,
            only: None,
            redrive_seq: None,
        };
        let outcome = self.notify(&notice, &round).await;
        if outcome == Outcome::Done {
            self.delivered.lock().expect("lock").remove(&record.seq);
        }
        outcome
    }

    /// An operator's erasure: the contact this replica holds is dropped, the registration's
    /// own key destroyed ([`streams::seals::erase`]), and the erasure recorded. Idempotent: a
    /// redelivery finds the key gone and records it again (readers key the record by
    /// registration).
    async fn erase(&self, record: Decoded) -> Outcome {
        let Event::ErasureRequested(request) = &record.envelope.event else {
            return Outcome::Done;
        };
        let id = &request.registration_id;
        self.contacts.invalidate(id).await;
        match streams::seals::erase(&self.js, id).await {
            Ok(erased) => {
                tracing::info!(registration_id = %id, keys = erased, "Personal data erased.");
            }
            Err(err) => {
                tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "A key could not be erased; trying again.");
                return Outcome::Retry(Duration::from_secs(1));
            }
        }
        // A message being composed from the contact read just before stays in flight; any
        // later one finds nothing to open.
        self.contacts.invalidate(id).await;
        let erased = Event::PersonalDataErased(PersonalDataErased {
            registration_id: id.clone(),
            intake_seq: record.seq,
        });
        let envelope = Envelope::new(record.envelope.correlation_id.clone(), erased);
        match self
            .packer
            .append(subjects::notification_decisions(&id.region()), &envelope)
            .await
        {
            Ok(_) => Outcome::Done,
            Err(err) => {
                tracing::warn!(registration_id = %id, error = %err, "An erasure was not recorded; trying again.");
                Outcome::Retry(Duration::from_secs(1))
            }
        }
    }

    /// An operator's re-drive: the decision's message on one channel, under its id.
    async fn redrive(&self, record: Decoded) -> Outcome {
        let Event::NotificationRedriveRequested(request) = &record.envelope.event else {
            return Outcome::Done;
        };
        let channel = match request.channel.as_str() {
            "email" => Channel::Email,
            "webhook" => Channel::Webhook,
            other => {
                tracing::warn!(
                    channel = other,
                    "A re-drive names no known channel; ignored."
                );
                return Outcome::Done;
            }
        };
        let decision = match self.decision(request.decision_seq).await {
            Ok(decision) => decision,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "A re-driven decision could not be read; trying again.");
                return Outcome::Retry(Duration::from_secs(1));
            }
        };
        let notice = decide::notice(&decision.event)
            .filter(|n| n.registration_id == request.registration_id);
        let Some(notice) = notice else {
            tracing::warn!(registration_id = %request.registration_id, decision_seq = request.decision_seq, "A re-drive names a decision with no message for that registration; ignored.");
            return Outcome::Done;
        };
        tracing::info!(registration_id = %notice.registration_id, operator = %request.reviewer.operator, channel = channel.as_str(), "Re-driving a dead letter.");
        let round = Round {
            decision_seq: request.decision_seq,
            decided_at: decision.occurred_at,
            attempts: record.delivered,
            only: Some(channel),
            redrive_seq: Some(record.seq),
        };
        let outcome = self.notify(&notice, &round).await;
        if outcome == Outcome::Done {
            // The decision itself was done long ago: forget what this re-drive noted.
            self.delivered
                .lock()
                .expect("lock")
                .remove(&request.decision_seq);
        }
        outcome
    }

    /// The decision at `seq` of the decisions stream.
    async fn decision(&self, seq: u64) -> anyhow::Result<Envelope> {
        let stream = self
            .js
            .get_stream_no_info(subjects::DECISIONS_STREAM)
            .await
            .context("Failed to open the decisions stream")?;
        let message = stream
            .direct_get(seq)
            .await
            .with_context(|| format!("Failed to read decision {seq}"))?;
        Envelope::decode_from(&message.subject, &message.payload)
            .context("Failed to decode a decision")
    }

    /// Where to tell the citizen of `notice`, and in which language: from the cache when a
    /// decision about the same registration was handled here a moment ago, else read from
    /// the sealed submission and opened (once, however many of its decisions ask at once).
    async fn contact(&self, notice: &Notice) -> Result<Arc<Contact>, Outcome> {
        let id = &notice.registration_id;
        let mut read = false;
        let found = self
            .contacts
            .try_get_with_by_ref(id, async {
                read = true;
                let (_, submission) =
                    crate::submission::read(&self.js, notice.submission_seq, id)
                        .await
                        .map_err(|err| {
                            tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "The submission could not be read; trying again.");
                            Outcome::Retry(Duration::from_secs(1))
                        })?;
                let personal =
                    match streams::seals::open(&self.js, &self.keys, id, &submission.personal)
                        .await
                    {
                        Ok(personal) => personal,
                        Err(err) if err.is_transient() => {
                            tracing::warn!(registration_id = %id, error = %err, "The registration's key could not be read; trying again.");
                            return Err(Outcome::Retry(Duration::from_secs(1)));
                        }
                        // Erased on the citizen's request: there is nobody to write to.
                        Err(streams::seals::Unopenable::Erased) => {
                            tracing::info!(registration_id = %id, "The personal data was erased; no message is sent.");
                            return Err(Outcome::Done);
                        }
                        Err(_) => {
                            tracing::error!(registration_id = %id, key_id = %submission.personal.key_id, "Personal data cannot be opened with this replica's key.");
                            return Err(Outcome::Retry(Duration::from_secs(30)));
                        }
                    };
                Ok(Arc::new(Contact {
                    email: personal.email,
                    phone: personal.phone,
                    language: submission.language,
                }))
            })
            .await;
        let source = if read { "submission" } else { "cache" };
        self.metrics.contacts.with_label_values(&[source]).inc();
        found.map_err(|outcome| *outcome)
    }

    async fn notify(&self, notice: &Notice, round: &Round) -> Outcome {
        let id = &notice.registration_id;
        let contact = match self.contact(notice).await {
            Ok(contact) => contact,
            Err(outcome) => return outcome,
        };
        let link = decide::status_link(&self.config.page_url, id, &self.keys.token(id));
        let message = decide::render(notice, &contact.language, &link);
        // Both channels at once: a decision waits for the slower of its deliveries, not for
        // their sum, so the same concurrency tells twice as many citizens.
        let deliveries = decide::channels(contact.email.as_deref(), contact.phone.as_deref())
            .into_iter()
            .filter(|c| round.only.is_none_or(|only| only == *c))
            .filter(|c| round.only.is_some() || !self.already(round.decision_seq, *c))
            .map(|channel| self.deliver(notice, round, channel, &contact, &message));
        let mut failures = Vec::new();
        let mut unrecorded = false;
        for delivery in futures::future::join_all(deliveries).await {
            match delivery {
                Delivery::Recorded => {}
                Delivery::Unrecorded => unrecorded = true,
                Delivery::Failed(channel, nid, err) => failures.push((channel, nid, err)),
            }
        }
        if unrecorded {
            // Delivered, not yet recorded: the retry delivers under the same id, which the
            // provider recognises; the channels recorded are not sent again.
            return Outcome::Retry(Duration::from_secs(1));
        }
        self.after_failures(notice, round, failures).await
    }

    /// Delivers `message` on one channel under its notification id and records the delivery.
    async fn deliver(
        &self,
        notice: &Notice,
        round: &Round,
        channel: Channel,
        contact: &Contact,
        message: &decide::Message,
    ) -> Delivery {
        let id = &notice.registration_id;
        let nid = decide::notification_id(id, round.decision_seq, channel);
        let limiter = match channel {
            Channel::Email => &self.mail_limit,
            Channel::Webhook => &self.webhook_limit,
        };
        if let Some(limiter) = limiter {
            limiter.until_ready().await;
        }
        let sent = match channel {
            Channel::Email => {
                let to = contact.email.as_deref().unwrap_or_default();
                self.mailer.send(to, message, &nid, id.as_str()).await
            }
            Channel::Webhook => {
                let to = contact.phone.as_deref().unwrap_or_default();
                self.webhook.send(to, message, &nid, id.as_str()).await
            }
        };
        if let Err(err) = sent {
            return Delivery::Failed(channel, nid, err);
        }
        self.metrics
            .sent
            .with_label_values(&[channel.as_str()])
            .inc();
        let since = (chrono::Utc::now() - round.decided_at)
            .to_std()
            .unwrap_or_default();
        self.metrics
            .decision_to_delivery_seconds
            .observe(since.as_secs_f64());
        let sent = Event::NotificationSent(NotificationSent {
            notification_id: nid.clone(),
            registration_id: id.clone(),
            channel: channel.as_str().into(),
            template: notice.kind.template().into(),
            decision_seq: round.decision_seq,
        });
        if let Err(err) = self.record_sent(notice, sent).await {
            tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "A delivery could not be recorded; trying again.");
            return Delivery::Unrecorded;
        }
        self.done_with(round.decision_seq, channel);
        Delivery::Recorded
    }

    /// Notes that the decision at `seq` is done with on `channel` (delivered, or dead): while
    /// the decision is in flight here, a retry does not send on it again.
    fn done_with(&self, seq: u64, channel: Channel) {
        self.delivered
            .lock()
            .expect("lock")
            .entry(seq)
            .or_default()
            .insert(channel);
    }

    fn already(&self, seq: u64, channel: Channel) -> bool {
        self.delivered
            .lock()
            .expect("lock")
            .get(&seq)
            .is_some_and(|c| c.contains(&channel))
    }

    /// Failed channels: dead-letter the permanent ones (and all of them once the attempts are
    /// spent), retry the rest after a back-off.
    async fn after_failures(
        &self,
        notice: &Notice,
        round: &Round,
        failures: Vec<(Channel, String, SendError)>,
    ) -> Outcome {
        if failures.is_empty() {
            return Outcome::Done;
        }
        let attempts = u32::try_from(round.attempts).unwrap_or(u32::MAX);
        let spent = attempts >= self.config.max_attempts;
        let mut retry = None::<Duration>;
        for (channel, nid, err) in failures {
            if err.retryable && !spent {
                let delay = crate::retry::backoff(
                    attempts,
                    self.config.base_delay,
                    Duration::from_secs(60),
                    rand::random::<f64>(),
                )
                .max(err.at_least.unwrap_or_default());
                retry = Some(retry.map_or(delay, |d| d.max(delay)));
                continue;
            }
            tracing::warn!(registration_id = %notice.registration_id, channel = channel.as_str(), attempts, error = %err, "A message could not be delivered; it goes to the dead letters.");
            let failed = Event::NotificationFailed(NotificationFailed {
                notification_id: nid.clone(),
                registration_id: notice.registration_id.clone(),
                channel: channel.as_str().into(),
                template: notice.kind.template().into(),
                decision_seq: round.decision_seq,
                attempts,
                last_error: err.error.reason().into(),
                error_code: err.error.code().into(),
            });
            if let Err(err) = self.record(notice, &round.dead_id(&nid), failed).await {
                tracing::warn!(error = %format!("{err:#}"), "A dead letter could not be recorded; trying again.");
                return Outcome::Retry(Duration::from_secs(1));
            }
            self.metrics
                .dead_letters
                .with_label_values(&[channel.as_str()])
                .inc();
            self.done_with(round.decision_seq, channel);
        }
        match retry {
            Some(delay) => {
                self.metrics.retries.inc();
                Outcome::Retry(delay)
            }
            None => Outcome::Done,
        }
    }

    /// Appends a delivery's record to the region's notification subject, packed with the
    /// records of the other deliveries in flight (one durable write for all of them,
    /// [`streams::pack`]). A record stored twice (a retried write) changes nothing: every
    /// reader keys records by their notification id.
    async fn record_sent(&self, notice: &Notice, sent: Event) -> anyhow::Result<()> {
        self.packer
            .append(
                subjects::notification_decisions(&notice.slot.region),
                &Envelope::new(notice.registration_id.to_string(), sent),
            )
            .await
            .context("Failed to store a notification record")?;
        Ok(())
    }

    /// Appends a dead letter to the region's notification subject, stored once per
    /// `message_id`.
    async fn record(&self, notice: &Notice, message_id: &str, event: Event) -> anyhow::Result<()> {
        let outgoing = streams::appender::Outgoing::event(
            subjects::notification_decisions(&notice.slot.region),
            &Envelope::new(notice.registration_id.to_string(), event),
        );
        let mut headers = outgoing.headers;
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        self.js
            .publish_with_headers(outgoing.subject, headers, outgoing.payload)
            .await
            .context("Failed to send a notification record")?
            .await
            .context("Failed to store a notification record")?;
        Ok(())
    }
}
