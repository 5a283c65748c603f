//! The whole system in one test process: a real nats-server, the ingest edge, a reservation
//! processor and the projections (in-memory SurrealDB), each on its own port 0 listener.

use std::net::TcpListener;
use std::time::Duration;

use chrono::NaiveDate;
use ntex::client::Client;
use serde_json::{Value, json};
use streams::subjects::RegionFilter;
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "test-admin-token";

/// A window event of a version this code does not know.
pub const UNDECODABLE_WINDOW: &[u8] = br#"{"event_id":"0190f3c2-a1b2-7c3e-8d4f-000000000000","occurred_at":"2027-02-01T08:00:00Z","correlation_id":"x","version":9,"type":"WindowSet","data":{"region":"mazowieckie","opens_at":"2027-02-01T08:00:00Z","closes_at":"2027-02-02T08:00:00Z","shape":"new"}}"#;

pub struct Pipeline {
    pub nats: NatsServer,
    pub ingest: String,
    pub read: String,
    /// The first processor replica's health and metrics endpoint.
    pub processors: String,
    pub http: Client,
    /// The registry simulator, when the test verifies registrations.
    pub registry: Option<registry_sim::Registry>,
    /// The mail and webhook receivers (and their directory), when the test notifies.
    pub receivers: Option<(receivers::Receivers, tempfile::TempDir)>,
    shutdown: CancellationToken,
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// Options that differ between tests (limits are off unless a test turns them on).
#[derive(Default)]
pub struct Options {
    pub rate_per_address: u32,
    pub rate_per_citizen: u32,
    pub max_open_submissions: usize,
    /// How long the edge waits for a durable write (2 s unless set).
    pub append_timeout: Option<Duration>,
    /// How many may wait for a full slot (as many as its capacity unless set).
    pub waitlist_per_slot: Option<u32>,
    /// Verify registrations against a registry simulator started with these knobs (no
    /// verification unless set: registrations stay `reserved`).
    pub registry: Option<registry_sim::Knobs>,
    /// Registry calls before manual review (8 unless set).
    pub verify_max_attempts: Option<u32>,
    /// Before any service starts, a window record this code cannot decode (as a newer
    /// writer would leave) is in the log; the edge is then not waited for to be ready.
    pub undecodable_window: bool,
    /// Processor replicas (reservation, verification, claims releaser) beside the first.
    pub processor_replicas: usize,
    /// Notify citizens through local receivers started with these knobs (no notifications
    /// unless set).
    pub receivers: Option<receivers::Knobs>,
    /// Delivery attempts before a message is dead-lettered (10 unless set).
    pub notify_max_attempts: Option<u32>,
    /// Decisions between two snapshots of a region's state (25 unless set, so every test
    /// writes and reads snapshots; 0: none).
    pub snapshot_every: Option<u64>,
}

impl Pipeline {
    pub async fn start() -> Pipeline {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Pipeline {
        testkit::init_test_log();
        let nats = NatsServer::start();
        let shutdown = CancellationToken::new();
        if options.undecodable_window {
            let client = async_nats::connect(nats.url()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            streams::config::ensure_streams(&js, streams::config::Replication(1))
                .await
                .unwrap();
            js.publish(
                streams::subjects::intake(
                    &streams::model::Region::parse("mazowieckie").unwrap(),
                    streams::subjects::IntakeKind::Window,
                ),
                UNDECODABLE_WINDOW.into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let (ingest_listener, ingest) = listener();
        let (read_listener, read) = listener();
        let (processor_listener, processors) = listener();
        let receivers = match options.receivers {
            Some(knobs) => {
                let dir = tempfile::tempdir().unwrap();
                let receivers = receivers::Receivers::new(
                    dir.path().to_owned(),
                    knobs,
                    processors::notification::DEVELOPMENT_WEBHOOK_SECRET.into(),
                )
                .expect("valid knobs");
                let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let smtp_port = smtp.local_addr().unwrap().port();
                let webhook = format!("http://{}", http.local_addr().unwrap());
                tokio::spawn(receivers.clone().serve(smtp, http, shutdown.clone()));
                Some(((receivers, dir), smtp_port, webhook))
            }
            None => None,
        };
        let registry = match options.registry {
            Some(knobs) => {
                let registry = registry_sim::Registry::new(knobs).expect("valid knobs");
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let url = format!("http://{}", l.local_addr().unwrap());
                tokio::spawn(registry.clone().serve(l, shutdown.clone()));
                Some((registry, url))
            }
            None => None,
        };

        let mut settings = ingest::settings::Settings::development(&nats.url());
        settings.admin_token = ADMIN.into();
        settings.rate_per_address = options.rate_per_address;
        settings.rate_per_citizen = options.rate_per_citizen;
        settings.max_open_submissions = options.max_open_submissions;
        settings.append_timeout = options.append_timeout.unwrap_or(Duration::from_secs(2));
        settings.workers = 1;
        settings.status_base_url = read.clone();
        ntex::rt::spawn(ingest::service::run(
            settings,
            ingest_listener,
            shutdown.clone(),
        ));

        let nats_options = |name: &str| streams::runtime::NatsOptions {
            url: nats.url(),
            name: name.into(),
            credentials: None,
        };
        let processor = processors::service::Settings {
            nats: nats_options("reservation"),
            regions: RegionFilter::All,
            replication: streams::config::Replication(1),
            policy: processors::reservation::decide::Policy {
                waitlist_per_slot: options.waitlist_per_slot,
            },
            snapshot_every: options.snapshot_every.unwrap_or(25),
            verification: registry.as_ref().map(|(_, url)| {
                let mut config = processors::verification::VerificationConfig::new(
                    RegionFilter::All,
                    url.clone(),
                );
                config.timeout = Duration::from_secs(2);
                // Quick retries, so a test's outage is retried through in seconds.
                config.limits.base_delay = Duration::from_millis(100);
                config.limits.max_delay = Duration::from_secs(2);
                config.breaker.cooldown = Duration::from_millis(500);
                config.breaker.max_cooldown = Duration::from_secs(2);
                if let Some(attempts) = options.verify_max_attempts {
                    config.limits.max_attempts = attempts;
                }
                config
            }),
            notification: receivers.as_ref().map(|(_, smtp, webhook)| {
                let mut config =
                    processors::notification::NotificationConfig::development(RegionFilter::All);
                config.smtp_port = *smtp;
                config.webhook_url = format!("{webhook}/webhook");
                config.base_delay = Duration::from_millis(100);
                if let Some(attempts) = options.notify_max_attempts {
                    config.max_attempts = attempts;
                }
                config
            }),
            keys: streams::crypto::Keys::from_secret(streams::crypto::DEVELOPMENT_SECRET),
        };
        ntex::rt::spawn(processors::service::run(
            processor.clone(),
            processor_listener,
            shutdown.clone(),
        ));
        for _ in 1..options.processor_replicas {
            let (l, _) = listener();
            ntex::rt::spawn(processors::service::run(
                processor.clone(),
                l,
                shutdown.clone(),
            ));
        }
        ntex::rt::spawn(projections::service::run(
            projections::service::Settings {
                nats: nats_options("projections"),
                store: projections::store::StoreOptions {
                    endpoint: "mem://".into(),
                    credentials: None,
                },
                secret: streams::crypto::DEVELOPMENT_SECRET.into(),
                admin_token: ADMIN.into(),
                cache_ttl: Duration::from_millis(1000),
                linger: Duration::ZERO,
                workers: 1,
                replicas: 1,
            },
            read_listener,
            shutdown.clone(),
        ));
        let pipeline = Pipeline {
            nats,
            ingest,
            read,
            processors,
            http: Client::new().await,
            registry: registry.map(|(registry, _)| registry),
            receivers: receivers.map(|(r, _, _)| r),
            shutdown,
        };
        let edge = (!options.undecodable_window).then_some(&pipeline.ingest);
        for base in edge.into_iter().chain([&pipeline.read]) {
            let url = format!("{base}/readyz");
            testkit::eventually(
                &format!("{url} to answer 200"),
                Duration::from_secs(60),
                || async {
                    let r = pipeline.http.get(&url).send().await.ok()?;
                    (r.status() == 200).then_some(())
                },
            )
            .await;
        }
        pipeline
    }

    /// Sends a request and returns status, headers and JSON body (Null when empty).
    pub async fn send(
        &self,
        request: ntex::client::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> (u16, ntex::http::HeaderMap, Value) {
        let response = match body {
            Some(body) => request.send_body(body).await,
            None => request.send().await,
        }
        .expect("the service answers");
        let bytes = response.body().limit(1 << 24).await.expect("a body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (response.status().as_u16(), response.headers().clone(), json)
    }

    pub async fn submit(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/registrations", self.ingest))
            .content_type("application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let (status, _, json) = self
            .send(request, Some(serde_json::to_vec(body).unwrap()))
            .await;
        (status, json)
    }

    pub async fn admin_put(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self
            .http
            .put(format!("{}{path}", self.ingest))
            .content_type("application/json")
            .bearer_auth(ADMIN);
        let (status, _, json) = self
            .send(request, Some(serde_json::to_vec(body).unwrap()))
            .await;
        (status, json)
    }

    pub async fn set_capacity(&self, location: &str, capacity: u32) {
        let (status, body) = self
            .admin_put(
                "/v1/admin/capacity",
                &json!({"region": "mazowieckie", "location": location, "date": "2027-03-01", "capacity": capacity}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn status(&self, id: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .get(format!("{}/v1/registrations/{id}", self.read));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _, json) = self.send(request, None).await;
        (status, json)
    }

    /// Waits until the registration's status is `want`.
    pub async fn wait_status(&self, id: &str, token: &str, want: &str) -> Value {
        testkit::eventually(
            &format!("{id} to be {want}"),
            Duration::from_secs(30),
            || async {
                let (code, body) = self.status(id, Some(token)).await;
                (code == 200 && body["status"] == want).then_some(body)
            },
        )
        .await
    }

    pub async fn remaining(&self, location: &str) -> Option<i64> {
        self.availability(location).await?["remaining"].as_i64()
    }

    /// The availability row of one location of the test region and date.
    pub async fn availability(&self, location: &str) -> Option<Value> {
        let (status, _, body) = self
            .send(
                self.http.get(format!(
                    "{}/v1/availability?region=mazowieckie&location={location}&date=2027-03-01",
                    self.read
                )),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array()?.first().cloned()
    }

    /// Waits until availability shows `remaining` places left and `waiting` in line.
    pub async fn wait_availability(&self, location: &str, remaining: i64, waiting: i64) {
        testkit::eventually(
            &format!("{location} to have {remaining} left and {waiting} waiting"),
            Duration::from_secs(30),
            || async {
                let row = self.availability(location).await?;
                (row["remaining"] == remaining && row["waiting"] == waiting).then_some(())
            },
        )
        .await
    }

    /// Waits until availability shows `want` remaining places.
    pub async fn wait_remaining(&self, location: &str, want: i64) {
        testkit::eventually(
            &format!("{location} to have {want} left"),
            Duration::from_secs(30),
            || async { (self.remaining(location).await == Some(want)).then_some(()) },
        )
        .await
    }

    /// A counter or gauge from the `/metrics` of the service at `base` (0 when absent).
    pub async fn metric(&self, base: &str, name: &str) -> u64 {
        e2e::chaos::services::scrape(&self.http, base)
            .await
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// How many messages the intake stream holds.
    pub async fn intake_messages(&self) -> u64 {
        let js = async_nats::jetstream::new(self.nats.connect().await);
        let mut stream = js
            .get_stream(streams::subjects::INTAKE_STREAM)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A valid registration body for citizen number `n` at `location`.
pub fn citizen(n: u32, location: &str) -> Value {
    let birth =
        NaiveDate::from_ymd_opt(1960, 1, 1).unwrap() + chrono::Duration::days(n as i64 % 15000);
    json!({
        "national_id": streams::national_id::generate_pesel(birth, n),
        "full_name": format!("Obywatel Numer {n}"),
        "birth_date": birth.to_string(),
        "email": format!("citizen{n}@example.pl"),
        "region": "mazowieckie",
        "location": location,
        "date": "2027-03-01",
        "attributes": {"priority_group": "60+", "chronic_conditions": false, "doses_taken": 0},
        "language": "pl",
    })
}
