//! The edge's HTTP handlers: citizen writes, operator writes, health.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ntex::http::StatusCode;
use ntex::http::header;
use ntex::web::{self, HttpRequest, HttpResponse, types::Payload, types::State};
use serde_json::json;
use streams::appender::{Appender, Outgoing};
use streams::claims::ClaimRecord;
use streams::crypto::Keys;
use streams::events::{
    CancellationRequested, CapacitySet, Envelope, ErasureRequested, Event,
    NotificationRedriveRequested, PersonalData, RegistrationSubmitted, ReviewRequeued,
    VerificationFailed, VerificationPassed, WindowSet,
};
use streams::http::{json as json_response, read_body};
use streams::model::RegistrationId;
use streams::subjects::{self, IntakeKind};

use crate::claims::{self, Claim, Claimed};
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::validate::{self, FieldError, Registration};
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
    /// JetStream, for reading a citizen's claim back.
    pub js: async_nats::jetstream::Context,
    /// Metrics.
    pub metrics: Metrics,
    /// Idempotency keys (or citizen keys) with a request in flight on this replica.
    pub in_flight: Arc<Mutex<HashSet<String>>>,
    /// Per client address limiter (None when disabled).
    pub per_address: Option<Limiter<IpAddr>>,
    /// Per citizen limiter (None when disabled).
    pub per_citizen: Option<Limiter<String>>,
    /// Per citizen limiter of lost-link recoveries (None when disabled).
    pub per_recovery: Option<Limiter<String>>,
    /// Per client address limiter of lost-link recoveries (None when disabled).
    pub per_recovery_address: Option<Limiter<IpAddr>>,
    /// The queue of lost-link recoveries, looked up and appended after the answer.
    pub recoveries: crate::recovery::Recoveries,
    /// Admission: one permit per submission being worked on (None when unbounded).
    pub open_submissions: Option<Arc<tokio::sync::Semaphore>>,
    /// The regions' waiting rooms.
    pub door: crate::waiting_room::Door,
    /// Per client address limiter of waiting-room tickets (None when disabled).
    pub per_ticket_address: Option<Limiter<IpAddr>>,
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

    /// The per-citizen limiter of lost-link recoveries.
    pub fn recovery_limiter(settings: &Settings) -> Option<Limiter<String>> {
        NonZeroU32::new(settings.recoveries_per_hour)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_hour(n))))
    }

    /// The per-address limiter of waiting-room tickets.
    pub fn ticket_limiter(settings: &Settings) -> Option<Limiter<IpAddr>> {
        NonZeroU32::new(settings.tickets_per_address_per_minute)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))))
    }

    /// The per-address limiter of lost-link recoveries.
    pub fn recovery_address_limiter(settings: &Settings) -> Option<Limiter<IpAddr>> {
        NonZeroU32::new(settings.recoveries_per_address_per_minute)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))))
    }
}

/// Releases an in-flight marker when the request ends, however it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Marks `key` in flight, or says a request with it already is.
    fn enter(set: &Arc<Mutex<HashSet<String>>>, key: String) -> Result<Self, EdgeError> {
        if !set.lock().expect("lock").insert(key.clone()) {
            return Err(EdgeError::InFlight);
        }
        Ok(InFlight {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().expect("lock").remove(&self.key);
    }
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn declared_len(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

use streams::http::{OperatorRefusal, bearer};

/// The `Idempotency-Key` header, if sent and well formed.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, EdgeError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
            _ => Err(EdgeError::BadIdempotencyKey),
        },
    }
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

/// Appends one operator or cancellation event.
async fn append(edge: &Edge, message: Outgoing) -> Result<u64, EdgeError> {
    timed(edge, edge.appender.append(message))
        .await
        .map_err(|err| EdgeError::from_append(&err))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest address
/// in `X-Forwarded-For` that is not one (proxies append the address they received from, so
/// the rightmost untrusted entry is the one no client could forge).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or_default().rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(address) => {
                client = address;
                if !trusted.contains(&address) {
                    break;
                }
            }
            // A malformed entry ends what can be trusted: the last good address stands.
            Err(_) => break,
        }
    }
    client
}

fn check_address(edge: &Edge, req: &HttpRequest) -> Result<(), EdgeError> {
    check_address_with(edge, req, edge.per_address.as_ref())
}

