//! The edge alone on real servers: a nats-server of its own (testkit) and the edge's HTTP
//! service on a port 0 listener, with the settings a test chose.

use std::net::TcpListener;
use std::time::Duration;

use ingest::settings::Settings;
use ntex::client::Client;
use serde_json::{Value, json};
use streams::appender::{Appender, AppenderOptions};
use streams::claims::{self, Step};
use streams::crypto::{DEVELOPMENT_SECRET, Keys};
use streams::model::{Region, RegistrationId};
use streams::subjects;
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A running edge and the nats-server it writes to.
pub struct Edge {
    pub nats: NatsServer,
    /// The edge's base URL.
    pub url: String,
    pub http: Client,
    /// The keys the edge derives citizen keys and tokens with.
    pub keys: Keys,
    shutdown: CancellationToken,
}

/// A response: status, headers and the body as sent.
pub struct Answer {
    pub status: u16,
    pub headers: ntex::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when empty).
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

impl Edge {
    /// Starts the edge with the development settings, every limit off, changed by `tune`,
    /// and waits until it is ready, its region configured.
    pub async fn start_with(tune: impl FnOnce(&mut Settings)) -> Edge {
        let edge = Self::start_on(NatsServer::start(), tune).await;
        let ready = format!("{}/readyz", edge.url);
        testkit::eventually("the edge to be ready", Duration::from_secs(60), || async {
            let r = edge.http.get(&ready).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        // A region takes registrations once an operator configured it (here: a window open
        // from long ago to far ahead).
        let window = json!({"region": region(), "opens_at": "2020-01-01T00:00:00Z", "closes_at": "2100-01-01T00:00:00Z"});
        let (status, body) = edge.admin_put("/v1/admin/windows", &window).await;
        assert_eq!(status, 200, "{body}");
        edge
    }

    /// Starts the edge on a nats-server a test prepared, without waiting for it to be ready.
    pub async fn start_on(nats: NatsServer, tune: impl FnOnce(&mut Settings)) -> Edge {
        testkit::init_test_log();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut settings = Settings::development(&nats.url());
        settings.rate_per_address = 0;
        settings.rate_per_citizen = 0;
        settings.recoveries_per_hour = 0;
        settings.recoveries_per_address_per_minute = 0;
        settings.workers = 1;
        tune(&mut settings);
        let shutdown = CancellationToken::new();
        ntex::rt::spawn(ingest::service::run(settings, listener, shutdown.clone()));
        Edge {
            nats,
            url,
            http: Client::new().await,
            keys: Keys::from_secret(DEVELOPMENT_SECRET),
            shutdown,
        }
    }

    /// An operator's `PUT` of `body` to `path`, with the development token.
    pub async fn admin_put(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self
            .http
            .put(format!("{}{path}", self.url))
            .bearer_auth(ingest::settings::DEVELOPMENT_ADMIN_TOKEN)
            .content_type("application/json");
        let answer = self
            .send(request, Some(body.to_string().into_bytes()))
            .await;
        (answer.status, answer.json())
    }

    /// Sets the capacity of `location` on the test slot date in the test region.
    pub async fn set_capacity(&self, location: &str, capacity: u32) {
        let slot = json!({"region": region(), "location": location, "date": testkit::slot_date(), "capacity": capacity});
        let (status, body) = self.admin_put("/v1/admin/capacity", &slot).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Sends a request and returns what came back.
    pub async fn send(
        &self,
        request: ntex::client::ClientRequest,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let response = match body {
            Some(body) => request.send_body(body).await,
            None => request.send().await,
        };
        let response = response.expect("the edge answers");
        let body = response.body().limit(1 << 20).await.expect("a body");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: body.to_vec(),
        }
    }

    /// `POST /v1/registrations` with `body` and, if given, an `Idempotency-Key`.
    pub async fn submit(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/v1/registrations", self.url))
            .content_type("application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let answer = self
            .send(request, Some(serde_json::to_vec(body).unwrap()))
            .await;
        (answer.status, answer.json())
    }

    /// `POST /v1/registrations/recover` for the citizen of `body`.
    pub async fn recover(&self, body: &Value) -> Answer {
        let request = self
            .http
            .post(format!("{}/v1/registrations/recover", self.url))
            .content_type("application/json");
        let ask = json!({"national_id": body["national_id"], "birth_date": body["birth_date"]});
        self.send(request, Some(ask.to_string().into_bytes())).await
    }

    /// The edge's public `/metrics`, one sample a line.
    pub async fn metrics(&self) -> Vec<String> {
        let answer = self
            .send(self.http.get(format!("{}/metrics", self.url)), None)
            .await;
        assert_eq!(answer.status, 200);
        String::from_utf8(answer.body)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    /// One sample of the edge's `/metrics` (`name` with its labels, if any), 0 when absent.
    pub async fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .await
            .iter()
            .find_map(|line| {
                let (sample, value) = line.rsplit_once(' ')?;
                (sample == name).then(|| value.parse::<f64>().ok())?
            })
            .map_or(0, |value| value as u64)
    }

    /// The citizen key of the citizen of `body`.
    pub fn citizen_key(&self, body: &Value) -> String {
        self.keys.citizen_key(body["national_id"].as_str().unwrap())
    }

    /// What the claims releaser does once a registration ended (rejected or cancelled): its
    /// citizen's claim is released, so the citizen may register again.
    pub async fn release(&self, appender: &Appender, body: &Value, id: &RegistrationId) {
        let js = async_nats::jetstream::new(self.nats.connect().await);
        let citizen_key = self.citizen_key(body);
        let last = claims::last(&js, &citizen_key).await.unwrap();
        let released = claims::update(appender, last, |record| {
            match record.and_then(|r| r.release(id)) {
                Some(released) => Step::Append(vec![released.message(&citizen_key)], true),
                None => Step::Answer(false),
            }
        })
        .await
        .unwrap();
        assert!(released, "{id} held the claim");
    }

    /// An appender into the intake stream, as the processors' releaser has.
    pub async fn appender(&self) -> Appender {
        Appender::start(
            self.nats.connect().await,
            subjects::INTAKE_STREAM,
            AppenderOptions::default(),
        )
    }

    /// How many messages the intake stream holds, on every subject.
    pub async fn intake_messages(&self) -> u64 {
        let js = async_nats::jetstream::new(self.nats.connect().await);
        let mut stream = js.get_stream(subjects::INTAKE_STREAM).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// How many messages the intake stream holds on `subject` (a filter).
    pub async fn held(&self, filter: &str) -> u64 {
        let js = async_nats::jetstream::new(self.nats.connect().await);
        let stream = js.get_stream(subjects::INTAKE_STREAM).await.unwrap();
        let info = stream.info_with_subjects(filter).await.unwrap();
        let mut total = 0;
        futures::pin_mut!(info);
        while let Some(entry) = futures::StreamExt::next(&mut info).await {
            total += entry.unwrap().1 as u64;
        }
        total
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub use testkit::citizen;

/// The region every test registers in.
pub fn region() -> Region {
    Region::parse(testkit::REGION).unwrap()
}

pub use testkit::http::assert_error;

/// The registration id of a `202`.
pub fn registration_id(answer: &Value) -> RegistrationId {
    RegistrationId::parse(answer["registration_id"].as_str().unwrap()).unwrap()
}
