//! The read API alone on real servers: a nats-server of its own (testkit), the projections
//! service (workers and read API, in-memory SurrealDB) on a port 0 listener, and the events
//! a test needs written straight into the log, as the edge and the processors write them.

use std::net::TcpListener;
use std::time::Duration;

use async_nats::jetstream;
use chrono::NaiveDate;
use ntex::client::Client;
use projections::settings::Settings;
use serde_json::Value;
use streams::crypto::{DEVELOPMENT_SECRET, Keys};
use streams::events::{CapacitySet, Envelope, Event, SlotReserved};
use streams::model::{Location, Region, RegistrationId, SlotKey};
use streams::subjects::{self, IntakeKind};
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// The site directory the SMART publication lists: one site, the others stay unpublished.
const SITES: &str = r#"[{"region": "mazowieckie", "location": "smart",
    "name": "Punkt szczepień SMART", "phone": "+48 22 000 00 01",
    "address": {"line": ["ul. Testowa 1"], "city": "Warszawa", "postal_code": "00-950"}}]"#;

/// A running projections service (read API and workers) and the nats-server it reads: in
/// this process ([`ReadApi::start`]) or as a replica process of its own on a SurrealDB server
/// ([`ReadApi::replica`]).
pub struct ReadApi {
    /// The server the service reads, alive as long as the test holds this (`None`: the test
    /// holds it, shared by replicas).
    _nats: Option<NatsServer>,
    /// The replica's process (`None`: the service runs in this process).
    process: Option<std::process::Child>,
    /// The read API's base URL.
    pub url: String,
    pub http: Client,
    /// The keys the read API checks tokens with (the edge hands tokens out under the same).
    pub keys: Keys,
    /// Writes the events, as the edge and the processors do.
    js: jetstream::Context,
    shutdown: CancellationToken,
}

/// The operators' token every test service is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The cache period the test services run with.
pub const PERIOD: Duration = Duration::from_millis(1000);

/// The most database reads of the slot table a replica makes over `elapsed` whatever its
/// readers ask: it reloads the table twice a period on its own (`api::keep_slot_table`),
/// plus one a reader may make before the first. Readers that each caused a load would
/// exceed it many times over.
pub fn loads_at_most(elapsed: Duration) -> u64 {
    2 + (elapsed.as_millis() / (PERIOD / 2).as_millis()) as u64
}

impl ReadApi {
    /// Starts the projections on a fresh nats-server and waits until the read API is ready.
    pub async fn start() -> ReadApi {
        testkit::init_test_log();
        let nats = NatsServer::start();
        let js = jetstream::new(nats.connect().await);
        // The streams exist before the first event is written (the service would create
        // them too, but a test's first write may come before it does).
        streams::config::ensure_streams(&js, streams::config::Replication(1))
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let settings = Settings {
            nats: streams::runtime::NatsOptions::new(nats.url(), "projections"),
            store: projections::store::StoreOptions {
                endpoint: "mem://".into(),
                credentials: None,
                database: projections::store::LIVE_DATABASE.into(),
            },
            secret: DEVELOPMENT_SECRET.into(),
            admin_token: ADMIN_TOKEN.into(),
            cache_ttl: PERIOD,
            linger: Duration::ZERO,
            workers: 1,
            replicas: 1,
            cors_origins: Vec::new(),
            publication: projections::smart::Publication {
                public_url: url.clone(),
                // Where the citizens' page would be: the edge's default address.
                booking_url: Some("http://127.0.0.1:8080/".into()),
                booking_phone: None,
                sites: projections::smart::parse_sites(SITES).expect("a valid site directory"),
            },
            calendar: Default::default(),
        };
        let shutdown = CancellationToken::new();
        ntex::rt::spawn(projections::service::run(
            settings,
            listener,
            shutdown.clone(),
        ));
        let read = ReadApi {
            _nats: Some(nats),
            process: None,
            url,
            http: Client::new().await,
            keys: Keys::from_secret(DEVELOPMENT_SECRET),
            js,
            shutdown,
        };
        read.wait_ready().await;
        read
    }

