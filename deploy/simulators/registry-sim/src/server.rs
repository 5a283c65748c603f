//! The HTTP side: the verify operation with its knobs applied, and the admin endpoints.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use simkit::Simulator as _;
use simkit::http::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::counts::{Counts, IdCounts};
use crate::knobs::{Knobs, KnobsError};
use crate::wire::{
    FaultCode, HostileKind, MAX_REQUEST_BYTES, RegistryResult, SERVER_FAULT_MESSAGE, SOAP_ACTION,
    VERIFY_PATH, VerifyRequest, answer_xml, echo_fault_xml, fault_xml, hostile_xml,
    huge_body_parts, outcome_for, parse_request,
};

const XML: &str = "text/xml; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
/// The text body of a bare `500`.
pub const BARE_ERROR_BODY: &str = "Internal Server Error: upstream database connection reset";

/// The simulated registry: its knobs (changeable at runtime) and its counters. Cheap to
/// clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    knobs: simkit::KnobCell<Knobs>,
    counts: Mutex<Counts>,
    bucket: Mutex<Bucket>,
}

/// A token bucket holding one second's worth of requests.
#[derive(Debug)]
struct Bucket {
    rate: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        if rate != self.rate {
            *self = Bucket {
                rate,
                tokens: f64::from(rate),
                last: now,
            };
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How one verify request ended, for the counters.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Answered(RegistryResult),
    Fault,
    BareError,
    RateLimited,
    Outage,
    Hostile,
    BadRequest,
    Abandoned,
}

/// What the knobs drew for one request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Misbehaviour {
    None,
    Fault,
    BareError,
    Hostile(HostileKind),
}

fn draw(knobs: &Knobs, rng: &mut impl Rng) -> (Duration, Misbehaviour) {
    let mut ms = knobs.latency_ms;
    if knobs.jitter_ms > 0 {
        ms += rng.random_range(0..=knobs.jitter_ms);
    }
    if knobs.spike_rate > 0.0 && rng.random_bool(knobs.spike_rate) {
        ms += knobs.spike_ms;
    }
    let misbehaviour = if knobs.error_rate > 0.0 && rng.random_bool(knobs.error_rate) {
        if rng.random_bool(0.5) {
            Misbehaviour::Fault
        } else {
            Misbehaviour::BareError
        }
    } else if knobs.hostile_rate > 0.0
        && !knobs.hostile.is_empty()
        && rng.random_bool(knobs.hostile_rate)
    {
        Misbehaviour::Hostile(knobs.hostile[rng.random_range(0..knobs.hostile.len())])
    } else {
        Misbehaviour::None
    };
    (Duration::from_millis(ms), misbehaviour)
}

/// One verify request being handled: counted as abandoned if dropped unsettled (the client
/// went away during the simulated latency).
struct Call {
    registry: Registry,
    national_id: Option<String>,
    settled: bool,
}

impl Call {
    fn settle(mut self, outcome: Outcome, response: Response) -> Response {
        self.settled = true;
        self.registry.record(outcome, self.national_id.as_deref());
        response
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.settled {
            self.registry
                .record(Outcome::Abandoned, self.national_id.as_deref());
        }
    }
}

impl simkit::Simulator for Registry {
    type Knobs = Knobs;

    fn knob_cell(&self) -> &simkit::KnobCell<Knobs> {
        &self.inner.knobs
    }
}

