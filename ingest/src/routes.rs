//! The edge's HTTP handlers: citizen writes, operator writes, health.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ntex::http::StatusCode;
use ntex::http::header::{self, HeaderValue};
use ntex::web::{self, HttpRequest, HttpResponse, types::Payload, types::State};
use serde_json::json;
use streams::appender::{AppendError, Appender, Outgoing};
use streams::crypto::{Keys, sha256_hex};
use streams::events::{
    CancellationRequested, CapacitySet, Envelope, Event, PersonalData, RegistrationSubmitted,
    WindowSet,
};
use streams::http::{error, json as json_response, read_body};
use streams::model::RegistrationId;
use streams::subjects::{self, IntakeKind};

use crate::claims::{self, Claim, Claimed};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::validate::{self, FieldError};
use crate::windows::Windows;

/// Everything a handler needs, shared by every worker thread.
#[derive(Clone)]
pub struct Edge {
    /// Configuration.
    pub settings: Arc<Settings>,
    /// Keys derived from the server secret.
    pub keys: Keys,
    /// Group commit into the intake stream.
    pub appender: Appender,
    /// Registration windows.
    pub windows: Windows,
    /// The NATS connection (readiness).
    pub client: async_nats::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Idempotency keys (or citizen keys) with a request in flight on this replica.
    pub in_flight: Arc<Mutex<HashSet<String>>>,
    /// Per client address limiter (None when disabled).
    pub per_address: Option<Limiter<IpAddr>>,
    /// Per citizen limiter (None when disabled).
    pub per_citizen: Option<Limiter<String>>,
    /// Admission: one permit per submission being worked on (None when unbounded).
    pub open_submissions: Option<Arc<tokio::sync::Semaphore>>,
}

/// A shared keyed rate limiter.
pub type Limiter<K> = Arc<DefaultKeyedRateLimiter<K>>;

impl Edge {
    /// Builds the limiters from the settings.
    pub fn limiters(settings: &Settings) -> (Option<Limiter<IpAddr>>, Option<Limiter<String>>) {
        let per_address = NonZeroU32::new(settings.rate_per_address).map(|n| {
            Arc::new(RateLimiter::keyed(
                Quota::per_second(n).allow_burst(n.saturating_mul(NonZeroU32::new(2).unwrap())),
            ))
        });
        let per_citizen = NonZeroU32::new(settings.rate_per_citizen)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        (per_address, per_citizen)
    }
}

/// Releases an in-flight marker when the request ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().expect("lock").remove(&self.key);
    }
}

fn retry_after(mut response: HttpResponse, seconds: u64) -> HttpResponse {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&seconds.max(1).to_string()).expect("digits are a valid header"),
    );
    response
}

fn unavailable(what: &str) -> HttpResponse {
    retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("{what} is unavailable; nothing was recorded, try again"),
            None,
        ),
        1,
    )
}

fn overloaded() -> HttpResponse {
    retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many registrations are being recorded right now; nothing was recorded, try again",
            None,
        ),
        1,
    )
}

fn field_error(e: FieldError) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        e.code,
        &e.message,
        e.field.as_deref(),
    )
}

fn rate_limited(wait: std::time::Duration) -> HttpResponse {
    retry_after(
        error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests; wait before trying again",
            None,
        ),
        wait.as_secs_f64().ceil() as u64,
    )
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn not_json() -> HttpResponse {
    error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "the body must be JSON with Content-Type: application/json",
        None,
    )
}