/// Checks the client's address against `limiter` (none: unlimited).
fn check_address_with(
    edge: &Edge,
    req: &HttpRequest,
    limiter: Option<&Limiter<IpAddr>>,
) -> Result<(), EdgeError> {
    if let (Some(limiter), Some(peer)) = (limiter, req.peer_addr()) {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = client_address(peer.ip(), forwarded, &edge.settings.trusted_proxies);
        limiter.check_key(&client).map_err(|not_until| {
            EdgeError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()))
        })?;
    }
    Ok(())
}

fn count(edge: &Edge, route: &str, result: Result<HttpResponse, EdgeError>) -> HttpResponse {
    let response = result.unwrap_or_else(|err| err.response());
    edge.metrics
        .responses
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    response
}

/// `POST /v1/registrations`
pub async fn submit(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = submit_inner(&req, payload, &edge).await;
    count(&edge, "submit", result)
}

/// A valid submission, ready to be claimed and appended.
struct Submission {
    registration: Registration,
    citizen_key: String,
    /// What the claim records of this request (keyed hashes of the body and the key).
    wanted: Claim,
}

async fn submit_inner(
    req: &HttpRequest,
    payload: Payload,
    edge: &Edge,
) -> Result<HttpResponse, EdgeError> {
    // The (capped) body is read before any refusal, so the connection stays usable for the
    // client's next request: a response sent over an unread body forces a close.
    let body = read_body(declared_len(req), payload, edge.settings.max_body_bytes).await?;
    check_address(edge, req)?;
    if !is_json(req) {
        return Err(EdgeError::NotJson);
    }
    let submission = parse_submission(req, &body, edge)?;
    // The waiting room, when the region's is on: an admitted ticket, used once.
    let ticket = edge.door.check(
        &edge.keys,
        &submission.registration.slot.region,
        req.headers()
            .get(streams::waiting_room::TICKET_HEADER)
            .and_then(|v| v.to_str().ok()),
    )?;
    // Admission: beyond the bound, refuse at once rather than queue for the group commit. The
    // permit is taken once the body is read and found valid: a slow sender cannot hold one,
    // and bad input still gets its own answer under load.
    let _admitted = match &edge.open_submissions {
        None => None,
        Some(open) => Some(
            open.clone()
                .try_acquire_owned()
                .map_err(|_| EdgeError::Overloaded)?,
        ),
    };
    // One request per key (or per citizen without a key) in flight on this replica.
    let _in_flight = InFlight::enter(
        &edge.in_flight,
        submission
            .wanted
            .idempotency_key_hash
            .as_deref()
            .map_or_else(
                || format!("c:{}", submission.citizen_key),
                |k| format!("k:{k}"),
            ),
    )?;
    let claimed = match limit_citizen(edge, &submission).await? {
        // A replay of a recorded request, found while checking the citizen's limit.
        Some(replayed) => Claimed::Replay(replayed),
        None => {
            // Fail fast while NATS is away: nothing can be made durable, so nothing is
            // accepted.
            if edge.client.connection_state() != async_nats::connection::State::Connected {
                return Err(EdgeError::Unavailable("the event log"));
            }
            claim(edge, submission, ticket.as_ref()).await?
        }
    };
    let id = match claimed {
        Claimed::New(claim) => {
            tracing::debug!(registration_id = %claim.registration_id, "Registration accepted.");
            if let Some(ticket) = &ticket {
                edge.door.used(ticket);
            }
            claim.registration_id
        }
        Claimed::Replay(claim) => {
            edge.metrics.replays.inc();
            claim.registration_id
        }
        Claimed::KeyReused => return Err(EdgeError::KeyReused),
        Claimed::AlreadyRegistered => return Err(EdgeError::AlreadyRegistered),
    };
    Ok(accepted(edge, &id))
}

