//! Cross-origin reads for the citizens' page: the page is served by the ingest edge, another
//! origin, and reads availability and its registration's status here. Only the configured
//! origins (`REG_CORS_ORIGINS`) are answered with `Access-Control-Allow-Origin`; only the two
//! citizen `GET` endpoints take part (the operators' lists never do).

use ntex::http::StatusCode;
use ntex::http::header::{self, HeaderValue};
use ntex::web::{HttpRequest, HttpResponse, types::State};

use crate::api::Reader;

/// How long a browser may reuse a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The request's `Origin` when it is one of `allowed`.
fn allowed_origin<'a>(req: &'a HttpRequest, allowed: &[String]) -> Option<&'a HeaderValue> {
    let origin = req.headers().get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    allowed.iter().any(|a| a == text).then_some(origin)
}

/// Adds the CORS answer to `response` when the request comes from an allowed origin: the
/// origin itself (never `*`), `Vary: Origin` in every case (caches keep the answers apart),
/// and `ETag` readable by the page (its `If-None-Match` polling).
pub fn allow(req: &HttpRequest, reader: &Reader, mut response: HttpResponse) -> HttpResponse {
    let origin = allowed_origin(req, &reader.cors_origins).cloned();
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("ETag, Retry-After"),
        );
    }
    response
}

/// `OPTIONS` on a citizen endpoint: the preflight a browser sends before a `GET` with
/// `Authorization` or `If-None-Match`. `204` always; the allowing headers only for an
/// allowed origin, so any other origin's page is refused by its browser.
pub async fn preflight(req: HttpRequest, reader: State<Reader>) -> HttpResponse {
    let mut response = HttpResponse::build(StatusCode::NO_CONTENT).finish();
    let origin = allowed_origin(&req, &reader.cors_origins).cloned();
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, If-None-Match"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
    }
    response
}

/// The default allowed origins: the citizens' page's (`page_url`, else the edge at
/// `ingest_listen`), and on a loopback address its `localhost` alias too.
pub fn default_origins(page_url: Option<&str>, ingest_listen: &str) -> Vec<String> {
    let url = page_url.map_or_else(|| format!("http://{ingest_listen}"), str::to_owned);
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = url[..url.len() - rest.len() + end].to_owned();
    let mut origins = vec![origin.clone()];
    if let Some(port) = origin.strip_prefix("http://127.0.0.1:") {
        origins.push(format!("http://localhost:{port}"));
    }
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_origin_is_the_page_or_the_edge_with_its_loopback_alias() {
        assert_eq!(
            default_origins(None, "127.0.0.1:8080"),
            ["http://127.0.0.1:8080", "http://localhost:8080"]
        );
        assert_eq!(
            default_origins(
                Some("https://rejestracja.gov.pl/szczepienia/"),
                "0.0.0.0:8080"
            ),
            ["https://rejestracja.gov.pl"]
        );
    }
}
