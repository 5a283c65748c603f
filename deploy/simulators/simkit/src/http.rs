//! JSON answers and the admin routes every simulator serves beside its own.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::knobs::{Simulator, refused};

const JSON: &str = "application/json";

/// `value` as a JSON answer with `status` (a `500` in plain text if it cannot be serialised).
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(CONTENT_TYPE, JSON)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "serializing an answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot serialize the answer",
            )
                .into_response()
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// `GET /_sim/knobs` (the knobs in force), `PUT /_sim/knobs` (a partial JSON object put in;
/// `400` with the reason, and nothing changed, when refused) and `GET /healthz`: merge them
/// into the simulator's own router.
pub fn knob_routes<S: Simulator>() -> Router<S> {
    Router::new()
        .route("/_sim/knobs", get(get_knobs::<S>).put(put_knobs::<S>))
        .route("/healthz", get(|| async { "ok" }))
}

async fn get_knobs<S: Simulator>(State(sim): State<S>) -> Response {
    json(StatusCode::OK, &sim.knobs())
}

async fn put_knobs<S: Simulator>(State(sim): State<S>, body: Bytes) -> Response {
    let patched = serde_json::from_slice(&body)
        .map_err(refused::<S::Knobs>)
        .and_then(|patch| sim.patch_knobs(&patch));
    match patched {
        Ok(knobs) => {
            tracing::info!(?knobs, "knobs changed");
            json(StatusCode::OK, &knobs)
        }
        Err(refused) => error(StatusCode::BAD_REQUEST, refused.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::tests::{Dial, Dials};
    use crate::testing::Served;

    #[tokio::test]
    async fn the_knob_routes_read_patch_and_refuse_over_http() {
        let dials = Dials::new(Dial::default());
        let router = knob_routes::<Dials>().with_state(dials.clone());
        let served = Served::start(|listener, shutdown| async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await?;
            Ok(())
        })
        .await;

        let reply = served.get("/_sim/knobs").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type(), JSON);
        assert_eq!(reply.json(), serde_json::json!({"rate": 0.5, "on": false}));

        let reply = served.put_knobs(r#"{"on": true}"#).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.json(), serde_json::json!({"rate": 0.5, "on": true}));
        assert!(dials.knobs().on);

        for refused in [r#"{"rate": 2}"#, "[1]", "{", r#"{"volume": 1}"#] {
            let reply = served.put_knobs(refused).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{refused}");
            assert!(reply.is_json_error(), "{refused}: {}", reply.body);
        }
        assert_eq!(
            served.put_knobs("[1]").await.json()["error"],
            r#"knobs must be a JSON object, e.g. {"rate": 0.1}"#
        );
        assert_eq!(
            dials.knobs(),
            Dial {
                rate: 0.5,
                on: true
            }
        );

        assert_eq!(served.get("/healthz").await.body, "ok");
        served.stop().await;
    }
}