/// Validates the body and the headers, checks the window, and derives the citizen's key and
/// the claim this request would write. Pure but for the clock and the windows.
fn parse_submission(req: &HttpRequest, body: &[u8], edge: &Edge) -> Result<Submission, EdgeError> {
    let now = Utc::now();
    let registration = validate::parse_registration(
        body,
        edge.settings.national_id_rule,
        &edge.settings.limits,
        now.date_naive(),
    )
    .map_err(EdgeError::Invalid)?;
    if !edge.windows.known() {
        return Err(EdgeError::Unavailable("the list of registration windows"));
    }
    let slot = &registration.slot;
    if !edge.windows.is_configured(&slot.region) {
        return Err(EdgeError::Invalid(FieldError::unknown_region(&slot.region)));
    }
    if edge.settings.calendar.slot_is_over(slot, now) {
        return Err(EdgeError::Invalid(FieldError::day_over(
            slot.date,
            edge.settings.calendar.zone(&slot.region),
        )));
    }
    if !edge.windows.is_open(&registration.slot.region, now) {
        return Err(EdgeError::WindowClosed(registration.slot.region));
    }
    let key = idempotency_key(req)?;
    let citizen_key = edge.keys.citizen_key(&registration.national_id);
    let wanted = Claim {
        registration_id: RegistrationId::generate(&registration.slot.region),
        request_hash: streams::scratch::json(&registration, |json| {
            edge.keys.digest("request", json)
        }),
        idempotency_key_hash: key.map(|k| {
            edge.keys
                .digest("idempotency-key", format!("{citizen_key}:{k}").as_bytes())
        }),
    };
    Ok(Submission {
        registration,
        citizen_key,
        wanted,
    })
}

/// The per-citizen limit. A citizen over it may still replay a request already recorded (a
/// client retrying after a lost answer gets its answer), so before refusing, the citizen's
/// claim (and, for a key it does not remember, the key's own record) is read: a replay is
/// answered from it (`Some`), anything else is `429`.
async fn limit_citizen(edge: &Edge, submission: &Submission) -> Result<Option<Claim>, EdgeError> {
    let Some(limiter) = &edge.per_citizen else {
        return Ok(None);
    };
    let Err(not_until) = limiter.check_key(&submission.citizen_key) else {
        return Ok(None);
    };
    let refused =
        || EdgeError::RateLimited(not_until.wait_time_from(DefaultClock::default().now()));
    let last = streams::claims::last(&edge.js, &submission.citizen_key)
        .await
        .map_err(|_| refused())?;
    let record = last
        .as_ref()
        .and_then(|m| ClaimRecord::decode(&m.payload).ok());
    let from_key = if claims::remembers_not(&submission.wanted, record.as_ref()) {
        claims::answer_from_key(&edge.js, &submission.wanted)
            .await
            .map_err(|_| refused())?
    } else {
        None
    };
    let answer = from_key.or_else(|| claims::relate(&submission.wanted, record.as_ref()));
    match answer {
        Some(Claimed::Replay(claim)) => Ok(Some(claim)),
        _ => Err(refused()),
    }
}

/// Seals the personal data, builds the `RegistrationSubmitted` event and appends it and the
/// registration's own key with the citizen's claim (or learns how an existing claim answers this request).
async fn claim(
    edge: &Edge,
    submission: Submission,
    ticket: Option<&streams::waiting_room::Ticket>,
) -> Result<Claimed, EdgeError> {
    let Submission {
        registration,
        citizen_key,
        wanted,
    } = submission;
    let id = wanted.registration_id.clone();
    let personal = PersonalData {
        national_id: registration.national_id,
        full_name: registration.full_name,
        birth_date: registration.birth_date,
        email: registration.email,
        phone: registration.phone,
        attributes: registration.attributes,
    };
    // Under a key of its own, stored beside it, so that it can be erased (docs/retention.md).
    let (sealed, own_key) = edge.keys.seal_own(&id, &personal);
    let event = Event::RegistrationSubmitted(RegistrationSubmitted {
        registration_id: id.clone(),
        slot: registration.slot.clone(),
        citizen_key: citizen_key.clone(),
        request_hash: wanted.request_hash.clone(),
        language: registration.language,
        personal: sealed,
    });
    let envelope = Envelope::new(id.to_string(), event);
    let subject = subjects::intake(&registration.slot.region, IntakeKind::Submitted);
    timed(
        edge,
        claims::claim_and_append(
            &edge.appender,
            &edge.js,
            &citizen_key,
            wanted,
            vec![
                streams::seals::message(&id, own_key),
                Outgoing::event(subject, &envelope),
            ],
            ticket.map(|t| ticket_use(t, &id)),
        ),
    )
    .await
    .map_err(|err| {
        // A timeout leaves the outcome unknown: a retry of the same request is answered from
        // the claim if the write did land, so it is never accepted twice.
        tracing::warn!(registration_id = %id, error = %err, "Append failed; answering 503.");
        EdgeError::from_append(&err)
    })
}

