//! What every service's HTTP tests share: sending a request and reading its answer as JSON,
//! and the contract's error shape.

use serde_json::Value;

/// Sends `request` (with `body`, if any) and returns the status, the headers and the body as
/// JSON: `Null` when empty, a string when it is not one JSON value (NDJSON, text).
pub async fn send(
    request: ntex::client::ClientRequest,
    body: Option<Vec<u8>>,
) -> (u16, ntex::http::HeaderMap, Value) {
    let response = match body {
        Some(body) => request.send_body(body).await,
        None => request.send().await,
    }
    .expect("the service answers");
    let bytes = response.body().limit(1 << 24).await.expect("a body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (response.status().as_u16(), response.headers().clone(), json)
}

/// Asserts the contract's error shape: `code`, a message, and `field` when one is named.
pub fn assert_error(body: &Value, code: &str, field: Option<&str>) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    match field {
        Some(f) => assert_eq!(body["error"]["field"], f, "{body}"),
        None => assert!(body["error"].get("field").is_none(), "{body}"),
    }
}
