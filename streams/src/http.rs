//! HTTP pieces every service shares (all of them serve `/healthz`, `/readyz`, `/metrics`):
//! the contract's error body, a size-capped body reader and the metrics response.

use std::net::TcpListener;

use anyhow::Context as _;
use ntex::http::StatusCode;
use ntex::util::{Bytes, BytesMut};
use ntex::web::{self, App, HttpResponse, types::Payload};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The contract's error body: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    /// Machine-readable code, e.g. `invalid_field`.
    pub code: &'a str,
    /// A sentence for people.
    pub message: &'a str,
    /// The request field concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

/// A JSON error response with the contract's body.
pub fn error(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> HttpResponse {
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message,
            field,
        },
    };
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string(&body).expect("error bodies serialize"))
}

/// [`error`], with `Retry-After` when the client should try again after some seconds: how
/// every service's typed error answers.
pub fn error_retry_after(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
    retry_after: Option<u64>,
) -> HttpResponse {
    let mut response = error(status, code, message, field);
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(
            ntex::http::header::RETRY_AFTER,
            ntex::http::header::HeaderValue::from(seconds),
        );
    }
    response
}

/// The bearer token of a request's `Authorization` header, if any.
pub fn bearer(req: &web::HttpRequest) -> Option<&str> {
    req.headers()
        .get(ntex::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Why an operator's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorRefusal {
    /// No bearer token: `401`.
    Missing,
    /// Another token: `403`.
    Wrong,
}

/// Checks an operator's bearer token against `token`, in constant time.
pub fn check_operator(req: &web::HttpRequest, token: &str) -> Result<(), OperatorRefusal> {
    match bearer(req) {
        None => Err(OperatorRefusal::Missing),
        Some(t) if crate::crypto::constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(OperatorRefusal::Wrong),
    }
}

/// The `401`/`403` answer to a refused operator request.
pub fn operator_refused(refusal: OperatorRefusal) -> HttpResponse {
    match refusal {
        OperatorRefusal::Missing => error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an operator token is required",
            None,
        ),
        OperatorRefusal::Wrong => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not do that",
            None,
        ),
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(serde_json::to_string(value).expect("responses serialize"))
}

/// Why a request body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the cap (`413`).
    #[error("the request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The connection failed while it was read (`400`).
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// Reads a request body, refusing it with [`BodyError::TooLarge`] as soon as it exceeds
/// `limit` bytes, so a hostile client cannot make the service buffer more than the cap.
pub async fn read_body(
    declared_len: Option<u64>,
    mut payload: Payload,
    limit: usize,
) -> Result<Bytes, BodyError> {
    if declared_len.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.recv().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The `/metrics` response for a registry.
pub fn metrics(registry: &prometheus::Registry) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::runtime::render_metrics(registry))
}

/// The `/readyz` response: `200` when every dependency answers, `503` naming the failing one.
pub fn readiness<S: AsRef<str>>(checks: &[(S, bool)]) -> HttpResponse {
    match checks.iter().find(|(_, ok)| !ok) {
        None => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Some((name, _)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            &format!("{} is not ready", name.as_ref()),
            None,
        ),
    }
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

/// The `GET /openapi.json` answer: the service's OpenAPI document, committed under
/// `docs/openapi/` and compiled in.
pub fn openapi(document: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document)
}

/// The methods each path of an OpenAPI document has, upper case and comma-separated as an
/// `Allow` header lists them (`[("/v1/registrations", "POST"), ...]`), in document order.
pub fn documented_methods(document: &str) -> Vec<(String, String)> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let document: serde_json::Value =
        serde_json::from_str(document).expect("the committed OpenAPI document is JSON");
    let paths = document["paths"].as_object().cloned().unwrap_or_default();
    paths
        .iter()
        .map(|(path, item)| {
            let allow = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join(", ");
            (path.clone(), allow)
        })
        .collect()
}

/// Answers every method a documented path does not have with `405` and an `Allow` header
/// listing those it has (rather than the `404` of an unknown route). Registered after the
/// service's own routes, so those match first; the methods come from the service's OpenAPI
/// document, which a test keeps equal to the routes.
pub fn method_not_allowed(cfg: &mut web::ServiceConfig, document: &str) {
    for (path, allow) in documented_methods(document) {
        cfg.route(
            &path,
            web::route().to(move || {
                let allow = allow.clone();
                async move {
                    let mut response = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        &format!("this path answers only {allow}"),
                        None,
                    );
                    if let Ok(value) = ntex::http::header::HeaderValue::from_str(&allow) {
                        response
                            .headers_mut()
                            .insert(ntex::http::header::ALLOW, value);
                    }
                    response
                }
            }),
        );
    }
}

/// Answers every unknown route with the contract's JSON error.
pub async fn not_found_route() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

/// Serves `routes` (sharing `state`) on `listener` with `workers` threads until `shutdown`
/// fires, then stops gracefully. Unknown routes get the contract's JSON 404.
pub async fn serve<S: Clone + Send + 'static>(
    listener: TcpListener,
    workers: usize,
    state: S,
    routes: fn(&mut web::ServiceConfig),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = web::HttpServer::new(async move || {
        App::new()
            .state(state.clone())
            .configure(routes)
            .default_service(web::to(not_found_route))
    })
    .workers(workers.max(1))
    .disable_signals()
    .listen(listener)
    .context("Failed to listen")?
    .run();
    let stopper = server.clone();
    tokio::select! {
        _ = shutdown.cancelled() => stopper.stop(true).await,
        _ = server => {}
    }
    Ok(())
}