/// The record of `ticket`'s one use: the registration it admitted.
fn ticket_use(ticket: &streams::waiting_room::Ticket, id: &RegistrationId) -> Outgoing {
    Outgoing {
        subject: subjects::ticket(&ticket.id),
        headers: Default::default(),
        payload: serde_json::to_vec(&json!({
            "registration_id": id,
            "region": ticket.region,
            "place_ms": ticket.place.ms,
        }))
        .expect("a ticket's use serializes")
        .into(),
    }
}

/// `POST /v1/queue`: a ticket for a region's waiting room, with its position and expected
/// wait (or `active: false` when the region's room is off: submit directly). Writes nothing
/// durable.
pub async fn take_ticket(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_address(&edge, &req)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let region = validate::parse_queue_request(&body).map_err(EdgeError::Invalid)?;
        if !edge.windows.known() {
            return Err(EdgeError::Unavailable("the list of registration windows"));
        }
        if !edge.windows.is_configured(&region) {
            return Err(EdgeError::Invalid(FieldError::unknown_region(&region)));
        }
        if !edge.door.known() {
            return Err(EdgeError::Unavailable("the list of waiting rooms"));
        }
        let room = edge.door.rooms.get(&region);
        if !room.is_on() {
            return Ok(room_off(&region));
        }
        check_address_with(&edge, &req, edge.per_ticket_address.as_ref())?;
        let opens = room.config.as_ref().and_then(|c| c.opens_ms);
        let ticket = edge
            .door
            .issue(&region, Utc::now().timestamp_millis(), opens);
        edge.metrics
            .tickets
            .with_label_values(&[region.as_str()])
            .inc();
        Ok(ticket_view(&edge, &room, &ticket))
    }
    .await;
    count(&edge, "queue", result)
}

/// `GET /v1/queue/{ticket}`: where a ticket stands.
pub async fn ticket_status(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    let result = async {
        check_address(&edge, &req)?;
        let text = req.match_info().get("ticket").unwrap_or_default();
        let ticket = crate::waiting_room::read(&edge.keys, text)?;
        if !edge.door.known() {
            return Err(EdgeError::Unavailable("the list of waiting rooms"));
        }
        let room = edge.door.rooms.get(&ticket.region);
        if !room.is_on() {
            return Ok(room_off(&ticket.region));
        }
        Ok(ticket_view(&edge, &room, &ticket))
    }
    .await;
    count(&edge, "queue_status", result)
}

/// The answer for a region whose waiting room is off.
fn room_off(region: &streams::model::Region) -> HttpResponse {
    json_response(StatusCode::OK, &json!({"region": region, "active": false}))
}

/// A ticket, where it stands and when to ask again (`Retry-After` while it waits).
fn ticket_view(
    edge: &Edge,
    room: &streams::waiting_room::Room,
    ticket: &streams::waiting_room::Ticket,
) -> HttpResponse {
    use streams::waiting_room::Admission;
    let standing = crate::waiting_room::Door::standing(room, ticket);
    let state = match standing.admission {
        Admission::Admitted => "admitted",
        Admission::Waiting => "waiting",
        Admission::Expired => "expired",
    };
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "region": ticket.region,
            "active": true,
            "ticket": ticket.encode(&edge.keys),
            "state": state,
            "position": standing.ahead,
            "estimated_wait_seconds": standing.wait.as_secs(),
            "poll_after_seconds": standing.poll_after.as_secs(),
            "taken_at": chrono::DateTime::from_timestamp_millis(ticket.arrived_ms),
        }),
    );
    if standing.admission == Admission::Waiting {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(standing.poll_after.as_secs()),
        );
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// `PUT /v1/admin/queues/{region}`: turns a region's waiting room on or off and sets its
/// admission rate, as a cap on what the pipeline's headroom allows (`pacing: "headroom"`, the
/// default) or exactly (`"fixed"`), and optionally when its line opens (by default its
/// window's opening).
pub async fn put_queue(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let region = validate::parse_region(req.match_info().get("region").unwrap_or(""))
            .map_err(EdgeError::Invalid)?;
        let settings = validate::parse_queue_settings(&body).map_err(EdgeError::Invalid)?;
        let opens = settings.opens_at.or_else(|| edge.windows.opens(&region));
        let config = streams::waiting_room::RoomConfig {
            enabled: settings.enabled,
            rate: settings.rate,
            opens_ms: opens.map(|t| t.timestamp_millis()),
            pacing: settings.pacing,
        };
        edge.door.configure(&region, &config).await?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "region": region,
                "enabled": config.enabled,
                "rate": config.rate,
                "pacing": config.pacing.as_str(),
                "opens_at": opens,
            }),
        ))
    }
    .await;
    count(&edge, "queue_settings", result)
}

