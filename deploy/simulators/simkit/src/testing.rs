//! For the simulators' tests (compiled into the library so that their integration tests can
//! use it; nothing else does): a simulator served in-process on a port-0 listener, and its
//! HTTP answers read whole.

use std::future::Future;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
}

impl Reply {
    /// Reads `response` to its end.
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a readable body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The body as JSON (panics, showing the body, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("{error}: {}", self.body))
    }

    /// The `Content-Type`, or `""`.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    /// The `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<&str> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
    }

    /// Whether the body is a JSON error, `{"error": "..."}` served as `application/json`.
    pub fn is_json_error(&self) -> bool {
        self.content_type() == "application/json" && self.json()["error"].is_string()
    }

    /// Asserts the request was refused as unauthenticated (`401`, a JSON error); `case` says
    /// which.
    pub fn assert_unauthorized(&self, case: &str) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{case}: {}",
            self.body
        );
        assert!(self.is_json_error(), "{case}: {}", self.body);
    }
}

/// A simulator served in-process until [`Served::stop`], and an HTTP client for it.
#[derive(Debug)]
pub struct Served {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The client every request goes through.
    pub client: reqwest::Client,
    /// Stops the simulator (as a signal would); [`Served::stop`] cancels it and checks the
    /// end.
    pub shutdown: CancellationToken,
    server: JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Binds a port-0 listener on 127.0.0.1 and spawns `serve` on it, with the token that
    /// stops it.
    pub async fn start<F, Fut>(serve: F) -> Served
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let base = format!("http://{}", listener.local_addr().expect("an address"));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone()));
        Served {
            base,
            client: reqwest::Client::new(),
            shutdown,
            server,
        }
    }

    /// `GET <path>`.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("an answer");
        Reply::read(response).await
    }

    /// `PUT /_sim/knobs` with `json` as the body.
    pub async fn put_knobs(&self, json: &str) -> Reply {
        let response = self
            .client
            .put(format!("{}/_sim/knobs", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(json.to_owned())
            .send()
            .await
            .expect("an answer");
        Reply::read(response).await
    }

    /// Stops the simulator (if [`Served::shutdown`] has not yet) and checks it ended cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server
            .await
            .expect("the server did not panic")
            .expect("the server ended cleanly");
    }
}
