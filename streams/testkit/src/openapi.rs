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
        let uri = path.replace("{id}", SAMPLE_ID);
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

/// A validator for the schema at `pointer` (a JSON pointer into `document`, e.g.
/// `/components/schemas/Region`), its `#/components/...` references resolved within the
/// document, under JSON Schema 2020-12 (OpenAPI 3.1's dialect) with the patterns read as
/// ECMA-262 regular expressions, as OpenAPI tools read them.
pub fn schema_validator(document: &serde_json::Value, pointer: &str) -> jsonschema::Validator {
    let schema = document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"));
    let mut root = match schema {
        serde_json::Value::Object(map) => map.clone(),
        other => panic!("{pointer}: a schema object, not {other}"),
    };
    root.insert("components".into(), document["components"].clone());
    jsonschema::draft202012::options()
        .build(&serde_json::Value::Object(root))
        .unwrap_or_else(|e| panic!("{pointer}: not a valid schema: {e}"))
}

/// Every `example` and `examples` in the document, with the pointer of the schema it
/// illustrates: a schema's own (`examples`, an array; `example`, one value) or, in a media
/// type, parameter or header, its `schema` (`example`, one value; `examples`, a map of
/// Example objects whose `value` counts).
pub fn examples(document: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    fn walk(
        value: &serde_json::Value,
        pointer: &str,
        out: &mut Vec<(String, String, serde_json::Value)>,
    ) {
        match value {
            serde_json::Value::Object(map) => {
                let (schema, own) = if map.contains_key("schema") {
                    (format!("{pointer}/schema"), false)
                } else {
                    (pointer.to_owned(), true)
                };
                if let Some(one) = map.get("example") {
                    out.push((format!("{pointer}/example"), schema.clone(), one.clone()));
                }
                match map.get("examples") {
                    Some(serde_json::Value::Array(list)) if own => {
                        for (i, one) in list.iter().enumerate() {
                            out.push((
                                format!("{pointer}/examples/{i}"),
                                schema.clone(),
                                one.clone(),
                            ));
                        }
                    }
                    Some(serde_json::Value::Object(named)) if !own => {
                        for (name, example) in named {
                            let value = example
                                .get("value")
                                .unwrap_or_else(|| panic!("{pointer}/examples/{name}: no value"));
                            out.push((
                                format!("{pointer}/examples/{name}"),
                                schema.clone(),
                                value.clone(),
                            ));
                        }
                    }
                    Some(_) => {
                        panic!("{pointer}/examples: not the shape OpenAPI 3.1 gives it here")
                    }
                    None => {}
                }
                for (key, child) in map {
                    if key != "example" && key != "examples" {
                        let escaped = key.replace('~', "~0").replace('/', "~1");
                        walk(child, &format!("{pointer}/{escaped}"), out);
                    }
                }
            }
            serde_json::Value::Array(list) => {
                for (i, child) in list.iter().enumerate() {
                    walk(child, &format!("{pointer}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(document, "", &mut out);
    out
}

/// Asserts that every example in the document at `committed` validates against the schema it
/// illustrates (what Redocly and Spectral check too), and that there are some.
pub fn check_examples(committed: &Path) {
    let file = std::fs::read_to_string(committed).expect("the committed document is readable");
    let document: serde_json::Value = serde_json::from_str(&file).expect("the document is JSON");
    let examples = examples(&document);
    assert!(!examples.is_empty(), "{}: no examples", committed.display());
    let mut wrong = Vec::new();
    for (at, schema, example) in &examples {
        let validator = schema_validator(&document, schema);
        for error in validator.iter_errors(example) {
            wrong.push(format!("{at}: {error} (at {})", error.instance_path()));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}: examples that contradict their schema:\n{}",
        committed.display(),
        wrong.join("\n")
    );
}
