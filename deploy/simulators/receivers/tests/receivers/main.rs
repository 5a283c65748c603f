//! The receivers over real sockets: each test serves its own receivers on two port-0
//! listeners with its own data directory, delivers mail with lettre (the client the
//! notification processor uses) or by hand, and webhooks and admin calls with reqwest.

mod admin;
mod smtp;
mod webhook;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use receivers::{Counts, Knobs, MailStore, Receivers};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use simkit::testing::{Reply, Served};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// The secret every test signs with.
const SECRET: &str = "test-webhook-secret";

/// Receivers served in-process, and clients for them (HTTP: the [`Served`] it derefs to).
struct Sim {
    served: Served,
    receivers: Receivers,
    smtp_port: u16,
}

impl std::ops::Deref for Sim {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

async fn start(dir: &Path, knobs: Knobs) -> Sim {
    start_keeping(dir, knobs, MailStore::Files).await
}

async fn start_keeping(dir: &Path, knobs: Knobs, mail_store: MailStore) -> Sim {
    let receivers = Receivers::keeping_mail(dir.to_owned(), knobs, SECRET.to_owned(), mail_store)
        .expect("valid knobs");
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp_port = smtp.local_addr().unwrap().port();
    let served = Served::start({
        let receivers = receivers.clone();
        |http, shutdown| receivers.serve(smtp, http, shutdown)
    })
    .await;
    Sim {
        served,
        receivers,
        smtp_port,
    }
}

fn now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since_epoch.as_secs()).unwrap()
}

/// A notification e-mail as the notification processor would build it; `None` leaves the
/// header out.
fn email(notification_id: Option<&str>, registration_id: Option<&str>, body: &str) -> Message {
    let mut builder = Message::builder()
        .from(
            "Vaccination registrations <noreply@registrations.example>"
                .parse()
                .unwrap(),
        )
        .to("Jan Kowalski <jan.kowalski@example.pl>".parse().unwrap())
        .subject("Your vaccination slot");
    if let Some(id) = notification_id {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Notification-Id"),
            id.to_owned(),
        ));
    }
    if let Some(id) = registration_id {
        builder = builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Registration-Id"),
            id.to_owned(),
        ));
    }
    builder.body(body.to_owned()).unwrap()
}

impl Sim {
    /// lettre's tokio SMTP transport to the sink: plain, no TLS, no AUTH, as the
    /// notification processor will use it.
    fn mailer(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(self.smtp_port)
            .build()
    }

    async fn send(
        &self,
        message: Message,
    ) -> Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error> {
        self.mailer().send(message).await
    }

    /// The `.eml` files in the mail directory, sorted.
    fn eml_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.receivers.mail_dir()) {
            Ok(entries) => entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("{error}"),
        };
        names.sort();
        names
    }

    fn eml(&self, notification_id: &str) -> String {
        std::fs::read_to_string(
            self.receivers
                .mail_dir()
                .join(format!("{notification_id}.eml")),
        )
        .unwrap()
    }

    /// The lines of `deliveries.ndjson`, parsed.
    fn deliveries(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.receivers.webhook_file()) {
            Ok(text) => text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("{error}"),
        }
    }

    /// Posts `body` to `/webhook` with exactly `headers`.
    async fn post_webhook(&self, headers: &[(&str, String)], body: &str) -> Reply {
        let mut request = self
            .client
            .post(format!("{}/webhook", self.base))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        Reply::read(request.send().await.unwrap()).await
    }

    /// Posts a delivery signed with the test secret at `timestamp`.
    async fn post_signed_at(
        &self,
        notification_id: &str,
        registration_id: &str,
        timestamp: i64,
        body: &str,
    ) -> Reply {
        let signature = receivers::sign(
            SECRET.as_bytes(),
            timestamp,
            notification_id,
            registration_id,
            body.as_bytes(),
        );
        let headers = [
            ("X-Notification-Id", notification_id.to_owned()),
            ("X-Registration-Id", registration_id.to_owned()),
            ("X-Signature-Timestamp", timestamp.to_string()),
            ("X-Signature", signature),
        ];
        self.post_webhook(&headers, body).await
    }

    /// Posts a delivery signed now, as the notification processor would.
    async fn post_signed(&self, notification_id: &str, registration_id: &str, body: &str) -> Reply {
        self.post_signed_at(notification_id, registration_id, now(), body)
            .await
    }

    /// The counters, read over HTTP (and checked against the in-process ones).
    async fn counts(&self) -> Counts {
        let reply = self.get("/_sim/counts").await;
        assert_eq!(reply.status, StatusCode::OK);
        let counts: Counts = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(counts, self.receivers.counts());
        counts
    }

    /// A hand-driven SMTP session, greeting read.
    async fn raw_smtp(&self) -> RawSmtp {
        let stream = TcpStream::connect(("127.0.0.1", self.smtp_port))
            .await
            .unwrap();
        let mut session = RawSmtp {
            stream: BufReader::new(stream),
        };
        let (code, lines) = session.reply().await;
        assert_eq!(code, 220, "{lines:?}");
        session
    }

    /// Stops the receivers and checks they ended cleanly.
    async fn stop(self) {
        self.served.stop().await;
    }
}

/// An SMTP client by hand, for what lettre will not send.
struct RawSmtp {
    stream: BufReader<TcpStream>,
}

impl RawSmtp {
    async fn write(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one reply: its code and its text lines.
    async fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = self.stream.read_line(&mut line).await.unwrap();
            assert!(read > 0, "the connection closed; replies so far: {lines:?}");
            assert!(line.ends_with("\r\n"), "{line:?}");
            let code: u16 = line[..3].parse().unwrap();
            let last = &line[3..4] == " ";
            lines.push(line[4..line.len() - 2].to_owned());
            if last {
                return (code, lines);
            }
        }
    }

    /// Sends one command line and reads its reply.
    async fn command(&mut self, line: &str) -> (u16, Vec<String>) {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a command and checks the reply's code.
    async fn expect(&mut self, line: &str, code: u16) -> Vec<String> {
        let (got, lines) = self.command(line).await;
        assert_eq!(got, code, "{line}: {lines:?}");
        lines
    }

    /// Whether the server has closed the connection (reads to its end).
    async fn closed(&mut self) -> bool {
        let mut rest = String::new();
        self.stream.read_line(&mut rest).await.unwrap() == 0
    }
}
