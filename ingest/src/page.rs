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

/// The page's fields that hold personal data. The forms send them only in a `POST` body.
pub const PERSONAL_FIELDS: [&str; 5] = ["national_id", "full_name", "birth_date", "email", "phone"];

/// The first personal field named in a query string (`a=1&national_id=…`), its name
/// percent-decoded, or `None`. Values are never looked at.
pub fn personal_field(query: &str) -> Option<&'static str> {
    query.split(['&', ';']).find_map(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let name = percent_decode(name);
        PERSONAL_FIELDS.into_iter().find(|f| *f == name)
    })
}

/// `+` as a space and `%XX` as its byte; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `GET` that carries personal data in its address (a form sent without the page's script,
/// a link someone built): refused with `400` naming the field, never the value, and not to be
/// stored by a cache. The address has already reached the edge; nothing here logs it.
fn refuse_personal_query(req: &HttpRequest, edge: &Edge) -> Option<HttpResponse> {
    let field = personal_field(req.query_string())?;
    let mut response = streams::http::error(
        StatusCode::BAD_REQUEST,
        "personal_data_in_url",
        "personal data must not be sent in a web address, where browsers, histories and logs \
         keep it; the page sends it in the body of a POST and needs JavaScript to do so",
        Some(field),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secure(&mut response, edge);
    Some(response)
}

/// `GET /`, `/page.css`, `/page.js`, `/i18n.js`: the page's files, `304` on a matching
/// `If-None-Match`; `400` when the query names a personal field.
pub async fn asset(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    if let Some(refusal) = refuse_personal_query(&req, &edge) {
        return refusal;
    }
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

/// `GET /config.json`: where the page finds the read API (`REG_READ_API_URL`); `400` when
/// the query names a personal field.
pub async fn config(req: HttpRequest, edge: State<Edge>) -> HttpResponse {
    if let Some(refusal) = refuse_personal_query(&req, &edge) {
        return refusal;
    }
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
    fn a_query_with_a_personal_field_is_found_by_the_fields_name_alone() {
        assert_eq!(
            personal_field("national_id=44051401359"),
            Some("national_id")
        );
        assert_eq!(
            personal_field("region=mazowieckie&birth_date=1944-05-14"),
            Some("birth_date")
        );
        assert_eq!(personal_field("national%5Fid=1"), Some("national_id"));
        assert_eq!(
            personal_field("email"),
            Some("email"),
            "a name without a value"
        );
        assert_eq!(personal_field("phone=&x=1"), Some("phone"));
        assert_eq!(
            personal_field("region=mazowieckie&location=x&date=2027-03-01"),
            None
        );
        assert_eq!(
            personal_field("x=national_id"),
            None,
            "values are not names"
        );
        assert_eq!(personal_field(""), None);
        assert_eq!(personal_field("%zz=1&%"), None);
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
