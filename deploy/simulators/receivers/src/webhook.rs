//! The webhook receiver (`POST /webhook`, signed) and the admin endpoints, on one HTTP
//! listener.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use simkit::http::{error, json};

use crate::counts::Outcome;
use crate::receivers::{Receivers, Transport};
use crate::store;
use crate::wire::{
    MAX_CLOCK_SKEW_S, NOTIFICATION_ID_HEADER, REGISTRATION_ID_HEADER, SIGNATURE_HEADER,
    SIGNATURE_TIMESTAMP_HEADER, WEBHOOK_PATH, is_valid_id, verify,
};

/// The largest webhook body accepted, in bytes: a larger one gets `413`.
pub const MAX_WEBHOOK_BODY_BYTES: usize = 1 << 20;

/// The routes: `POST /webhook`, the admin endpoints under `/_sim/` and `GET /healthz`.
pub(crate) fn router(receivers: &Receivers) -> Router {
    Router::new()
        .route(
            WEBHOOK_PATH,
            post(receive).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY_BYTES)),
        )
        .route("/_sim/counts", get(get_counts))
        .merge(simkit::http::knob_routes())
        .with_state(receivers.clone())
}

#[derive(Serialize)]
struct Delivered<'a> {
    status: &'static str,
    notification_id: &'a str,
}

/// One line of `deliveries.ndjson`.
#[derive(Serialize)]
struct DeliveryLine<'a> {
    notification_id: &'a str,
    registration_id: &'a str,
    received_at: String,
    body: serde_json::Value,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Checks the signature headers against the id headers as sent (empty when absent) and the
/// raw body: the timestamp is unix seconds, the signature is right, and the timestamp is at
/// most [`MAX_CLOCK_SKEW_S`] from now.
fn check_signature(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let timestamp = header(headers, SIGNATURE_TIMESTAMP_HEADER)
        .and_then(|value| value.trim().parse::<i64>().ok())
        .ok_or_else(|| format!("{SIGNATURE_TIMESTAMP_HEADER} is missing or not unix seconds"))?;
    let signature = header(headers, SIGNATURE_HEADER)
        .ok_or_else(|| format!("{SIGNATURE_HEADER} is missing"))?;
    let notification_id = header(headers, NOTIFICATION_ID_HEADER).unwrap_or_default();
    let registration_id = header(headers, REGISTRATION_ID_HEADER).unwrap_or_default();
    if !verify(
        secret,
        timestamp,
        notification_id,
        registration_id,
        body,
        signature.trim(),
    ) {
        return Err(format!(
            "{SIGNATURE_HEADER} does not match: expected sha256=<hex of HMAC-SHA256(secret, \"<timestamp>\\n<{NOTIFICATION_ID_HEADER}>\\n<{REGISTRATION_ID_HEADER}>\\n<raw body>\")>"
        ));
    }
    let skew = Utc::now().timestamp().saturating_sub(timestamp);
    if skew.saturating_abs() > MAX_CLOCK_SKEW_S {
        return Err(format!(
            "{SIGNATURE_TIMESTAMP_HEADER} is {skew} s from now: at most {MAX_CLOCK_SKEW_S} s either way"
        ));
    }
    Ok(())
}

/// `POST /webhook`: the knob first (an unavailable provider checks nothing), then the body
/// limit, the signature and its timestamp (`401`), the id headers and the JSON body (`400`),
/// then whether the notification id is stored already.
async fn receive(
    State(receivers): State<Receivers>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let notification_id = header(&headers, NOTIFICATION_ID_HEADER).map(str::trim);
    let counted = notification_id.filter(|id| is_valid_id(id));
    let refuse = |status: StatusCode, message: String| {
        receivers.record(Transport::Webhook, counted, Outcome::Refused);
        tracing::debug!(notification_id = ?counted, %status, %message, "refused a webhook delivery");
        error(status, message)
    };
    if receivers.fails_by_knob(Transport::Webhook) {
        receivers.record(Transport::Webhook, counted, Outcome::FailedByKnob);
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporary failure (webhook_fail_rate): retry later",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return refuse(rejection.status(), rejection.body_text()),
    };
    if let Err(message) = check_signature(&receivers.inner.webhook_secret, &headers, &body) {
        return refuse(StatusCode::UNAUTHORIZED, message);
    }
    let Some(id) = counted else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{NOTIFICATION_ID_HEADER} is missing or not a plain id"),
        );
    };
    let Some(registration_id) = header(&headers, REGISTRATION_ID_HEADER)
        .map(str::trim)
        .filter(|id| is_valid_id(id))
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{REGISTRATION_ID_HEADER} is missing or not a plain id"),
        );
    };
    let body: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(parse) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {parse}"),
            );
        }
    };
    let line = DeliveryLine {
        notification_id: id,
        registration_id,
        received_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        body,
    };
    let mut line = match serde_json::to_vec(&line) {
        Ok(line) => line,
        Err(failure) => {
            tracing::error!(%failure, "serializing a webhook delivery");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the delivery",
            );
        }
    };
    line.push(b'\n');
    let stored = {
        let mut stored = receivers.inner.webhook.lock().await;
        store::store_webhook(&mut stored, id, &line)
    };
    match stored {
        Ok(true) => {
            receivers.record(Transport::Webhook, Some(id), Outcome::Accepted);
            tracing::debug!(notification_id = id, "stored a webhook delivery");
            let delivered = Delivered {
                status: "accepted",
                notification_id: id,
            };
            json(StatusCode::OK, &delivered)
        }
        Ok(false) => {
            receivers.record(Transport::Webhook, Some(id), Outcome::Duplicate);
            tracing::debug!(
                notification_id = id,
                "a duplicate webhook delivery: not stored again"
            );
            let delivered = Delivered {
                status: "duplicate",
                notification_id: id,
            };
            json(StatusCode::OK, &delivered)
        }
        Err(failure) => {
            tracing::error!(%failure, notification_id = id, file = %receivers.webhook_file().display(), "storing a webhook delivery");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the delivery",
            )
        }
    }
}

async fn get_counts(State(receivers): State<Receivers>) -> Response {
    json(StatusCode::OK, &receivers.counts())
}