/// `GET /v1/admin/queues`: every waiting room, its settings, length, the rate it admits at now
/// (and what holds it below the operator's) and expected wait.
pub async fn get_queues(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    let result = async {
        check_admin(&req, &edge)?;
        if !edge.door.known() {
            return Err(EdgeError::Unavailable("the list of waiting rooms"));
        }
        let queues: Vec<_> = edge
            .door
            .rooms
            .all()
            .into_iter()
            .filter_map(|(region, room)| {
                let config = room.config.clone()?;
                let waiting = room.waiting();
                let admitting = room.rate();
                Some(json!({
                    "region": region,
                    "enabled": config.enabled,
                    "rate": config.rate,
                    "pacing": config.pacing.as_str(),
                    "opens_at": config.opens_ms.and_then(chrono::DateTime::from_timestamp_millis),
                    "waiting": waiting.round() as u64,
                    "admitted": room.admitted().round() as u64,
                    "admitting": (admitting * 10.0).round() / 10.0,
                    "limited_by": room.serving.as_ref().and_then(|s| s.limited_by.clone()),
                    "expected_wait_seconds": (waiting / admitting.max(1.0)).round() as u64,
                    "serving_up_to": room
                        .serving
                        .as_ref()
                        .and_then(|s| chrono::DateTime::from_timestamp_millis(s.serving.ms)),
                }))
            })
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "queues": queues })))
    }
    .await;
    count(&edge, "queues", result)
}

/// The `202` of an accepted (or replayed) registration.
fn accepted(edge: &Edge, id: &RegistrationId) -> HttpResponse {
    json_response(
        StatusCode::ACCEPTED,
        &json!({
            "registration_id": id,
            "token": edge.keys.token(id),
            "status_url": status_url(edge, id),
        }),
    )
}

/// `DELETE /v1/registrations/{id}`
pub async fn cancel(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    let result = cancel_inner(&req, &edge).await;
    count(&edge, "cancel", result)
}

/// Where the citizen follows their registration: the read API, not this edge.
fn status_url(edge: &Edge, id: &RegistrationId) -> String {
    format!("{}/v1/registrations/{id}", edge.settings.status_base_url)
}

async fn cancel_inner(req: &HttpRequest, edge: &Edge) -> Result<HttpResponse, EdgeError> {
    check_address(edge, req)?;
    let id = req.match_info().get("id").unwrap_or_default();
    let id = RegistrationId::parse(id).map_err(|_| EdgeError::NotFound)?;
    let token = bearer(req).ok_or(EdgeError::NotFound)?;
    if !edge.keys.verify_token(&id, token) {
        return Err(EdgeError::NotFound);
    }
    let envelope = Envelope::new(
        id.to_string(),
        Event::CancellationRequested(CancellationRequested {
            registration_id: id.clone(),
        }),
    );
    let subject = subjects::intake(&id.region(), IntakeKind::Cancel);
    append(edge, Outgoing::event(subject, &envelope)).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "registration_id": id,
            "status": "cancellation_requested",
            "status_url": status_url(edge, &id),
        }),
    ))
}

