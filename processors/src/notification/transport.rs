//! The two ways a message leaves: e-mail over SMTP (lettre) and a signed HTTP webhook to a
//! text-message gateway. Both pass the notification id as the provider's idempotency key
//! (`X-Notification-Id`, with `X-Registration-Id`), so a retried delivery is recognised.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;

use super::decide::Message;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// A later attempt may succeed (a 4xx SMTP reply, a 5xx or 429 from the gateway, a
    /// network failure).
    pub retryable: bool,
    /// The least the provider asked us to wait.
    pub at_least: Option<Duration>,
    /// For the operator (no personal data).
    pub message: String,
}

/// Header carrying the notification id (the provider's idempotency key).
pub const NOTIFICATION_ID_HEADER: &str = "X-Notification-Id";
/// Header carrying the registration id.
pub const REGISTRATION_ID_HEADER: &str = "X-Registration-Id";

/// E-mail over SMTP.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A mailer sending through `host:port` (plain SMTP; a local relay or the development
    /// sink) from `from`.
    pub fn new(host: &str, port: u16, from: &str, timeout: Duration) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .build();
        Ok(Mailer {
            transport,
            from: from.parse()?,
        })
    }

    /// Sends `message` to `to`.
    pub async fn send(
        &self,
        to: &str,
        message: &Message,
        notification_id: &str,
        registration_id: &str,
    ) -> Result<(), SendError> {
        let permanent = |message: String| SendError {
            retryable: false,
            at_least: None,
            message,
        };
        let to: Mailbox = to
            .parse()
            .map_err(|_| permanent("the citizen's e-mail address is not usable".into()))?;
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.clone())
            .message_id(Some(message_id(notification_id, &self.from)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(NOTIFICATION_ID_HEADER),
                notification_id.to_owned(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(REGISTRATION_ID_HEADER),
                registration_id.to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(
                message.text.clone(),
                message.html.clone(),
            ))
            .map_err(|e| permanent(format!("the message could not be built: {e}")))?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| SendError {
                retryable: !e.is_permanent(),
                at_least: None,
                message: format!("the mail server refused or failed: {e}"),
            })
    }
}

/// The e-mail's `Message-ID` (RFC 5322 §3.6.4): `<notification id@sender's domain>`. The
/// same for every delivery of one notification, so a provider's de-duplication can use it
/// and a retry carries the same one.
fn message_id(notification_id: &str, from: &Mailbox) -> String {
    format!("<{notification_id}@{}>", from.email.domain())
}

/// A signed webhook to a text-message gateway: `POST` a JSON body with
/// `X-Signature-Timestamp` (unix seconds) and `X-Signature` =
/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>\n<notification id>\n<registration id>\n<body>")>`,
/// so neither the body nor the ids can be changed in transit.
#[derive(Clone)]
pub struct Webhook {
    http: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

/// `sha256=<hex of HMAC-SHA256(secret, "<timestamp>\n<notification id>\n<registration
/// id>\n<body>")>`: the webhook signature. A line feed cannot occur in a header value, so no
/// two deliveries sign the same text (a `.` could: registration ids hold one).
pub fn sign(
    secret: &[u8],
    timestamp: i64,
    notification_id: &str,
    registration_id: &str,
    body: &[u8],
) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    for part in [
        timestamp.to_string().as_bytes(),
        notification_id.as_bytes(),
        registration_id.as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", streams::crypto::to_hex(&digest))
}

impl Webhook {
    /// A webhook to `url`, signed with `secret`.
    pub fn new(url: &str, secret: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Webhook {
            http: reqwest::Client::builder()
                // A redirect would send the phone number and the message on to wherever it
                // points: a redirect is the gateway's failure, never followed.
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .build()?,
            url: url.to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// Posts `message` for the phone `to`.
    pub async fn send(
        &self,
        to: &str,
        message: &Message,
        notification_id: &str,
        registration_id: &str,
    ) -> Result<(), SendError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "to": to,
            "subject": message.subject,
            "text": message.text,
        }))
        .expect("JSON serializes");
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(NOTIFICATION_ID_HEADER, notification_id)
            .header(REGISTRATION_ID_HEADER, registration_id)
            .header("X-Signature-Timestamp", timestamp.to_string())
            .header(
                "X-Signature",
                sign(
                    &self.secret,
                    timestamp,
                    notification_id,
                    registration_id,
                    &body,
                ),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| SendError {
                retryable: true,
                at_least: None,
                message: format!("the gateway could not be reached: {}", e.without_url()),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let at_least = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(SendError {
            retryable: status.is_server_error() || status.as_u16() == 429,
            at_least,
            message: format!("the gateway answered {status}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_ids_and_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"dev-webhook-secret", b"1700000000\nn-1\nmazowieckie.r-1\n{\"a\":1}",
        // hashlib.sha256).hexdigest())'
        assert_eq!(
            sign(
                b"dev-webhook-secret",
                1_700_000_000,
                "n-1",
                "mazowieckie.r-1",
                br#"{"a":1}"#
            ),
            format!("sha256={}", EXPECTED)
        );
    }

    const EXPECTED: &str = "4279d73c80f08054f9a546340fe4f227027c6bc8ab4c1ed52f9ab1c792c9f30f";

    /// A gateway that redirects elsewhere does not get the phone number and the message sent
    /// on: the redirect's target never sees a request, and the delivery failed.
    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_message_in_the_body() {
        let trap = testkit::redirect::RedirectTrap::start().await;
        let webhook = Webhook::new(
            &format!("{}/webhook", trap.url),
            "secret",
            Duration::from_secs(5),
        )
        .unwrap();
        let message = Message {
            subject: "Your registration".into(),
            text: "Your place is reserved.".into(),
            html: "<p>Your place is reserved.</p>".into(),
        };
        let sent = webhook
            .send("+48600100200", &message, "n-1", "mazowieckie.r-1")
            .await;
        let reached = trap.reached();
        assert!(
            reached.is_empty(),
            "the redirect was followed: {}",
            String::from_utf8_lossy(&reached.concat())
        );
        let failed = sent.expect_err("a redirect is not a delivery");
        assert!(!failed.retryable, "{failed:?}");
    }
}
