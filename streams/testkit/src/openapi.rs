//! Checks a service's route table against its committed OpenAPI document, in process (no
//! socket, no NATS: handlers that need the service's state fail at extraction, which still
//! proves a route reached them).

use std::path::Path;

use ntex::http::{Method, StatusCode, header};
use ntex::web::{self, App, test};

/// What a path parameter is replaced with: a well-formed registration id.
pub const SAMPLE_ID: &str = "mazowieckie.0123456789abcdef0123456789abcdef";

/// Asserts that `GET /openapi.json` serves exactly the file at `committed` as JSON, that it
/// is an OpenAPI 3.1 document, that every documented operation reaches a route (not the
/// unknown-route `404` nor a `405`), and that every other method on a documented path is a
/// `405` whose `Allow` lists the documented ones.
pub async fn check_routes(configure: fn(&mut web::ServiceConfig), committed: &Path) {
    let file = std::fs::read_to_string(committed).expect("the committed document is readable");
    let app = test::init_service(
        App::new()
            .configure(configure)
            .default_service(web::to(streams::http::not_found_route)),
    )
    .await;

    let response = test::call_service(
        &app,
        test::TestRequest::with_uri("/openapi.json").to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let served = test::read_body(response).await;
    assert!(
        served == file.as_bytes(),
        "GET /openapi.json differs from {}",
        committed.display()
    );
    let document: serde_json::Value = serde_json::from_str(&file).expect("the document is JSON");
    let version = document["openapi"].as_str().expect("an openapi field");
    assert!(version.starts_with("3.1."), "OpenAPI {version}, not 3.1.x");

    let all = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::PATCH,
    ];
    let documented = streams::http::documented_methods(&file);
    assert!(!documented.is_empty(), "the document has paths");
    for (path, allow) in documented {
        let uri = path
            .replace("{id}", SAMPLE_ID)
            .replace("{region}", crate::REGION)
            .replace("{ticket}", "not-a-ticket");
        assert!(
            !uri.contains('{'),
            "{path}: a path parameter the check does not fill"
        );
        for method in &all {
            let request = test::TestRequest::with_uri(&uri)
                .method(method.clone())
                .to_request();
            let response = test::call_service(&app, request).await;
            let status = response.status();
            if allow.split(", ").any(|m| m == method.as_str()) {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && status != StatusCode::NOT_FOUND,
                    "{method} {path} is documented but answered {status}: no route"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented"
                );
                assert_eq!(
                    response.headers().get(header::ALLOW).unwrap(),
                    allow.as_str(),
                    "{method} {path}"
                );
            }
        }
    }
}