fn check_admin(req: &HttpRequest, edge: &Edge) -> Result<(), EdgeError> {
    streams::http::check_operator(req, edge.settings.admin_token.expose()).map_err(|refusal| {
        match refusal {
            OperatorRefusal::Missing => EdgeError::Unauthorized,
            OperatorRefusal::Wrong => EdgeError::Forbidden,
        }
    })
}

/// `PUT /v1/admin/capacity`
pub async fn put_capacity(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let request = validate::parse_capacity(&body).map_err(EdgeError::Invalid)?;
        let slot = &request.slot;
        if edge.settings.calendar.slot_is_over(slot, Utc::now()) {
            return Err(EdgeError::Invalid(FieldError::day_over(
                slot.date,
                edge.settings.calendar.zone(&slot.region),
            )));
        }
        let event = Event::CapacitySet(CapacitySet {
            slot: request.slot.clone(),
            capacity: request.capacity,
        });
        let envelope = Envelope::new(format!("admin-{}", uuid::Uuid::now_v7()), event);
        let subject = subjects::intake(&request.slot.region, IntakeKind::Capacity);
        append(&edge, Outgoing::event(subject, &envelope)).await?;
        // Read-your-writes on this replica; others follow the log within milliseconds.
        edge.windows.configure(&request.slot.region);
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
    count(&edge, "capacity", result)
}

/// `PUT /v1/admin/windows`
pub async fn put_window(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let request = validate::parse_window(&body).map_err(EdgeError::Invalid)?;
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
        append(&edge, Outgoing::event(subject, &envelope)).await?;
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
    count(&edge, "windows", result)
}

/// `POST /v1/admin/reviews/{id}`: an operator's decision on a registration in manual review
/// (approve, reject with a reason, or requeue for the registry), recorded with who and why.
/// `409 not_in_review`, with nothing appended, unless the reviews bucket lists the
/// registration as in review. `202`: the decision is in the log; it takes effect only if the
/// registration is still in manual review when the reservation processor reads it (the
/// registry's late answer may have come first; the status shows the result).
pub async fn post_review(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let id = RegistrationId::parse(req.match_info().get("id").unwrap_or_default())
            .map_err(|_| EdgeError::NotFound)?;
        let review = validate::parse_review(&body).map_err(EdgeError::Invalid)?;
        if !in_review(&edge, &id).await? {
            return Err(EdgeError::NotInReview);
        }
        let registration_id = id.clone();
        let (event, decision) = match review.decision {
            validate::ReviewDecision::Approve => (
                Event::VerificationPassed(VerificationPassed {
                    registration_id,
                    reviewer: Some(review.reviewer),
                }),
                "approve",
            ),
            validate::ReviewDecision::Reject(reason) => (
                Event::VerificationFailed(VerificationFailed {
                    registration_id,
                    reason,
                    reviewer: Some(review.reviewer),
                }),
                "reject",
            ),
            validate::ReviewDecision::Requeue => (
                Event::ReviewRequeued(ReviewRequeued {
                    registration_id,
                    reviewer: review.reviewer,
                }),
                "requeue",
            ),
        };
        let envelope = Envelope::new(id.to_string(), event);
        let subject = subjects::intake(&id.region(), IntakeKind::Review);
        append(&edge, Outgoing::event(subject, &envelope)).await?;
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "registration_id": id,
                "decision": decision,
                "status_url": status_url(&edge, &id),
            }),
        ))
    }
    .await;
    count(&edge, "review", result)
}

/// Whether the reservation processor lists `id` as in manual review.
async fn in_review(edge: &Edge, id: &RegistrationId) -> Result<bool, EdgeError> {
    let listed = async {
        let store = edge
            .js
            .get_key_value(subjects::REVIEWS_BUCKET)
            .await
            .context("Failed to open the reviews bucket")?;
        let entry = store
            .get(subjects::review_key(id))
            .await
            .context("Failed to read the reviews bucket")?;
        anyhow::Ok(entry.is_some())
    };
    listed.await.map_err(|err| {
        tracing::warn!(registration_id = %id, error = %format!("{err:#}"), "Cannot tell whether a registration is in review; answering 503.");
        EdgeError::Unavailable("the list of registrations in review")
    })
}

