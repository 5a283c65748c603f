//! The citizens' page as the edge serves it, and the read API's answers to it across origins.
//! (What the page does in a browser: `deploy/tests/browser/test.mjs`.)

use ntex::http::HeaderMap;

use crate::assert_error;
use crate::helpers::*;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// `/` and its assets come with their type, a cache policy and a strict Content-Security-
/// Policy that lets scripts come only from the edge and requests go only to the edge and the
/// read API; the page itself holds no inline script; `/config.json` names the read API; an
/// `ETag` revalidates to `304`.
#[ntex::test]
async fn the_edge_serves_the_page_under_a_strict_policy() {
    let p = Pipeline::start().await;
    let (status, headers, html) = p.send(p.http.get(format!("{}/", p.ingest)), None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&headers, "cache-control"), "no-cache");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    let policy = header(&headers, "content-security-policy");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(
        policy.contains(&format!("connect-src 'self' {};", p.read)),
        "the read API, and only it, beside the edge: {policy}"
    );
    let html = html.as_str().expect("HTML, not JSON");
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=\"/").count(),
        "every script is a file of the edge's, none inline"
    );
    for inline in [
        "onclick=",
        "onload=",
        "onsubmit=",
        "onchange=",
        "style=",
        "<style",
    ] {
        assert!(
            !html.contains(inline),
            "{inline}: the policy would block it"
        );
    }

    for (path, kind) in [
        ("/page.js", "text/javascript; charset=utf-8"),
        ("/i18n.js", "text/javascript; charset=utf-8"),
        ("/page.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, _) = p
            .send(p.http.get(format!("{}{path}", p.ingest)), None)
            .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&headers, "content-type"), kind, "{path}");
        let etag = header(&headers, "etag").to_owned();
        assert!(etag.starts_with('"'), "{path}: {etag}");
        let (status, _, _) = p
            .send(
                p.http
                    .get(format!("{}{path}", p.ingest))
                    .header("If-None-Match", etag.as_str()),
                None,
            )
            .await;
        assert_eq!(status, 304, "{path} revalidates");
    }

    let (status, headers, config) = p
        .send(p.http.get(format!("{}/config.json", p.ingest)), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(config["read_api_url"], p.read.as_str());
    assert!(!header(&headers, "content-security-policy").is_empty());
}

/// The read API lets the page's origin, and no other, read availability and status from a
/// script: the preflight allows `Authorization` and `If-None-Match`, the answers (a `404`
/// and a `304` included) name the origin and expose `ETag`; operators' lists never do.
#[ntex::test]
async fn the_read_api_answers_the_pages_origin_and_no_other() {
    let p = Pipeline::start().await;
    p.set_capacity("cors", 3).await;
    p.wait_remaining("cors", 3).await;
    let page = p.ingest.as_str();
    let evil = "http://evil.example";

    for path in ["/v1/availability", "/v1/registrations/mazowieckie.0123"] {
        let url = format!("{}{path}", p.read);
        let preflight = |origin: &str| {
            p.http
                .options(&url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .header(
                    "Access-Control-Request-Headers",
                    "authorization,if-none-match",
                )
        };
        let (status, headers, _) = p.send(preflight(page), None).await;
        assert_eq!(status, 204, "{path}");
        assert_eq!(header(&headers, "access-control-allow-origin"), page);
        assert_eq!(header(&headers, "access-control-allow-methods"), "GET");
        let allowed = header(&headers, "access-control-allow-headers").to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("if-none-match"),
            "{allowed}"
        );
        let (status, headers, _) = p.send(preflight(evil), None).await;
        assert_eq!(status, 204, "{path}");
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "another origin is not allowed"
        );
    }

    let url = format!("{}/v1/availability?location=cors", p.read);
    let (status, headers, _) = p.send(p.http.get(&url).header("Origin", page), None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), page);
    assert!(header(&headers, "access-control-expose-headers").contains("ETag"));
    assert!(header(&headers, "vary").contains("Origin"));
    let etag = header(&headers, "etag").to_owned();
    let (status, headers, _) = p
        .send(
            p.http
                .get(&url)
                .header("Origin", page)
                .header("If-None-Match", etag.as_str()),
            None,
        )
        .await;
    assert_eq!(status, 304);
    assert_eq!(header(&headers, "access-control-allow-origin"), page);
    let (_, headers, _) = p.send(p.http.get(&url).header("Origin", evil), None).await;
    assert!(headers.get("access-control-allow-origin").is_none());

    // The page must be able to read a 404 (a wrong link) to say so.
    let (status, headers, _) = p
        .send(
            p.http
                .get(format!("{}/v1/registrations/mazowieckie.0123", p.read))
                .header("Origin", page)
                .bearer_auth("wrong"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "access-control-allow-origin"), page);

    let (status, headers, _) = p
        .send(
            p.http
                .get(format!("{}/v1/admin/reviews", p.read))
                .header("Origin", page)
                .bearer_auth(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "operators' lists are not for pages"
    );
}

