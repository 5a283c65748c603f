//! The read API: availability from a moka cache, registration status checked against its
//! token, health and metrics.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use moka::future::Cache;
use ntex::http::header::{self, HeaderValue};
use ntex::http::{Method, StatusCode};
use ntex::web::{self, HttpRequest, HttpResponse, types::State};
use serde::Serialize;
use streams::crypto::{Keys, sha256_hex};
use streams::http::json as json_response;
use streams::model::{Location, Region, RegistrationId, Status};

use crate::error::ReadError;
use crate::metrics::Metrics;
use crate::slots::{self, SlotTable};
use crate::smart::{self, Publication};
use crate::store::{Registration, Store};

/// An availability query, normalised: the cache key. Only parsed values go in, so random
/// query parameters cannot multiply cache entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AvailabilityKey {
    pub(crate) region: Option<Region>,
    pub(crate) location: Option<Location>,
    pub(crate) date: Option<NaiveDate>,
}

/// A cached availability answer: the body and its entity tag.
#[derive(Debug)]
pub struct Rendered {
    body: String,
    etag: String,
}

/// The answer to a query that matches no slot: the same body (`[]`) and entity tag whatever
/// the query, so such queries (a mistyped place, a date long past, a scanner's random
/// filters) take no cache entry and cannot evict the answers readers actually share.
fn empty_answer() -> Arc<Rendered> {
    static EMPTY: std::sync::OnceLock<Arc<Rendered>> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let body = "[]".to_owned();
            let etag = entity_tag(&body);
            Arc::new(Rendered { body, etag })
        })
        .clone()
}

/// The SMART Scheduling Links publication as served: the three files and the manifest, each
/// with its entity tag.
#[derive(Debug)]
pub struct Published {
    files: smart::Files,
    file_etags: [String; 3],
    manifest: Rendered,
}

/// When the current publication's content was first seen: (fingerprint, transaction time).
type Since = Arc<std::sync::Mutex<Option<(String, String)>>>;

/// Shared by every worker thread of the read API.
#[derive(Clone)]
pub struct Reader {
    /// The projection database.
    pub store: Store,
    /// Availability answers by query and table generation, about one second old at most.
    pub cache: Cache<(AvailabilityKey, u64), Arc<Rendered>>,
    /// The availability table, loaded once per cache period.
    pub slots: Cache<(), Arc<SlotTable>>,
    /// The last table loaded and where it was read up to: the next load reads only what
    /// changed since ([`crate::slots`]). Held for the whole of a load, so loads never
    /// overlap (two from one cursor would make two tables of one generation).
    loaded: Arc<tokio::sync::Mutex<Option<slots::Loaded>>>,
    /// The cache period: [`keep_slot_table`] reloads the table twice in each.
    period: Duration,
    /// Keys for checking registration tokens.
    pub keys: Keys,
    /// Metrics.
    pub metrics: Metrics,
    /// NATS connection, for readiness.
    pub client: async_nats::Client,
    /// The operators' bearer token (the manual-review list).
    pub admin_token: String,
    /// Rebuilds of the projections operators started.
    pub rebuilds: crate::rebuild::Rebuilds,
    /// Origins whose pages may read availability and status (CORS, see [`crate::cors`]).
    pub cors_origins: Arc<Vec<String>>,
    /// Where the SMART Scheduling Links publication points.
    pub publication: Publication,
    /// The publication, as old as an availability answer at most (one entry).
    pub published: Cache<(), Arc<Published>>,
    /// When the publication's content last changed.
    published_since: Since,
    /// Each region's time zone: no slot whose day is over is listed.
    pub calendar: streams::calendar::Calendar,
}

/// What the read API is configured with, besides its connections.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Availability cache lifetime (the staleness bound).
    pub ttl: Duration,
    /// The operators' bearer token.
    pub admin_token: String,
    /// Origins whose pages may read availability and status.
    pub cors_origins: Vec<String>,
    /// Where the SMART Scheduling Links publication points.
    pub publication: Publication,
    /// Each region's time zone (no slot whose day is over is listed).
    pub calendar: streams::calendar::Calendar,
}