/// `POST /v1/admin/notifications/redrive`: deliver a dead-lettered message again (on its
/// channel, under its notification id, so a provider that got it after all keeps one).
pub async fn post_redrive(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let request = validate::parse_redrive(&body).map_err(EdgeError::Invalid)?;
        let id = request.registration_id.clone();
        let envelope = Envelope::new(
            id.to_string(),
            Event::NotificationRedriveRequested(NotificationRedriveRequested {
                registration_id: id.clone(),
                decision_seq: request.decision_seq,
                channel: request.channel.into(),
                reviewer: request.reviewer,
            }),
        );
        let subject = subjects::intake(&id.region(), IntakeKind::Redrive);
        append(&edge, Outgoing::event(subject, &envelope)).await?;
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({
                "registration_id": id,
                "decision_seq": request.decision_seq,
                "channel": request.channel,
            }),
        ))
    }
    .await;
    count(&edge, "redrive", result)
}

/// `POST /v1/admin/erasures`: erase a citizen's personal data on their request (contract
/// 1.2). Every registration their claim remembers gets an `ErasureRequested`; the reservation
/// processor ends one still active (as a cancellation, its place going to the next in line),
/// and the notification processor destroys each registration's own key, after which nothing
/// opens its sealed data: no store, replay or rebuild (docs/retention.md). `202` with the
/// registrations; `404` when the national id has none.
pub async fn post_erasure(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_admin(&req, &edge)?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let request = validate::parse_erasure(&body, edge.settings.national_id_rule)
            .map_err(EdgeError::Invalid)?;
        let citizen_key = edge.keys.citizen_key(&request.national_id);
        let last = timed(
            &edge,
            streams::claims::last_from_leader(&edge.js, &citizen_key),
        )
        .await
        .map_err(|err| EdgeError::from_append(&err))?
        .ok_or(EdgeError::NotFound)?;
        let record = streams::claims::ClaimRecord::decode(&last.payload).map_err(|err| {
            tracing::error!(error = %err, "A claim record is unreadable; nothing was erased.");
            EdgeError::Unavailable("the citizen's claim")
        })?;
        let registrations: Vec<RegistrationId> = record
            .history()
            .into_iter()
            .map(|claim| claim.registration_id)
            .collect();
        for id in &registrations {
            let envelope = Envelope::new(
                id.to_string(),
                Event::ErasureRequested(ErasureRequested {
                    registration_id: id.clone(),
                    reviewer: request.reviewer.clone(),
                }),
            );
            let subject = subjects::intake(&id.region(), IntakeKind::Erasure);
            append(&edge, Outgoing::event(subject, &envelope)).await?;
        }
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({ "registrations": registrations }),
        ))
    }
    .await;
    count(&edge, "erasure", result)
}

/// The one answer of `POST /v1/registrations/recover`, whoever asks.
const RECOVERY_ANSWER: &str =
    "if a registration matches these details, a fresh link is on its way to the contact on record";