impl Registry {
    /// A registry with these knobs and zeroed counters.
    pub fn new(knobs: Knobs) -> Result<Registry, KnobsError> {
        let knobs = simkit::KnobCell::new(knobs)?;
        Ok(Registry {
            inner: Arc::new(Inner {
                knobs,
                counts: Mutex::new(Counts::default()),
                bucket: Mutex::new(Bucket {
                    rate: 0,
                    tokens: 0.0,
                    last: Instant::now(),
                }),
            }),
        })
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> Counts {
        self.lock_counts().clone()
    }

    /// The counters of one national id.
    pub fn counts_for(&self, national_id: &str) -> IdCounts {
        self.lock_counts().for_id(national_id)
    }

    /// Zeroes every counter.
    pub fn reset_counts(&self) {
        *self.lock_counts() = Counts::default();
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self) -> Call {
        self.lock_counts().total += 1;
        Call {
            registry: self.clone(),
            national_id: None,
            settled: false,
        }
    }

    fn received(&self, national_id: &str) {
        self.lock_counts()
            .by_national_id
            .entry(national_id.to_owned())
            .or_default()
            .requests += 1;
    }

    fn record(&self, outcome: Outcome, national_id: Option<&str>) {
        let mut counts = self.lock_counts();
        match outcome {
            Outcome::Answered(result) => {
                counts.answered.add(result);
                if let Some(id) = national_id {
                    counts
                        .by_national_id
                        .entry(id.to_owned())
                        .or_default()
                        .answers += 1;
                }
            }
            Outcome::Fault => counts.faults += 1,
            Outcome::BareError => counts.bare_errors += 1,
            Outcome::RateLimited => counts.rate_limited += 1,
            Outcome::Outage => counts.outage += 1,
            Outcome::Hostile => counts.hostile += 1,
            Outcome::BadRequest => counts.bad_request += 1,
            Outcome::Abandoned => counts.abandoned += 1,
        }
    }

    fn take_token(&self, rate: u32) -> bool {
        self.inner
            .bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(rate, Instant::now())
    }

    /// The HTTP routes: `POST /registry/v1/verify`, the admin endpoints under `/_sim/` and
    /// `GET /healthz`.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                VERIFY_PATH,
                post(verify).layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
            )
            .route("/_sim/counts", get(get_counts))
            .route("/_sim/counts/{national_id}", get(get_id_counts))
            .route("/_sim/reset", post(reset))
            .merge(simkit::http::knob_routes())
            .with_state(self.clone())
    }

    /// Serves [`Registry::router`] on `listener` until `shutdown` is cancelled, then lets
    /// requests in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("serving the registry simulator")
    }
}

fn xml(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, [(CONTENT_TYPE, XML)], body.into()).into_response()
}

fn text(status: StatusCode, retry_after: Option<&'static str>, body: &'static str) -> Response {
    let mut response = (status, [(CONTENT_TYPE, TEXT)], body).into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, seconds.parse().expect("a valid header value"));
    }
    response
}

fn client_fault(status: StatusCode, message: &str) -> Response {
    xml(status, fault_xml(FaultCode::Client, message))
}

/// Checks the headers the contract requires: `Content-Type: text/xml` (UTF-8 if a charset is
/// named) and the operation's `SOAPAction`.
fn check_headers(headers: &HeaderMap) -> Result<(), &'static str> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .ok_or("Content-Type text/xml is required")?;
    let mut parts = content_type.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|media| media.eq_ignore_ascii_case("text/xml"))
    {
        return Err("Content-Type must be text/xml");
    }
    for parameter in parts {
        if let Some((name, value)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
            && !value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err("the request must be UTF-8");
        }
    }
    let action = headers
        .get("soapaction")
        .and_then(|value| value.to_str().ok())
        .ok_or("SOAPAction is required")?;
    if action.trim().trim_matches('"') != SOAP_ACTION {
        return Err("unknown SOAPAction: this endpoint serves urn:gov:pl:registry:v1#VerifyPerson");
    }
    Ok(())
}

async fn verify(
    State(registry): State<Registry>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut call = registry.begin();
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!("the request exceeds {MAX_REQUEST_BYTES} bytes");
            let response = client_fault(StatusCode::PAYLOAD_TOO_LARGE, &message);
            return call.settle(Outcome::BadRequest, response);
        }
        Err(rejection) => {
            let response = client_fault(StatusCode::BAD_REQUEST, &rejection.body_text());
            return call.settle(Outcome::BadRequest, response);
        }
    };
    if let Err(message) = check_headers(&headers) {
        let response = client_fault(StatusCode::BAD_REQUEST, message);
        return call.settle(Outcome::BadRequest, response);
    }
    let request = match parse_request(&body) {
        Ok(request) => request,
        Err(error) => {
            tracing::debug!(%error, "refused a request");
            let response = client_fault(StatusCode::BAD_REQUEST, &error.to_string());
            return call.settle(Outcome::BadRequest, response);
        }
    };
    registry.received(&request.national_id);
    call.national_id = Some(request.national_id.clone());

    let knobs = registry.knobs();
    if knobs.outage {
        let response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("5"),
            "Service Unavailable: the registry is down for maintenance",
        );
        return call.settle(Outcome::Outage, response);
    }
    if knobs.rate_limit_per_s > 0 && !registry.take_token(knobs.rate_limit_per_s) {
        let response = text(
            StatusCode::TOO_MANY_REQUESTS,
            Some("1"),
            "Too Many Requests",
        );
        return call.settle(Outcome::RateLimited, response);
    }
    let (delay, misbehaviour) = draw(&knobs, &mut rand::rng());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (outcome, response) = answer(&request, misbehaviour, knobs.fault_echo);
    tracing::debug!(request_id = %request.request_id, ?outcome, ?delay, "answered");
    call.settle(outcome, response)
}

