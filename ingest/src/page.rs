//! The citizens' page: plain HTML, CSS and JavaScript from `ingest/page/`, compiled into the
//! binary, served at `/` with a strict Content-Security-Policy (no inline script, no other
//! origin but the read API's), and `/config.json`, which tells the page where the read API is.

use std::sync::LazyLock;

use ntex::http::StatusCode;
use ntex::http::header::{self, HeaderValue};
use ntex::web::{self, HttpRequest, HttpResponse, types::State};
use serde_json::json;
use streams::crypto::sha256_hex;

use crate::routes::Edge;

/// One file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// How long a browser may use it without asking again.
    cache_control: &'static str,
}

/// Every file of the page. The HTML is revalidated on every load (an upgrade shows at once);
/// the scripts and the style may be reused for a minute, then are revalidated by `ETag`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../page/index.html"),
        cache_control: "no-cache",
    },
    Asset {
        path: "/page.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../page/page.css"),
        cache_control: "public, max-age=60",
    },
    Asset {
        path: "/page.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../page/page.js"),
        cache_control: "public, max-age=60",
    },
    Asset {
        path: "/i18n.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../page/i18n.js"),
        cache_control: "public, max-age=60",
    },
];

/// Each asset's entity tag, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", &sha256_hex(a.body.as_bytes())[..32]))
        .collect()
});

/// The scheme, host and port of `url` (what a Content-Security-Policy source and a CORS
/// origin are), or `None` when it is not an absolute `http(s)` URL.
pub fn origin(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some(&url[..url.len() - rest.len() + end])
}

/// The policy of every page response: scripts, styles and images from the edge only, no
/// inline script or style, requests to the edge and the read API only, never framed.
pub fn content_security_policy(read_api_url: &str) -> String {
    let read = origin(read_api_url).unwrap_or("");
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self' {read}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

fn secure(response: &mut HttpResponse, edge: &Edge) {
    let policy = content_security_policy(&edge.settings.read_api_url);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /`, `/page.css`, `/page.js`, `/i18n.js`: the page's files, `304` on a matching
/// `If-None-Match`.
pub async fn asset(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.path == req.path()) else {
        return HttpResponse::NotFound().finish();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .content_type(asset.content_type)
            .body(asset.body)
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(etag).expect("hex is a valid header"),
    );
    secure(&mut response, &edge);
    response
}

/// `GET /config.json`: where the page finds the read API (`REG_READ_API_URL`).
pub async fn config(edge: State<Edge>) -> HttpResponse {
    let mut response = streams::http::json(
        StatusCode::OK,
        &json!({"read_api_url": edge.settings.read_api_url}),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(&mut response, &edge);
    response
}

/// The page's routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for a in ASSETS {
        cfg.route(a.path, web::get().to(asset));
    }
    cfg.route("/config.json", web::get().to(config));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_scheme_host_and_port() {
        assert_eq!(
            origin("http://127.0.0.1:8081"),
            Some("http://127.0.0.1:8081")
        );
        assert_eq!(
            origin("https://read.example.pl/api/"),
            Some("https://read.example.pl")
        );
        assert_eq!(origin("ftp://x"), None);
        assert_eq!(origin("http:///x"), None);
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_only_the_read_api_beside_the_edge() {
        let policy = content_security_policy("https://read.example.pl/v1");
        assert!(policy.contains("script-src 'self';"), "{policy}");
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(
            policy.contains("connect-src 'self' https://read.example.pl;"),
            "{policy}"
        );
    }
}