/// `POST /v1/registrations/recover` with `{"national_id", "birth_date"}`: a citizen who lost
/// their link gets a fresh one, sent only to the contact on record. The answer is the same
/// `202`, and comes after the same work, whether or not such a registration exists: the claim
/// is looked up (and the request appended) by the recovery worker after the answer
/// ([`crate::recovery`]), so neither the answer nor its timing tells anybody who is
/// registered. Limited per client address (`REG_RECOVERIES_PER_ADDRESS_PER_MINUTE`) and per
/// citizen (`REG_RECOVERIES_PER_HOUR`).
pub async fn recover(req: HttpRequest, payload: Payload, edge: State<Edge>) -> HttpResponse {
    let result = async {
        let body = read_body(declared_len(&req), payload, edge.settings.max_body_bytes).await?;
        check_address_with(&edge, &req, edge.per_recovery_address.as_ref())?;
        if !is_json(&req) {
            return Err(EdgeError::NotJson);
        }
        let request = validate::parse_recovery(&body, edge.settings.national_id_rule)
            .map_err(EdgeError::Invalid)?;
        let citizen_key = edge.keys.citizen_key(&request.national_id);
        if let Some(limiter) = &edge.per_recovery
            && let Err(not_until) = limiter.check_key(&citizen_key)
        {
            return Err(EdgeError::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }
        if !edge.recoveries.request(citizen_key) {
            edge.metrics.recoveries_dropped.inc();
            tracing::warn!("The recovery queue is full; a recovery request was dropped.");
        }
        Ok(json_response(
            StatusCode::ACCEPTED,
            &json!({ "status": "accepted", "message": RECOVERY_ANSWER }),
        ))
    }
    .await;
    count(&edge, "recover", result)
}

/// `GET /readyz`: NATS connected, the intake stream answering, the windows known and no
/// reader stalled.
pub async fn readyz(edge: State<Edge>) -> HttpResponse {
    let connected = edge.client.connection_state() == async_nats::connection::State::Connected;
    let stream_ok = connected
        && tokio::time::timeout(
            std::time::Duration::from_secs(1),
            edge.js.get_stream_no_info(subjects::INTAKE_STREAM),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    let mut checks = vec![
        ("nats".to_owned(), connected),
        ("jetstream".to_owned(), stream_ok),
        ("registration windows".to_owned(), edge.windows.known()),
        ("waiting rooms".to_owned(), edge.door.known()),
    ];
    checks.extend(edge.metrics.health.checks());
    streams::http::readiness(&checks)
}

/// `GET /metrics`
pub async fn metrics(edge: State<Edge>) -> HttpResponse {
    if let Some(open) = &edge.open_submissions {
        let bound = edge.settings.max_open_submissions;
        edge.metrics
            .open_submissions
            .set(bound.saturating_sub(open.available_permits()) as i64);
    }
    for (region, room) in edge.door.rooms.all() {
        let Some(config) = &room.config else { continue };
        let waiting = room.waiting();
        let admitting = room.rate();
        for (figure, value) in [
            ("waiting", waiting.round()),
            ("rate", f64::from(config.rate)),
            ("admitting", admitting),
            (
                "expected_wait_seconds",
                (waiting / admitting.max(1.0)).round(),
            ),
            ("admitted", room.admitted().round()),
            ("on", if config.enabled { 1.0 } else { 0.0 }),
        ] {
            edge.metrics
                .rooms
                .with_label_values(&[region.as_str(), figure])
                .set(value);
        }
    }
    streams::http::metrics(&edge.metrics.registry)
}

/// The edge's OpenAPI document (`docs/openapi/ingest.json`), served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi/ingest.json");

/// `GET /openapi.json`
pub async fn openapi() -> HttpResponse {
    streams::http::openapi(OPENAPI)
}

/// The routes of the edge.
/// Each is described in `docs/openapi/ingest.json`: change the two together (the
/// `openapi` test checks every documented route exists; it cannot list these).
pub fn configure(cfg: &mut web::ServiceConfig) {
    crate::page::configure(cfg);
    cfg.route("/v1/registrations", web::post().to(submit))
        .route("/v1/registrations/recover", web::post().to(recover))
        .route("/v1/registrations/{id}", web::delete().to(cancel))
        .route("/v1/queue", web::post().to(take_ticket))
        .route("/v1/queue/{ticket}", web::get().to(ticket_status))
        .route("/v1/admin/queues", web::get().to(get_queues))
        .route("/v1/admin/queues/{region}", web::put().to(put_queue))
        .route("/v1/admin/capacity", web::put().to(put_capacity))
        .route("/v1/admin/windows", web::put().to(put_window))
        .route("/v1/admin/reviews/{id}", web::post().to(post_review))
        .route("/v1/admin/erasures", web::post().to(post_erasure))
        .route(
            "/v1/admin/notifications/redrive",
            web::post().to(post_redrive),
        )
        .route("/healthz", web::get().to(streams::http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
    // Last: another method on a documented path is a 405 with Allow.
    streams::http::method_not_allowed(cfg, OPENAPI);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_untrusted_forwarded_address_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let balancer = [ip("10.0.0.1"), ip("10.0.0.2")];
        // No trusted proxy: the header is ignored, whatever it says.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &[]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &balancer),
            ip("203.0.113.9"),
            "a client that is not a proxy cannot choose its bucket"
        );
        // Through two proxies: the entry left of the trusted ones; a forged prefix is ignored.
        assert_eq!(
            client_address(
                ip("10.0.0.1"),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.2"),
                &balancer
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), None, &balancer),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), Some("garbage"), &balancer),
            ip("10.0.0.1")
        );
    }
}