/// The value of `name="…"` in one tag, if present.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Without JavaScript the page's forms still never put personal data in an address: each
/// is a `POST` to an edge route, which refuses the form encoding with the contract's JSON
/// error and without echoing a value; a `<noscript>` says the page needs JavaScript; and a
/// `GET` carrying personal fields in its query is refused (`400`, the field named, the value
/// not repeated) rather than served, while other queries still get the page.
#[ntex::test]
async fn without_javascript_no_form_puts_personal_data_in_the_address() {
    let p = Pipeline::start().await;
    let pesel = "44051401359";
    let (status, _, html) = p.send(p.http.get(format!("{}/", p.ingest)), None).await;
    assert_eq!(status, 200);
    let html = html.as_str().expect("HTML").to_owned();
    assert!(
        html.contains("<noscript>"),
        "a message for browsers without JavaScript"
    );
    let forms: Vec<&str> = html
        .match_indices("<form")
        .map(|(i, _)| &html[i..i + html[i..].find('>').unwrap()])
        .collect();
    assert_eq!(forms.len(), 2, "the registration and the recovery form");
    for form in forms {
        assert_eq!(attribute(form, "method"), Some("post"), "{form}");
        let action = attribute(form, "action").unwrap_or_else(|| panic!("{form}: an action"));
        assert!(action.starts_with("/v1/"), "{form}: an edge route");
        let body = format!("national_id={pesel}&full_name=Jan+Kowalski&birth_date=1944-05-14");
        let (status, _, error) = p
            .send(
                p.http
                    .post(format!("{}{action}", p.ingest))
                    .content_type("application/x-www-form-urlencoded"),
                Some(body.into_bytes()),
            )
            .await;
        assert_eq!(status, 415, "{action}: {error}");
        assert_error(&error, "unsupported_media_type", None);
        assert!(!error.to_string().contains(pesel), "{error}");
    }

    for query in [
        format!("national_id={pesel}&birth_date=1944-05-14"),
        format!("region=mazowieckie&national_id={pesel}"),
        "email=jan%40example.pl".to_owned(),
        "full_name=Jan+Kowalski".to_owned(),
    ] {
        for path in ["/", "/page.js", "/config.json"] {
            let (status, headers, error) = p
                .send(p.http.get(format!("{}{path}?{query}", p.ingest)), None)
                .await;
            assert_eq!(status, 400, "{path}?{query}: {error}");
            assert_error(
                &error,
                "personal_data_in_url",
                error["error"]["field"].as_str(),
            );
            let field = error["error"]["field"].as_str().unwrap();
            assert!(query.contains(&format!("{field}=")), "{query}: {error}");
            for value in [pesel, "1944-05-14", "jan", "Kowalski"] {
                assert!(!error.to_string().contains(value), "{error}");
            }
            assert_eq!(header(&headers, "cache-control"), "no-store");
        }
    }
    let (status, _, _) = p
        .send(
            p.http.get(format!(
                "{}/?region=mazowieckie&location=x&date=2027-03-01",
                p.ingest
            )),
            None,
        )
        .await;
    assert_eq!(status, 200, "a booking link's query is not personal");
}