fn answer(
    request: &VerifyRequest,
    misbehaviour: Misbehaviour,
    fault_echo: bool,
) -> (Outcome, Response) {
    let result = outcome_for(&request.national_id);
    match misbehaviour {
        Misbehaviour::Fault | Misbehaviour::BareError if fault_echo => (
            Outcome::Fault,
            xml(StatusCode::INTERNAL_SERVER_ERROR, echo_fault_xml(request)),
        ),
        Misbehaviour::Fault => (
            Outcome::Fault,
            xml(
                StatusCode::INTERNAL_SERVER_ERROR,
                fault_xml(FaultCode::Server, SERVER_FAULT_MESSAGE),
            ),
        ),
        Misbehaviour::BareError => (
            Outcome::BareError,
            text(StatusCode::INTERNAL_SERVER_ERROR, None, BARE_ERROR_BODY),
        ),
        Misbehaviour::Hostile(HostileKind::HugeBody) => {
            let (before, padding, after) = huge_body_parts(&request.request_id, result);
            let parts = [
                Bytes::from(before),
                Bytes::from_static(padding.as_bytes()),
                Bytes::from(after),
            ];
            let stream = futures::stream::iter(parts.map(Ok::<_, Infallible>));
            (
                Outcome::Hostile,
                xml(StatusCode::OK, Body::from_stream(stream)),
            )
        }
        Misbehaviour::Hostile(kind) => (
            Outcome::Hostile,
            xml(
                StatusCode::OK,
                hostile_xml(kind, &request.request_id, result),
            ),
        ),
        Misbehaviour::None => (
            Outcome::Answered(result),
            xml(StatusCode::OK, answer_xml(&request.request_id, result)),
        ),
    }
}

async fn get_counts(State(registry): State<Registry>) -> Response {
    json(StatusCode::OK, &registry.counts())
}

async fn get_id_counts(
    State(registry): State<Registry>,
    Path(national_id): Path<String>,
) -> Response {
    json(StatusCode::OK, &registry.counts_for(&national_id))
}

async fn reset(State(registry): State<Registry>) -> StatusCode {
    registry.reset_counts();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    #[test]
    fn the_bucket_holds_one_seconds_worth_and_refills() {
        let start = Instant::now();
        let mut bucket = Bucket {
            rate: 0,
            tokens: 0.0,
            last: start,
        };
        let taken = (0..10).filter(|_| bucket.take(3, start)).count();
        assert_eq!(taken, 3);
        assert!(bucket.take(3, start + Duration::from_millis(400)));
        assert!(!bucket.take(3, start + Duration::from_millis(400)));
        assert_eq!(
            (0..10)
                .filter(|_| bucket.take(3, start + Duration::from_secs(10)))
                .count(),
            3
        );
    }

    #[test]
    fn draws_follow_the_knobs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let quiet = Knobs {
            latency_ms: 5,
            jitter_ms: 0,
            ..Knobs::default()
        };
        assert_eq!(
            draw(&quiet, &mut rng),
            (Duration::from_millis(5), Misbehaviour::None)
        );
        let spiky = Knobs {
            spike_rate: 1.0,
            spike_ms: 100,
            ..quiet.clone()
        };
        assert_eq!(draw(&spiky, &mut rng).0, Duration::from_millis(105));
        let failing = Knobs {
            error_rate: 1.0,
            hostile_rate: 1.0,
            ..quiet.clone()
        };
        for _ in 0..20 {
            let (_, misbehaviour) = draw(&failing, &mut rng);
            assert!(matches!(
                misbehaviour,
                Misbehaviour::Fault | Misbehaviour::BareError
            ));
        }
        let hostile = Knobs {
            hostile_rate: 1.0,
            hostile: vec![HostileKind::Truncated],
            ..quiet
        };
        assert_eq!(
            draw(&hostile, &mut rng).1,
            Misbehaviour::Hostile(HostileKind::Truncated)
        );
    }
}
