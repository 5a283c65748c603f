//! The registry's HTTP client: one SOAP request per verification, the answer read under a
//! size cap and decoded strictly by [`super::xml`]. Every way the call can fail is a
//! [`RegistryError`] that says whether trying again can help.

use std::time::Duration;

use chrono::NaiveDate;
use reqwest::StatusCode;

use streams::outside::OutsideError;

use super::xml::{self, FaultCode, Reply, Verdict, VerifyRequest};

/// Why the registry gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `429`: slow down, for at least this long.
    #[error("the registry is rate limiting (429), retry after {0:?}")]
    RateLimited(Duration),
    /// A `5xx` without a usable fault, or `503` during an outage.
    #[error("the registry answered {0}")]
    Status(StatusCode),
    /// A SOAP fault on the registry's side.
    #[error("the registry answered a server fault: {0}")]
    ServerFault(String),
    /// The registry refused the request as malformed: trying again sends the same bytes.
    #[error("the registry refused the request: {0}")]
    ClientFault(String),
    /// The answer could not be trusted: malformed or hostile XML.
    #[error("the registry's answer was refused: {0}")]
    BadAnswer(String),
    /// The answer was larger than [`xml::MAX_REPLY_BYTES`]; it was not read further.
    #[error("the registry's answer is larger than {} bytes", xml::MAX_REPLY_BYTES)]
    TooLarge,
    /// A well-formed answer about another request.
    #[error("the registry's answer is about another request")]
    WrongRequest,
    /// No answer in time.
    #[error("the registry did not answer in time: {0}")]
    Timeout(String),
    /// No connection, or the connection broke.
    #[error("the registry could not be reached: {0}")]
    Transport(String),
}

impl RegistryError {
    /// Whether another attempt may succeed. Only a client fault is final.
    pub fn retryable(&self) -> bool {
        !matches!(self, RegistryError::ClientFault(_))
    }

    /// Whether the failure counts against the circuit breaker: the registry is unwell. A
    /// rate limit is the registry working as designed; a client fault is ours.
    pub fn counts_against_breaker(&self) -> bool {
        !matches!(
            self,
            RegistryError::RateLimited(_) | RegistryError::ClientFault(_)
        )
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RegistryError::RateLimited(_) => "rate_limited",
            RegistryError::Status(_) => "http_error",
            RegistryError::ServerFault(_) => "server_fault",
            RegistryError::ClientFault(_) => "client_fault",
            RegistryError::BadAnswer(_) | RegistryError::TooLarge | RegistryError::WrongRequest => {
                "bad_answer"
            }
            RegistryError::Timeout(_) | RegistryError::Transport(_) => "unreachable",
        }
    }

    /// The failure as events record it: a code and a fixed sentence, none of the registry's
    /// own words (a fault may echo the citizen's data, at any length).
    pub fn outside(&self) -> OutsideError {
        match self {
            RegistryError::RateLimited(_) => {
                OutsideError::new("registry_http_429", "the registry asked us to slow down")
            }
            RegistryError::Status(status) => OutsideError::new(
                format!("registry_http_{}", status.as_u16()),
                "the registry answered an HTTP error status without a usable fault",
            ),
            RegistryError::ServerFault(_) => OutsideError::new(
                "registry_fault_server",
                "the registry answered with a fault on its side",
            ),
            RegistryError::ClientFault(_) => OutsideError::new(
                "registry_fault_client",
                "the registry refused the request as malformed",
            ),
            RegistryError::BadAnswer(_) => OutsideError::new(
                "registry_malformed_xml",
                "the registry's answer was not XML of the agreed shape",
            ),
            RegistryError::TooLarge => OutsideError::new(
                "registry_answer_too_large",
                "the registry's answer was larger than the limit",
            ),
            RegistryError::WrongRequest => OutsideError::new(
                "registry_wrong_request_id",
                "the registry's answer was about another request",
            ),
            RegistryError::Timeout(_) => {
                OutsideError::new("registry_timeout", "the registry did not answer in time")
            }
            RegistryError::Transport(_) => {
                OutsideError::new("registry_unreachable", "the registry could not be reached")
            }
        }
    }
}

/// What the registry is asked about one citizen.
#[derive(Debug, Clone)]
pub struct Person<'a> {
    /// The national id.
    pub national_id: &'a str,
    /// The full name.
    pub full_name: &'a str,
    /// The birth date.
    pub birth_date: NaiveDate,
}

/// The registry's endpoint and an HTTP client with a per-call timeout.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    url: String,
}

/// Path of the verification operation under the registry's base URL.
pub const VERIFY_PATH: &str = "/registry/v1/verify";

impl RegistryClient {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:8090`); each call gives
    /// up after `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A redirect would send the citizen's data on to wherever it points: a redirect
            // is the registry's failure, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(RegistryClient {
            http,
            url: format!("{}{VERIFY_PATH}", base_url.trim_end_matches('/')),
        })
    }

    /// Asks the registry about `person`; `request_id` is echoed back and checked.
    pub async fn verify(
        &self,
        person: &Person<'_>,
        request_id: &str,
    ) -> Result<Verdict, RegistryError> {
        let body = xml::encode_request(&VerifyRequest {
            request_id,
            national_id: person.national_id,
            full_name: person.full_name,
            birth_date: person.birth_date,
        });
        let mut response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, xml::CONTENT_TYPE)
            .header("SOAPAction", xml::SOAP_ACTION)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(Duration::from_secs(1), Duration::from_secs);
            return Err(RegistryError::RateLimited(wait));
        }
        // Read under the cap: a huge answer is refused, never buffered whole.
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > xml::MAX_REPLY_BYTES {
                return Err(RegistryError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        let reply = xml::decode_reply(&bytes);
        match (status, reply) {
            (
                StatusCode::OK,
                Ok(Reply::Verdict {
                    request_id: echoed,
                    verdict,
                }),
            ) => {
                if echoed == request_id {
                    Ok(verdict)
                } else {
                    Err(RegistryError::WrongRequest)
                }
            }
            (
                _,
                Ok(Reply::Fault {
                    code: FaultCode::Client,
                    message,
                }),
            ) => Err(RegistryError::ClientFault(message)),
            (_, Ok(Reply::Fault { message, .. })) => Err(RegistryError::ServerFault(message)),
            (StatusCode::OK, Err(err)) => Err(RegistryError::BadAnswer(err.to_string())),
            (status, _) => Err(RegistryError::Status(status)),
        }
    }
}

/// A failed exchange, without the URL reqwest puts in the error (it may carry credentials).
fn transport(err: reqwest::Error) -> RegistryError {
    let timeout = err.is_timeout();
    let text = err.without_url().to_string();
    if timeout {
        RegistryError::Timeout(text)
    } else {
        RegistryError::Transport(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that redirects elsewhere does not get the citizen's data sent on: the
    /// redirect's target never sees a request, and the call is the registry's failure.
    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_citizen_in_the_body() {
        let trap = testkit::redirect::RedirectTrap::start().await;
        let client = RegistryClient::new(&trap.url, Duration::from_secs(5)).unwrap();
        let person = Person {
            national_id: "44051401359",
            full_name: "Jan Kowalski",
            birth_date: NaiveDate::from_ymd_opt(1944, 5, 14).unwrap(),
        };
        let answer = client.verify(&person, "request-1").await;
        let reached = trap.reached();
        assert!(
            reached.is_empty(),
            "the redirect was followed: {}",
            String::from_utf8_lossy(&reached.concat())
        );
        match answer {
            Err(RegistryError::Status(status)) => {
                assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
            }
            other => panic!("a redirect is the registry's failure, got {other:?}"),
        }
    }
}