impl Reader {
    /// Builds the reader with a cache whose entries live `settings.ttl`.
    pub fn new(
        store: Store,
        keys: Keys,
        metrics: Metrics,
        client: async_nats::Client,
        rebuilds: crate::rebuild::Rebuilds,
        settings: ReaderSettings,
    ) -> Self {
        let ReaderSettings {
            ttl,
            admin_token,
            cors_origins,
            publication,
            calendar,
        } = settings;
        Reader {
            store,
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            slots: Cache::builder().max_capacity(1).time_to_live(ttl).build(),
            loaded: Default::default(),
            period: ttl,
            keys,
            metrics,
            client,
            admin_token,
            rebuilds,
            cors_origins: Arc::new(cors_origins),
            publication,
            calendar,
            published: Cache::builder().max_capacity(1).time_to_live(ttl).build(),
            published_since: Since::default(),
        }
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn parse_key(req: &HttpRequest) -> Result<AvailabilityKey, ReadError> {
    let query = req.uri().query().unwrap_or("");
    let invalid =
        |field: &'static str| move |message: String| ReadError::Invalid { field, message };
    let nonempty = |name| query_param(query, name).filter(|v| !v.is_empty());
    Ok(AvailabilityKey {
        region: nonempty("region")
            .map(Region::parse)
            .transpose()
            .map_err(|e| invalid("region")(e.0))?,
        location: nonempty("location")
            .map(Location::parse)
            .transpose()
            .map_err(|e| invalid("location")(e.0))?,
        date: nonempty("date")
            // Exactly YYYY-MM-DD, as the edge takes dates: chrono alone also reads `2027-3-1`.
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .ok()
                    .filter(|_| d.len() == 10)
                    .ok_or(())
            })
            .transpose()
            .map_err(|_| invalid("date")("date must be YYYY-MM-DD".into()))?,
    })
}

/// `GET /v1/availability`, readable by the citizens' page ([`crate::cors`]).
pub async fn availability(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    let response = answer(availability_inner(&req, &reader).await);
    crate::cors::allow(&req, &reader, response)
}

async fn availability_inner(
    req: &HttpRequest,
    reader: &State<Reader>,
) -> Result<HttpResponse, ReadError> {
    reader.metrics.availability_requests.inc();
    let key = parse_key(req)?;
    let rendered = rendered_availability(reader, key).await.map_err(|err| {
        tracing::warn!(error = %err, "Availability could not be loaded.");
        ReadError::NotLoaded("availability")
    })?;
    Ok(cacheable(
        req,
        &rendered.body,
        &rendered.etag,
        "application/json",
        "public, max-age=1",
    ))
}

/// The answer to a request, or its error's.
fn answer(result: Result<HttpResponse, ReadError>) -> HttpResponse {
    result.unwrap_or_else(|err| err.response())
}

/// A cacheable answer: `304` when `If-None-Match` names `etag` (or is `*`), the body
/// otherwise; `ETag` and `Cache-Control` on both.
fn cacheable(
    req: &HttpRequest,
    body: &str,
    etag: &str,
    content_type: &str,
    cache_control: &'static str,
) -> HttpResponse {
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type(content_type)
            .body(body.to_owned())
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is a valid header"),
    );
    response
}

/// The answer to one availability query: from the cache, or filtered from the slot table
/// (itself loaded at most once per period, one load however many readers ask at once) and
/// rendered once per table generation.
async fn rendered_availability(
    reader: &Reader,
    key: AvailabilityKey,
) -> Result<Arc<Rendered>, Arc<anyhow::Error>> {
    let table = slot_table(reader).await?;
    let cache_key = (key, table.generation());
    if let Some(rendered) = reader.cache.get(&cache_key).await {
        return Ok(rendered);
    }
    let rows = table.filter(&cache_key.0);
    if rows.is_empty() {
        return Ok(empty_answer());
    }
    // Rendered inside the cache's load: concurrent misses of one key render it once.
    let rendered = reader
        .cache
        .get_with(cache_key, async {
            let body = serde_json::to_string(&rows).expect("JSON values serialize");
            let etag = entity_tag(&body);
            Arc::new(Rendered { body, etag })
        })
        .await;
    Ok(rendered)
}

/// The slot table: the one [`keep_slot_table`] put in the cache within the period, so a
/// reader never waits for a load; or, before the first load or while loads fail, loaded
/// here (one load however many readers ask at once). Availability answers and the SMART
/// publication come from it.
async fn slot_table(reader: &Reader) -> Result<Arc<SlotTable>, Arc<anyhow::Error>> {
    reader.slots.try_get_with((), load_slot_table(reader)).await
}