    /// Starts the projections binary as a replica process of its own, reading `nats` and
    /// keeping its tables on the SurrealDB server `surreal` (as `deploy/up --surreal-server`
    /// starts it), and waits until its read API is ready.
    pub async fn replica(nats: &NatsServer, surreal: &testkit::SurrealServer) -> ReadApi {
        testkit::init_test_log();
        let js = jetstream::new(nats.connect().await);
        streams::config::ensure_streams(&js, streams::config::Replication(1))
            .await
            .unwrap();
        let listen = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().unwrap()
        };
        let process = std::process::Command::new(env!("CARGO_BIN_EXE_projections"))
            .env("REG_NATS_URL", nats.url())
            .env("REG_SURREAL_ENDPOINT", surreal.endpoint())
            .env("REG_SURREAL_USER", testkit::SurrealServer::USER)
            .env("REG_SURREAL_PASS", testkit::SurrealServer::PASSWORD)
            .env("REG_READ_LISTEN", listen.to_string())
            .env("REG_DEV_MODE", "1")
            .env("REG_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("REG_PROJECTION_LINGER_MS", "0")
            .env("REG_CACHE_TTL_MS", "1000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the projections binary starts");
        let read = ReadApi {
            _nats: None,
            process: Some(process),
            url: format!("http://{listen}"),
            http: Client::new().await,
            keys: Keys::from_secret(DEVELOPMENT_SECRET),
            js,
            shutdown: CancellationToken::new(),
        };
        read.wait_ready().await;
        read
    }

    /// SIGKILLs a replica process ([`ReadApi::replica`]): nothing it held is released.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    async fn wait_ready(&self) {
        let ready = format!("{}/readyz", self.url);
        testkit::eventually(
            "the read API to be ready",
            Duration::from_secs(60),
            || async {
                let r = self.http.get(&ready).send().await.ok()?;
                (r.status() == 200).then_some(())
            },
        )
        .await;
    }

    /// Publishes `event` on `subject` and waits for JetStream's acknowledgement.
    async fn write(&self, subject: String, correlation_id: String, event: Event) {
        self.js
            .publish(
                subject,
                Envelope::new(correlation_id, event).encode().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// What the edge appends when an operator sets the capacity of `location` on the test
    /// slot date in the test region: `CapacitySet` on the intake stream.
    pub async fn set_capacity(&self, location: &str, capacity: u32) {
        let slot = slot(location);
        let subject = subjects::intake(&slot.region, IntakeKind::Capacity);
        let event = Event::CapacitySet(CapacitySet { slot, capacity });
        self.write(subject, format!("admin-{location}"), event)
            .await;
    }

    /// What the reservation processor appends when it grants citizen `n` a place at
    /// `location` (`reserved` of `capacity` taken with it): `SlotReserved` on the decisions
    /// stream. Returns the registration's id and the token the edge handed out with its
    /// `202`. The submission itself is not written: the projections never read submissions,
    /// a registration's status starts with its first decision.
    pub async fn reserve(
        &self,
        n: u32,
        location: &str,
        reserved: u32,
        capacity: u32,
    ) -> (RegistrationId, String) {
        let slot = slot(location);
        let id = RegistrationId::generate(&slot.region);
        let national_id = testkit::citizen(n, location)["national_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let subject = subjects::reservation_decisions(&slot.region);
        let event = Event::SlotReserved(SlotReserved {
            registration_id: id.clone(),
            citizen_key: self.keys.citizen_key(&national_id),
            slot,
            intake_seq: u64::from(n),
            reserved,
            capacity,
        });
        self.write(subject, id.to_string(), event).await;
        let token = self.keys.token(&id);
        (id, token)
    }

    /// Sends a request and returns status, headers and JSON body ([`testkit::http::send`]).
    pub async fn send(
        &self,
        request: ntex::client::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> (u16, ntex::http::HeaderMap, Value) {
        testkit::http::send(request, body).await
    }

    /// `GET /v1/registrations/{id}`, with `token` if given: the status and body.
    pub async fn status(&self, id: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}/v1/registrations/{id}", self.url));
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

    /// The places left at one location of the test region and date, if it has a row.
    pub async fn remaining(&self, location: &str) -> Option<i64> {
        let (status, _, body) = self
            .send(
                self.http.get(format!(
                    "{}/v1/availability?region={}&location={location}&date={}",
                    self.url,
                    testkit::REGION,
                    testkit::slot_date()
                )),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array()?.first()?["remaining"].as_i64()
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

    /// A counter or gauge from the read API's `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        let (status, _, body) = self
            .send(self.http.get(format!("{}/metrics", self.url)), None)
            .await;
        assert_eq!(status, 200);
        body.as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (sample, value) = line.rsplit_once(' ')?;
                (sample == name).then(|| value.parse::<f64>().ok())?
            })
            .map_or(0, |value| value as u64)
    }
}

impl Drop for ReadApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.kill();
    }
}

pub use testkit::slot_date;

/// The test region's slot at `location` on the test slot date.
fn slot(location: &str) -> SlotKey {
    SlotKey {
        region: Region::parse(testkit::REGION).unwrap(),
        location: Location::parse(location).unwrap(),
        date: NaiveDate::parse_from_str(&slot_date(), "%Y-%m-%d").unwrap(),
    }
}

pub use testkit::http::assert_error;
