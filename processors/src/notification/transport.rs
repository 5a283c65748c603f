//! The two ways a message leaves: e-mail over SMTP (lettre) and a signed HTTP webhook to a
//! text-message gateway. Both pass the notification id as the provider's idempotency key
//! (`X-Notification-Id`, with `X-Registration-Id`), so a retried delivery is recognised.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sha2::Sha256;
use streams::outside::OutsideError;

use super::decide::Message;

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    /// A later attempt may succeed (a 4xx SMTP reply, a 5xx or 429 from the gateway, a
    /// network failure).
    pub retryable: bool,
    /// The least the provider asked us to wait.
    pub at_least: Option<Duration>,
    /// What failed, as the dead letter records it: a code and a fixed sentence, none of the
    /// provider's own words (a reply may echo the address, at any length).
    pub error: OutsideError,
}

/// The failure of an exchange with the mail server.
fn smtp_error(err: &lettre::transport::smtp::Error) -> OutsideError {
    match err.status() {
        Some(code) if err.is_permanent() => OutsideError::new(
            format!("smtp_{code}"),
            "the mail server refused the message for good",
        ),
        Some(code) => OutsideError::new(
            format!("smtp_{code}"),
            "the mail server refused the message for now",
        ),
        None if err.is_timeout() => {
            OutsideError::new("smtp_timeout", "the mail server did not answer in time")
        }
        None if err.is_response() => OutsideError::new(
            "smtp_bad_reply",
            "the mail server's reply could not be read (malformed or too long)",
        ),
        None => OutsideError::new("smtp_unreachable", "the mail server could not be reached"),
    }
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
    /// sink) from `from`, over at most `connections` SMTP sessions kept open and reused: a
    /// message then costs its envelope and its data, not a connection, a greeting and a
    /// `QUIT` each.
    pub fn new(
        host: &str,
        port: u16,
        from: &str,
        timeout: Duration,
        connections: u32,
    ) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(connections.max(1)))
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
        let permanent = |code: &str, reason: &'static str| SendError {
            retryable: false,
            at_least: None,
            error: OutsideError::new(code, reason),
        };
        let to: Mailbox = to.parse().map_err(|_| {
            permanent(
                "email_address_unusable",
                "the citizen's e-mail address is not usable",
            )
        })?;
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
            .map_err(|_| {
                permanent(
                    "email_unbuildable",
                    "the message could not be built from its parts",
                )
            })?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| SendError {
                retryable: !e.is_permanent(),
                at_least: None,
                error: smtp_error(&e),
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
                error: if e.is_timeout() {
                    OutsideError::new("webhook_timeout", "the gateway did not answer in time")
                } else {
                    OutsideError::new("webhook_unreachable", "the gateway could not be reached")
                },
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
            error: OutsideError::new(
                format!("webhook_http_{}", status.as_u16()),
                if status.is_redirection() {
                    "the gateway answered a redirect, which is not followed"
                } else {
                    "the gateway answered an HTTP error status"
                },
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message to send.
    fn reserved() -> Message {
        Message {
            subject: "Your registration".into(),
            text: "Your place is reserved.".into(),
            html: "<p>Your place is reserved.</p>".into(),
        }
    }

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

    /// A one-connection SMTP server that takes a message and refuses it with a permanent
    /// `550` echoing `echo` on line after line (as some providers echo the recipient), about
    /// 97 KB in all: under lettre's 100,000-byte cap on a reply, over JetStream's 64 KiB
    /// message limit. Returns its port.
    async fn refusing_smtp_server(echo: String) -> u16 {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"220 refusing.test ESMTP\r\n")
                .await
                .unwrap();
            let mut in_data = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    let text = format!("5.1.1 <{echo}> unknown here, {}", "x".repeat(400));
                    let mut refusal = String::new();
                    while refusal.len() < 96_000 {
                        refusal.push_str(&format!("550-{text}\r\n"));
                    }
                    refusal.push_str(&format!("550 {text}\r\n"));
                    refusal
                } else if line.starts_with("DATA") {
                    in_data = true;
                    "354 go ahead\r\n".to_owned()
                } else if line.starts_with("QUIT") {
                    "221 bye\r\n".to_owned()
                } else {
                    "250 OK\r\n".to_owned()
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        port
    }

    /// Given a mail server whose refusal echoes the citizen's address and is about 100 KiB
    /// long, when a message is refused, then the failure kept for the dead letter is short
    /// and holds no trace of the echo, so its record fits in one JetStream message and the
    /// decision is dead-lettered instead of retried forever.
    #[tokio::test]
    async fn an_smtp_refusal_echoing_the_address_is_kept_as_a_short_code() {
        let address = "jan.kowalski@example.pl";
        let port = refusing_smtp_server(address.to_owned()).await;
        let mailer = Mailer::new(
            "127.0.0.1",
            port,
            "Rejestracja <no-reply@rejestracja.example>",
            Duration::from_secs(10),
            1,
        )
        .unwrap();
        let message = reserved();
        let failed = mailer
            .send(address, &message, "n-1", "mazowieckie.r-1")
            .await
            .expect_err("the server refuses every message");
        assert!(!failed.retryable, "a 550 is permanent: {failed:?}");
        assert_eq!(failed.error.code(), "smtp_550");
        let kept = failed.to_string();
        assert!(kept.len() <= 200, "{} bytes kept", kept.len());
        for echoed in [address, "xxxx"] {
            assert!(!kept.contains(echoed), "{echoed} in {kept}");
        }
    }

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
        let message = reserved();
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
        assert_eq!(failed.error.code(), "webhook_http_307");
    }
}