/// Loads the slot table by the changes since the last load ([`crate::slots`]).
async fn load_slot_table(reader: &Reader) -> anyhow::Result<Arc<SlotTable>> {
    let mut loaded = reader.loaded.lock().await;
    reader.metrics.availability_loads.inc();
    let (next, rows_read) = slots::load(
        &reader.store,
        loaded.as_ref(),
        &reader.calendar,
        chrono::Utc::now(),
    )
    .await?;
    reader
        .metrics
        .availability_rows_read
        .inc_by(rows_read as u64);
    let table = next.table.clone();
    *loaded = Some(next);
    Ok(table)
}

/// Keeps the slot table in the cache so that no reader waits for a load: reloads it twice
/// per cache period (by changes, so a quiet period costs about a millisecond and a busy one
/// the same rows in two loads) and puts each table in the cache, whose entries live one
/// period: while loads take less than half a period, readers always find one, half a period
/// and a load old (a period and a load at most). Runs on the runtime it is spawned on (the
/// workers', off the HTTP threads) until `shutdown`.
pub async fn keep_slot_table(reader: Reader, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval((reader.period / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match load_slot_table(&reader).await {
            Ok(table) => {
                reader.slots.insert((), table).await;
                if std::mem::take(&mut failing) {
                    tracing::info!("The availability table loads again.");
                }
            }
            // Said once when loads start failing, not twice a second while they do.
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "The availability table could not be loaded; readers load it themselves until it can."
                );
            }
            Err(_) => {}
        }
    }
}

fn entity_tag(body: &str) -> String {
    format!("\"{}\"", &sha256_hex(body.as_bytes())[..32])
}

/// How long a vaccine finder should wait before polling again (the spec's hint; the data
/// itself is about a second old).
const SMART_CACHE_CONTROL: &str = "public, max-age=60";

/// The publication, from the cache (one load however many pollers ask at once).
async fn published(reader: &Reader) -> Result<Arc<Published>, ReadError> {
    let loader = {
        let reader = reader.clone();
        async move {
            let table = slot_table(&reader)
                .await
                .map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let files = smart::render(table.rows(), &reader.publication);
            let since = {
                let mut since = reader.published_since.lock().expect("lock");
                match &*since {
                    Some((fingerprint, time)) if *fingerprint == files.fingerprint => time.clone(),
                    _ => {
                        let time = smart::now();
                        *since = Some((files.fingerprint.clone(), time.clone()));
                        time
                    }
                }
            };
            let manifest = serde_json::to_string(&smart::manifest(&reader.publication, &since))?;
            let file_etags = smart::FILES.map(|(kind, _)| entity_tag(files.get(kind)));
            anyhow::Ok(Arc::new(Published {
                manifest: Rendered {
                    etag: entity_tag(&manifest),
                    body: manifest,
                },
                file_etags,
                files,
            }))
        }
    };
    reader
        .published
        .try_get_with((), loader)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "The SMART publication could not be loaded.");
            ReadError::NotLoaded("the publication")
        })
}

/// `GET /$bulk-publish`: the SMART Scheduling Links manifest.
pub async fn bulk_publish(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    answer(published(&reader).await.map(|p| {
        cacheable(
            &req,
            &p.manifest.body,
            &p.manifest.etag,
            "application/json",
            SMART_CACHE_CONTROL,
        )
    }))
}

async fn smart_file(req: &HttpRequest, reader: &Reader, index: usize) -> HttpResponse {
    answer(published(reader).await.map(|p| {
        cacheable(
            req,
            p.files.get(smart::FILES[index].0),
            &p.file_etags[index],
            "application/fhir+ndjson",
            SMART_CACHE_CONTROL,
        )
    }))
}

/// `GET /smart/locations.ndjson`: FHIR `Location`s, one per line.
pub async fn smart_locations(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    smart_file(&req, &reader, 0).await
}

/// `GET /smart/schedules.ndjson`: FHIR `Schedule`s, one per line.
pub async fn smart_schedules(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    smart_file(&req, &reader, 1).await
}

/// `GET /smart/slots.ndjson`: FHIR `Slot`s, one per line.
pub async fn smart_slots(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    smart_file(&req, &reader, 2).await
}

/// `GET /v1/registrations/{id}`'s answer: no personal data.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct StatusAnswer {
    registration_id: RegistrationId,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    region: String,
    /// The slot and the time of the last decision, known from the first decision on.
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
}