fn declared_len(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Runs an append (with or without a claim), recording how long it waited for JetStream.
async fn timed<T>(edge: &Edge, append: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = append.await;
    edge.metrics
        .append_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn append(edge: &Edge, message: Outgoing) -> Result<u64, AppendError> {
    timed(edge, edge.appender.append(message)).await
}

fn check_address(edge: &Edge, req: &HttpRequest) -> Result<(), HttpResponse> {
    if let (Some(limiter), Some(peer)) = (&edge.per_address, req.peer_addr()) {
        limiter.check_key(&peer.ip()).map_err(|not_until| {
            rate_limited(not_until.wait_time_from(DefaultClock::default().now()))
        })?;
    }
    Ok(())
}

fn count(edge: &Edge, route: &str, response: HttpResponse) -> HttpResponse {
    edge.metrics
        .responses
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
}

/// `POST /v1/registrations`
pub async fn submit(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let response = match submit_inner(&req, payload, &edge).await {
        Ok(r) | Err(r) => r,
    };
    count(&edge, "submit", response)
}

async fn submit_inner(
    req: &HttpRequest,
    payload: Payload,
    edge: &Edge,
) -> Result<HttpResponse, HttpResponse> {
    // The (capped) body is read before any refusal, so the connection stays usable for the
    // client's next request: a response sent over an unread body forces a close.
    let body = read_body(declared_len(req), payload, edge.settings.max_body_bytes).await?;
    check_address(edge, req)?;
    if !is_json(req) {
        return Err(not_json());
    }
    let now = Utc::now();
    let registration = validate::parse_registration(
        &body,
        edge.settings.national_id_rule,
        &edge.settings.limits,
        now.date_naive(),
    )
    .map_err(field_error)?;
    if !edge.windows.is_open(&registration.slot.region, now) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "window_closed",
            &format!(
                "registration for region {} is not open now",
                registration.slot.region
            ),
            Some("region"),
        ));
    }
    // Admission: beyond the bound, refuse at once rather than queue for the group commit. The
    // permit is taken once the body is read and found valid: a slow sender cannot hold one,
    // and bad input still gets its own answer under load.
    let _admitted = match &edge.open_submissions {
        None => None,
        Some(open) => Some(open.clone().try_acquire_owned().map_err(|_| overloaded())?),
    };
    let idempotency_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    Some("Idempotency-Key"),
                ));
            }
        },
    };
    let citizen_key = edge.keys.citizen_key(&registration.national_id);
    if let Some(limiter) = &edge.per_citizen
        && let Err(not_until) = limiter.check_key(&citizen_key)
    {
        return Err(rate_limited(
            not_until.wait_time_from(DefaultClock::default().now()),
        ));
    }

    // One request per key (or per citizen without a key) in flight on this replica.
    let flight_key = idempotency_key
        .as_deref()
        .map_or_else(|| format!("c:{citizen_key}"), |k| format!("k:{k}"));
    if !edge
        .in_flight
        .lock()
        .expect("lock")
        .insert(flight_key.clone())
    {
        return Err(error(
            StatusCode::CONFLICT,
            "request_in_flight",
            "the same request is still being processed; retry in a moment",
            None,
        ));
    }
    let _in_flight = InFlight {
        set: edge.in_flight.clone(),
        key: flight_key,
    };

    let request_hash = sha256_hex(&serde_json::to_vec(&registration).expect("serializes"));
    let id = RegistrationId::generate(&registration.slot.region);
    let wanted = Claim {
        registration_id: id.clone(),
        request_hash: request_hash.clone(),
        idempotency_key_hash: idempotency_key.as_deref().map(|k| sha256_hex(k.as_bytes())),
    };
    // Fail fast while NATS is away: nothing can be made durable, so nothing is accepted.
    if edge.client.connection_state() != async_nats::connection::State::Connected {
        return Err(unavailable("the event log"));
    }
    let personal = PersonalData {
        national_id: registration.national_id,
        full_name: registration.full_name,
        birth_date: registration.birth_date,
        email: registration.email,
        phone: registration.phone,
        attributes: registration.attributes,
    };
    let event = Event::RegistrationSubmitted(RegistrationSubmitted {
        registration_id: id.clone(),
        slot: registration.slot.clone(),
        citizen_key: citizen_key.clone(),
        request_hash,
        language: registration.language,
        personal: edge.keys.seal(&id, &personal),
    });
    let envelope = Envelope::new(id.to_string(), event);
    let subject = subjects::intake(&registration.slot.region, IntakeKind::Submitted);
    let claimed = timed(
        edge,
        claims::claim_and_append(
            &edge.appender,
            &citizen_key,
            wanted,
            Outgoing::event(subject, &envelope),
        ),
    )
    .await;
    let id = match claimed {
        Ok(Claimed::New { claim, sequence }) => {
            tracing::debug!(registration_id = %claim.registration_id, sequence, "Registration accepted.");
            claim.registration_id
        }
        Ok(Claimed::Replay(claim)) => {
            edge.metrics.replays.inc();
            claim.registration_id
        }
        Ok(Claimed::KeyReused) => {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
                Some("Idempotency-Key"),
            ));
        }
        Ok(Claimed::AlreadyRegistered) => {
            return Err(error(
                StatusCode::CONFLICT,
                "already_registered",
                "this citizen already holds a registration; cancel it before registering again",
                Some("national_id"),
            ));
        }
        Err(err) => {
            // Unavailable: the outcome is unknown. A retry of the same request is answered
            // from the claim if the write did land, so it is never accepted twice.
            tracing::warn!(registration_id = %id, error = %err, "Append failed; answering 503.");
            return Err(unavailable("the event log"));
        }
    };
    let token = edge.keys.token(&id);
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "registration_id": id,
            "token": token,
            "status_url": status_url(edge, &id),
        }),
    ))
}

/// `DELETE /v1/registrations/{id}`
pub async fn cancel(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    let response = match cancel_inner(&req, &edge).await {
        Ok(r) | Err(r) => r,
    };
    count(&edge, "cancel", response)
}

/// Where the citizen follows their registration: the read API, not this edge.
fn status_url(edge: &Edge, id: &RegistrationId) -> String {
    format!("{}/v1/registrations/{id}", edge.settings.status_base_url)
}

fn not_found() -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no registration with this id and token",
        None,
    )
}

async fn cancel_inner(req: &HttpRequest, edge: &Edge) -> Result<HttpResponse, HttpResponse> {
    check_address(edge, req)?;
    let id = req.match_info().get("id").unwrap_or_default();
    let id = RegistrationId::parse(id).map_err(|_| not_found())?;
    let token = bearer(req).ok_or_else(not_found)?;
    if !edge.keys.verify_token(&id, token) {
        return Err(not_found());
    }
    let envelope = Envelope::new(
        id.to_string(),
        Event::CancellationRequested(CancellationRequested {
            registration_id: id.clone(),
        }),
    );
    let subject = subjects::intake(&id.region(), IntakeKind::Cancel);
    append(edge, Outgoing::event(subject, &envelope))
        .await
        .map_err(|_| unavailable("the event log"))?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "registration_id": id,
            "status": "cancellation_requested",
            "status_url": status_url(edge, &id),
        }),
    ))
}

fn check_admin(req: &HttpRequest, edge: &Edge) -> Result<(), HttpResponse> {
    match bearer(req) {
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an operator bearer token is required",
            None,
        )),
        Some(t) if constant_time_eq(t.as_bytes(), edge.settings.admin_token.as_bytes()) => Ok(()),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not change the configuration",
            None,
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `PUT /v1/admin/capacity`
pub async fn put_capacity(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(not_json());
        }
        let request = validate::parse_capacity(&body).map_err(field_error)?;
        let event = Event::CapacitySet(CapacitySet {
            slot: request.slot.clone(),
            capacity: request.capacity,
        });
        let envelope = Envelope::new(format!("admin-{}", uuid::Uuid::now_v7()), event);
        let subject = subjects::intake(&request.slot.region, IntakeKind::Capacity);
        append(&edge, Outgoing::event(subject, &envelope))
            .await
            .map_err(|_| unavailable("the event log"))?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "region": request.slot.region,
                "location": request.slot.location,
                "date": request.slot.date,
                "capacity": request.capacity,
            }),
        ))
    }
    .await;
    count(&edge, "capacity", result.unwrap_or_else(|r| r))
}

/// `PUT /v1/admin/windows`
pub async fn put_window(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(not_json());
        }
        let request = validate::parse_window(&body).map_err(field_error)?;
        let window = WindowSet {
            region: request.region.clone(),
            opens_at: request.opens_at,
            closes_at: request.closes_at,
        };
        let envelope = Envelope::new(
            format!("admin-{}", uuid::Uuid::now_v7()),
            Event::WindowSet(window.clone()),
        );
        let subject = subjects::intake(&request.region, IntakeKind::Window);
        append(&edge, Outgoing::event(subject, &envelope))
            .await
            .map_err(|_| unavailable("the event log"))?;
        // Read-your-writes on this replica; others follow the log within milliseconds.
        edge.windows.set(&window);
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "region": window.region,
                "opens_at": window.opens_at,
                "closes_at": window.closes_at,
            }),
        ))
    }
    .await;
    count(&edge, "windows", result.unwrap_or_else(|r| r))
}

/// `GET /readyz`: NATS connected and the intake stream answering.
pub async fn readyz(edge: State<Edge>) -> HttpResponse {
    let connected = edge.client.connection_state() == async_nats::connection::State::Connected;
    let js = async_nats::jetstream::new(edge.client.clone());
    let stream_ok = connected
        && tokio::time::timeout(
            std::time::Duration::from_secs(1),
            js.get_stream_no_info(subjects::INTAKE_STREAM),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    streams::http::readiness(&[("nats", connected), ("jetstream", stream_ok)])
}

/// `GET /metrics`
pub async fn metrics(edge: State<Edge>) -> HttpResponse {
    if let Some(open) = &edge.open_submissions {
        let bound = edge.settings.max_open_submissions;
        edge.metrics
            .open_submissions
            .set(bound.saturating_sub(open.available_permits()) as i64);
    }
    streams::http::metrics(&edge.metrics.registry)
}

/// The routes of the edge.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/registrations", web::post().to(submit))
        .route("/v1/registrations/{id}", web::delete().to(cancel))
        .route("/v1/admin/capacity", web::put().to(put_capacity))
        .route("/v1/admin/windows", web::put().to(put_window))
        .route("/healthz", web::get().to(streams::http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}