impl StatusAnswer {
    /// A registration the projection has.
    fn projected(registration_id: RegistrationId, row: Registration) -> Self {
        StatusAnswer {
            registration_id,
            status: row.status,
            reason: row.reason,
            position: row.position,
            region: row.region,
            location: Some(row.location),
            date: Some(row.date),
            updated_at: Some(row.updated_at),
        }
    }

    /// A registration the projection does not have yet: a valid token is only ever handed
    /// out with a 202, so it exists, and until its first decision it is `received`.
    fn received(registration_id: RegistrationId) -> Self {
        StatusAnswer {
            region: registration_id.region().to_string(),
            registration_id,
            status: Status::Received,
            reason: None,
            position: None,
            location: None,
            date: None,
            updated_at: None,
        }
    }
}

/// `GET /v1/registrations/{id}` with `Authorization: Bearer <token>`. Unknown id, wrong or
/// missing token: the same `404`. Readable by the citizens' page ([`crate::cors`]).
pub async fn registration(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    let response = answer(registration_inner(&req, &reader).await);
    crate::cors::allow(&req, &reader, response)
}

async fn registration_inner(
    req: &HttpRequest,
    reader: &State<Reader>,
) -> Result<HttpResponse, ReadError> {
    let id = RegistrationId::parse(req.match_info().get("id").unwrap_or_default())
        .map_err(|_| ReadError::NotFound)?;
    let token = streams::http::bearer(req);
    if !token.is_some_and(|t| reader.keys.verify_token(&id, t)) {
        return Err(ReadError::NotFound);
    }
    let row = reader
        .store
        .registration(id.as_str())
        .await
        .map_err(|err| {
            tracing::warn!(registration_id = %id, error = %err, "Status could not be read.");
            ReadError::Unavailable("status")
        })?;
    let body = match row {
        Some(row) => StatusAnswer::projected(id, row),
        None => StatusAnswer::received(id),
    };
    Ok(no_store(json_response(StatusCode::OK, &body)))
}

/// Lets an operator's request through, or refuses it (`401`, `403`).
fn operator(req: &HttpRequest, reader: &Reader) -> Result<(), ReadError> {
    Ok(streams::http::check_operator(req, &reader.admin_token)?)
}

/// `GET /v1/admin/reviews?region=`: the registrations waiting for an operator's decision
/// (manual review), oldest first, at most [`crate::store::MAX_REVIEWS_LISTED`]. Operators
/// only.
pub async fn reviews(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    answer(reviews_inner(&req, &reader).await)
}

async fn reviews_inner(req: &HttpRequest, reader: &Reader) -> Result<HttpResponse, ReadError> {
    operator(req, reader)?;
    let region = query_param(req.query_string(), "region")
        .map(Region::parse)
        .transpose()
        .map_err(|e| ReadError::Invalid {
            field: "region",
            message: e.0,
        })?;
    let rows = reader
        .store
        .reviews(region.as_ref().map(Region::as_str))
        .await;
    listing(rows, "manual reviews")
}

/// `GET /v1/admin/notifications/dead-letters`: the messages that could not be delivered and
/// were not re-driven since, oldest first. Operators only.
pub async fn dead_letters(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    answer(match operator(&req, &reader) {
        Ok(()) => listing(reader.store.dead_letters().await, "dead letters"),
        Err(refused) => Err(refused),
    })
}

/// `POST /v1/admin/rebuilds`: rebuilds every projection from the start of the log into a
/// fresh database while the live ones go on, then compares the two (see
/// [`crate::rebuild`]). `202` with the rebuild's status; `409` while another runs.
/// Operators only.
pub async fn start_rebuild(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    answer(operator(&req, &reader).and_then(|()| {
        let status = reader
            .rebuilds
            .start(&reader.store)
            .map_err(ReadError::RebuildRunning)?;
        let location = format!("/v1/admin/rebuilds/{}", status.rebuild_id);
        let mut response = no_store(json_response(StatusCode::ACCEPTED, &status));
        if let Ok(location) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Ok(response)
    }))
}

/// `GET /v1/admin/rebuilds/{id}`: a rebuild's progress and, once done, its comparison with
/// the live projections. Operators only.
pub async fn rebuild_status(
    req: HttpRequest,
    id: web::types::Path<String>,
    reader: State<Reader>,
) -> HttpResponse {
    answer(operator(&req, &reader).and_then(|()| {
        let status = reader.rebuilds.get(&id).ok_or(ReadError::NoSuchRebuild)?;
        Ok(no_store(json_response(StatusCode::OK, &status)))
    }))
}

fn no_store(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An operator's listing: never cached; `503` when the store cannot answer.
fn listing<T: Serialize>(
    rows: anyhow::Result<Vec<T>>,
    what: &str,
) -> Result<HttpResponse, ReadError> {
    let rows = rows.map_err(|err| {
        tracing::warn!(error = %format!("{err:#}"), list = what, "An operator's list could not be read.");
        ReadError::Unavailable("the list")
    })?;
    Ok(no_store(json_response(StatusCode::OK, &rows)))
}

/// `GET /readyz`: NATS connected, SurrealDB answering and no projection worker stalled.
pub async fn readyz(reader: State<Reader>) -> HttpResponse {
    let nats = reader.client.connection_state() == async_nats::connection::State::Connected;
    let store = reader.store.is_healthy().await;
    let mut checks = vec![("nats".to_owned(), nats), ("surrealdb".to_owned(), store)];
    checks.extend(reader.metrics.health.checks());
    streams::http::readiness(&checks)
}

/// `GET /metrics`
pub async fn metrics(reader: State<Reader>) -> HttpResponse {
    streams::http::metrics(&reader.metrics.registry)
}

/// The read API's OpenAPI document (`docs/openapi/read.json`), served at
/// `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi/read.json");

/// `GET /openapi.json`
pub async fn openapi() -> HttpResponse {
    streams::http::openapi(OPENAPI)
}

/// The routes of the read API.
/// Each is described in `docs/openapi/read.json`: change the two together (the
/// `openapi` test checks every documented route exists; it cannot list these).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/availability", web::get().to(availability))
        .route("/v1/registrations/{id}", web::get().to(registration))
        .route("/v1/admin/rebuilds", web::post().to(start_rebuild))
        .route("/v1/admin/rebuilds/{id}", web::get().to(rebuild_status))
        .route(
            "/v1/availability",
            web::method(Method::OPTIONS).to(crate::cors::preflight),
        )
        .route(
            "/v1/registrations/{id}",
            web::method(Method::OPTIONS).to(crate::cors::preflight),
        )
        .route("/v1/admin/reviews", web::get().to(reviews))
        .route(
            "/v1/admin/notifications/dead-letters",
            web::get().to(dead_letters),
        )
        .route("/healthz", web::get().to(streams::http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi))
        .route(smart::MANIFEST, web::get().to(bulk_publish))
        .route(smart::FILES[0].1, web::get().to(smart_locations))
        .route(smart::FILES[1].1, web::get().to(smart_schedules))
        .route(smart::FILES[2].1, web::get().to(smart_slots));
    // Last: another method on a documented path is a 405 with Allow.
    streams::http::method_not_allowed(cfg, OPENAPI);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status answer has the contract's shape: until the first decision only the id, the
    /// status and the region; after it the slot and the time, and what applies of the reason
    /// and the position.
    #[test]
    fn a_status_answer_names_only_what_is_known() {
        let id = RegistrationId::parse("mazowieckie.0190f3c2a1b27c3e8d4f5a6b7c8d9e0f").unwrap();
        assert_eq!(
            serde_json::to_value(StatusAnswer::received(id.clone())).unwrap(),
            serde_json::json!({"registration_id": id, "status": "received", "region": "mazowieckie"})
        );
        let waiting = Registration {
            status: Status::Waitlisted,
            reason: None,
            position: Some(2),
            region: "mazowieckie".into(),
            location: "narodowy".into(),
            date: "2027-03-01".into(),
            updated_at: "2027-02-01T08:00:00.123Z".into(),
        };
        assert_eq!(
            serde_json::to_value(StatusAnswer::projected(id.clone(), waiting)).unwrap(),
            serde_json::json!({
                "registration_id": id, "status": "waitlisted", "position": 2,
                "region": "mazowieckie", "location": "narodowy", "date": "2027-03-01",
                "updated_at": "2027-02-01T08:00:00.123Z",
            })
        );
    }

    /// A query matching nothing gets the one shared empty answer, the same as rendering an
    /// empty list would give.
    #[test]
    fn the_empty_answer_is_what_rendering_nothing_gives() {
        let empty = empty_answer();
        let rendered = serde_json::to_string(&Vec::<crate::store::Availability>::new()).unwrap();
        assert_eq!(empty.body, rendered);
        assert_eq!(empty.etag, entity_tag(&rendered));
        assert!(Arc::ptr_eq(&empty, &empty_answer()));
    }
}
