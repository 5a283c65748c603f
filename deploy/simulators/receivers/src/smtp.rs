//! The SMTP sink: enough of RFC 5321 over plain TCP for a real client (lettre's tokio
//! transport, no TLS, no AUTH) to deliver notifications, with the limits a real server has.
//!
//! One task per connection reads a line at a time (each at most [`MAX_LINE_BYTES`]) and
//! answers it before reading the next, so a client that pipelines anyway is answered in
//! order. The message is read whole (dot-unstuffed, at most [`MAX_MESSAGE_BYTES`] kept), and
//! only then decided: stored, acknowledged as a duplicate, refused, or failed by the knob.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::counts::Outcome;
use crate::receivers::{Receivers, Transport};
use crate::store;
use crate::wire::{NOTIFICATION_ID_HEADER, REGISTRATION_ID_HEADER, is_valid_id};

/// The largest message accepted, in bytes after dot-unstuffing (advertised as `SIZE`): a
/// larger one is read to its end and refused with `552`.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The longest line, command or message text, with its CRLF (RFC 5321 §4.5.3.1.6): a longer
/// command gets `500`, a message with a longer line is refused with `500` at its end.
pub const MAX_LINE_BYTES: usize = 1000;
/// The most recipients of one message: the next `RCPT` gets `452`.
pub const MAX_RECIPIENTS: usize = 100;
/// How long a session may wait for a line before it is told `421` and closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How many bad commands (`5xx` answers to commands) a session may send before it is
/// closed with `421`.
pub const MAX_BAD_COMMANDS: u32 = 20;
/// The name the sink gives itself in its greeting and EHLO answer.
pub const SERVER_NAME: &str = "receivers.localhost";

/// Accepts SMTP sessions on `listener` until `shutdown` is cancelled, then waits for the
/// sessions to end (those waiting for a command end at once with `421`).
pub(crate) async fn serve(
    receivers: Receivers,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let session = Session::new(receivers.clone(), stream, peer, shutdown.clone());
                    sessions.spawn(session.run());
                }
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // back off a little rather than spin.
                    tracing::warn!(%error, "accepting an SMTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(ended) = sessions.join_next(), if !sessions.is_empty() => log_end(ended),
        }
    }
    drop(listener);
    while let Some(ended) = sessions.join_next().await {
        log_end(ended);
    }
    Ok(())
}

fn log_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(error) = ended {
        tracing::error!(%error, "an SMTP session panicked");
    }
}

/// One answer: a code and its text lines (more than one for EHLO).
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index + 1 == self.lines.len() {
                ' '
            } else {
                '-'
            };
            out.push_str(&format!("{}{separator}{line}\r\n", self.code));
        }
        out.into_bytes()
    }
}

/// How a command line was answered.
#[derive(Debug)]
enum Answer {
    /// An answer to the command itself.
    Command(Reply),
    /// The final answer to a message sent after DATA.
    Message(Reply),
    /// The client went away in the middle of a message.
    Gone,
}

/// The envelope of the message being built (after MAIL FROM).
#[derive(Debug)]
struct Transaction {
    recipients: usize,
}

/// A message as read after `354`, with what went wrong reading it.
#[derive(Debug, Default)]
struct Received {
    /// The message, dot-unstuffed; at most [`MAX_MESSAGE_BYTES`] (kept from its start).
    raw: Vec<u8>,
    /// It was longer than [`MAX_MESSAGE_BYTES`].
    oversize: bool,
    /// One of its lines was longer than [`MAX_LINE_BYTES`] (and is missing from `raw`).
    line_too_long: bool,
}

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line, through its LF, is in the buffer.
    Complete,
    /// The line was longer than the limit: it was read to its end and dropped.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one line, through its LF, into `line` (cleared first) if it is at most `max`
/// bytes; a longer line is consumed to its end without being kept.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    line.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (used, ended) = match available.iter().position(|byte| *byte == b'\n') {
            Some(end) => (end + 1, true),
            None => (available.len(), false),
        };
        if !too_long {
            if line.len() + used > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&available[..used]);
            }
        }
        reader.consume(used);
        if ended {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

/// A line without its line ending (CRLF, or a bare LF).
fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// One client connection.
struct Session<S> {
    receivers: Receivers,
    stream: BufReader<S>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    greeted: bool,
    transaction: Option<Transaction>,
    bad_commands: u32,
    line: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(
        receivers: Receivers,
        stream: S,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Session<S> {
        Session {
            receivers,
            stream: BufReader::new(stream),
            peer,
            shutdown,
            greeted: false,
            transaction: None,
            bad_commands: 0,
            line: Vec::with_capacity(MAX_LINE_BYTES),
        }
    }

    async fn run(mut self) {
        let peer = self.peer;
        match self.converse().await {
            Ok(()) => tracing::debug!(%peer, "SMTP session ended"),
            Err(error) => tracing::debug!(%peer, %error, "SMTP session broke off"),
        }
    }

    async fn converse(&mut self) -> io::Result<()> {
        self.send(&Reply::new(
            220,
            format!("{SERVER_NAME} ESMTP receivers SMTP sink ready"),
        ))
        .await?;
        loop {
            let read = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    return self.send(&Reply::new(421, "4.3.2 shutting down")).await;
                }
                read = tokio::time::timeout(
                    IDLE_TIMEOUT,
                    read_line(&mut self.stream, &mut self.line, MAX_LINE_BYTES),
                ) => read,
            };
            let reply = match read {
                Err(_elapsed) => {
                    return self
                        .send(&Reply::new(421, "4.4.2 idle for too long: closing"))
                        .await;
                }
                Ok(read) => match read? {
                    Line::Eof => return Ok(()),
                    Line::TooLong => {
                        self.bad_commands += 1;
                        Reply::new(
                            500,
                            format!(
                                "5.5.6 line too long: at most {MAX_LINE_BYTES} octets with CRLF"
                            ),
                        )
                    }
                    Line::Complete => match self.command().await? {
                        Some(reply) => reply,
                        None => return Ok(()),
                    },
                },
            };
            if self.bad_commands > MAX_BAD_COMMANDS {
                return self
                    .send(&Reply::new(421, "4.7.0 too many bad commands: closing"))
                    .await;
            }
            let close = reply.code == 221;
            self.send(&reply).await?;
            if close {
                return Ok(());
            }
        }
    }

    async fn send(&mut self, reply: &Reply) -> io::Result<()> {
        self.stream.write_all(&reply.to_bytes()).await?;
        self.stream.flush().await
    }

    /// Answers the command in `self.line`; `None` when the client went away during DATA. A
    /// command answered `500`..`504` or `555` counts as a bad command (a refused message
    /// does not).
    async fn command(&mut self) -> io::Result<Option<Reply>> {
        let reply = match self.answer().await? {
            Answer::Command(reply) => reply,
            Answer::Message(reply) => return Ok(Some(reply)),
            Answer::Gone => return Ok(None),
        };
        if matches!(reply.code, 500..=504 | 555) {
            self.bad_commands += 1;
        }
        Ok(Some(reply))
    }

    async fn answer(&mut self) -> io::Result<Answer> {
        // A copy (at most MAX_LINE_BYTES): the session changes while the command is answered.
        let Ok(line) = String::from_utf8(trim_line_ending(&self.line).to_vec()) else {
            return Ok(Answer::Command(Reply::new(
                500,
                "5.5.2 syntax error: a command is UTF-8 text",
            )));
        };
        let (verb, argument) = match line.split_once(' ') {
            Some((verb, argument)) => (verb, argument.trim()),
            None => (line.as_str(), ""),
        };
        let reply = match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if argument.is_empty() => Reply::new(
                501,
                format!("5.5.4 {verb} needs a domain or address literal"),
            ),
            "EHLO" => {
                self.greeted = true;
                self.transaction = None;
                Reply {
                    code: 250,
                    lines: vec![
                        format!("{SERVER_NAME} greets {argument}"),
                        "8BITMIME".to_owned(),
                        "ENHANCEDSTATUSCODES".to_owned(),
                        "SMTPUTF8".to_owned(),
                        format!("SIZE {MAX_MESSAGE_BYTES}"),
                    ],
                }
            }
            "HELO" => {
                self.greeted = true;
                self.transaction = None;
                Reply::new(250, SERVER_NAME)
            }
            "MAIL" => self.mail(argument),
            "RCPT" => self.rcpt(argument),
            "DATA" => match self.data_refusal(argument) {
                Some(refusal) => refusal,
                None => return self.data().await,
            },
            "RSET" => {
                self.transaction = None;
                Reply::new(250, "2.0.0 OK")
            }
            "NOOP" => Reply::new(250, "2.0.0 OK"),
            "QUIT" => Reply::new(221, "2.0.0 bye"),
            "VRFY" => Reply::new(252, "2.5.0 cannot VRFY, but will take a message"),
            "HELP" => Reply::new(
                214,
                "2.0.0 commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
            ),
            "STARTTLS" | "AUTH" | "BDAT" | "EXPN" | "ETRN" | "TURN" => {
                Reply::new(502, "5.5.1 command not implemented")
            }
            _ => Reply::new(500, "5.5.2 command unrecognized"),
        };
        Ok(Answer::Command(reply))
    }

    fn mail(&mut self, argument: &str) -> Reply {
        if !self.greeted {
            return Reply::new(503, "5.5.1 send EHLO or HELO first");
        }
        if self.transaction.is_some() {
            return Reply::new(503, "5.5.1 a message is already started: RSET first");
        }
        let Some((_reverse_path, parameters)) = parse_path(argument, "FROM:") else {
            return Reply::new(501, "5.5.4 syntax: MAIL FROM:<address> [parameters]");
        };
        for parameter in parameters.split_ascii_whitespace() {
            let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(size) if size > MAX_MESSAGE_BYTES as u64 => {
                        return Reply::new(
                            552,
                            format!(
                                "5.3.4 message size exceeds the {MAX_MESSAGE_BYTES}-byte limit"
                            ),
                        );
                    }
                    Ok(_) => {}
                    Err(_) => return Reply::new(501, "5.5.4 SIZE takes a number of octets"),
                },
                "BODY" if ["7BIT", "8BITMIME"].contains(&value.to_ascii_uppercase().as_str()) => {}
                "SMTPUTF8" if value.is_empty() => {}
                _ => {
                    return Reply::new(
                        555,
                        format!("5.5.4 unsupported MAIL parameter {parameter}"),
                    );
                }
            }
        }
        self.transaction = Some(Transaction { recipients: 0 });
        Reply::new(250, "2.1.0 OK")
    }

    fn rcpt(&mut self, argument: &str) -> Reply {
        let Some(transaction) = &mut self.transaction else {
            return Reply::new(503, "5.5.1 send MAIL first");
        };
        let Some((forward_path, parameters)) = parse_path(argument, "TO:") else {
            return Reply::new(501, "5.5.4 syntax: RCPT TO:<address>");
        };
        if forward_path.is_empty() {
            return Reply::new(501, "5.1.3 a recipient needs an address");
        }
        if !parameters.is_empty() {
            return Reply::new(
                555,
                format!("5.5.4 unsupported RCPT parameters {parameters}"),
            );
        }
        if transaction.recipients >= MAX_RECIPIENTS {
            return Reply::new(
                452,
                format!("4.5.3 too many recipients: at most {MAX_RECIPIENTS}"),
            );
        }
        transaction.recipients += 1;
        Reply::new(250, "2.1.5 OK")
    }

    /// Why DATA cannot start now, if it cannot.
    fn data_refusal(&self, argument: &str) -> Option<Reply> {
        if !argument.is_empty() {
            return Some(Reply::new(501, "5.5.4 DATA takes no argument"));
        }
        match &self.transaction {
            None => Some(Reply::new(503, "5.5.1 send MAIL first")),
            Some(transaction) if transaction.recipients == 0 => {
                Some(Reply::new(503, "5.5.1 send RCPT first"))
            }
            Some(_) => None,
        }
    }

    /// Takes the message and decides it.
    async fn data(&mut self) -> io::Result<Answer> {
        self.send(&Reply::new(354, "end data with <CR><LF>.<CR><LF>"))
            .await?;
        let Some(received) = self.read_message().await? else {
            return Ok(Answer::Gone);
        };
        self.transaction = None;
        Ok(Answer::Message(deliver(&self.receivers, received).await))
    }

    /// Reads the message up to its lone `.`; `None` if the client went away first.
    async fn read_message(&mut self) -> io::Result<Option<Received>> {
        let mut received = Received::default();
        loop {
            let read = tokio::time::timeout(
                IDLE_TIMEOUT,
                read_line(&mut self.stream, &mut self.line, MAX_LINE_BYTES),
            )
            .await
            .map_err(|_elapsed| io::Error::new(io::ErrorKind::TimedOut, "idle during DATA"))??;
            match read {
                Line::Eof => return Ok(None),
                Line::TooLong => received.line_too_long = true,
                Line::Complete => {
                    if trim_line_ending(&self.line) == b"." {
                        return Ok(Some(received));
                    }
                    let text = self.line.strip_prefix(b".").unwrap_or(&self.line);
                    if received.raw.len() + text.len() > MAX_MESSAGE_BYTES {
                        received.oversize = true;
                    } else if !received.oversize {
                        received.raw.extend_from_slice(text);
                    }
                }
            }
        }
    }
}

/// Splits `MAIL FROM:<path> params` (after the verb) into the path and the parameters:
/// `keyword` (`FROM:` or `TO:`) case-insensitively, then `<path>`, where the path may be
/// empty (the null reverse path) but holds no angle brackets or spaces.
fn parse_path<'a>(argument: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start().strip_prefix('<')?;
    let (path, parameters) = rest.split_once('>')?;
    if path.contains(['<', ' ', '\t']) {
        return None;
    }
    if !parameters.is_empty() && !parameters.starts_with(' ') {
        return None;
    }
    Some((path, parameters.trim()))
}

/// Decides a message read in full: the knob first (a temporary failure hides everything
/// else, as an unavailable provider would), then the limits, then the id headers, then
/// whether its notification id is stored already.
async fn deliver(receivers: &Receivers, received: Received) -> Reply {
    let notification_id = header(&received.raw, NOTIFICATION_ID_HEADER);
    let registration_id = header(&received.raw, REGISTRATION_ID_HEADER);
    let counted = notification_id.as_deref().filter(|id| is_valid_id(id));
    let refuse = |code: u16, text: String| {
        receivers.record(Transport::Smtp, counted, Outcome::Refused);
        tracing::debug!(notification_id = ?counted, code, %text, "refused a message");
        Reply::new(code, text)
    };
    if receivers.fails_by_knob(Transport::Smtp) {
        receivers.record(Transport::Smtp, counted, Outcome::FailedByKnob);
        return Reply::new(451, "4.3.0 temporary failure");
    }
    if received.line_too_long {
        return refuse(
            500,
            format!(
                "5.5.6 line too long: a message line is at most {MAX_LINE_BYTES} octets with CRLF"
            ),
        );
    }
    if received.oversize {
        return refuse(
            552,
            format!("5.3.4 message size exceeds the {MAX_MESSAGE_BYTES}-byte limit"),
        );
    }
    let Some(id) = counted else {
        return refuse(
            550,
            format!("5.7.1 refused: no {NOTIFICATION_ID_HEADER} header with a plain id"),
        );
    };
    if !registration_id.as_deref().is_some_and(is_valid_id) {
        return refuse(
            550,
            format!("5.7.1 refused: no {REGISTRATION_ID_HEADER} header with a plain id"),
        );
    }
    let mail_dir = receivers.mail_dir();
    let stored = {
        let mut stored = receivers.inner.mail.lock().await;
        match receivers.inner.mail_store {
            store::MailStore::Files => {
                store::store_mail(&mut stored, &mail_dir, id, &received.raw).await
            }
            store::MailStore::Mbox => store::store_mbox(&mut stored, id, &received.raw),
        }
    };
    match stored {
        Ok(true) => {
            receivers.record(Transport::Smtp, Some(id), Outcome::Accepted);
            tracing::debug!(notification_id = id, "stored a message");
            Reply::new(250, format!("2.0.0 stored as {id}"))
        }
        Ok(false) => {
            receivers.record(Transport::Smtp, Some(id), Outcome::Duplicate);
            tracing::debug!(
                notification_id = id,
                "a duplicate message: not stored again"
            );
            Reply::new(
                250,
                format!("2.0.0 {id} is already stored: not stored again"),
            )
        }
        Err(error) => {
            tracing::error!(%error, notification_id = id, dir = %mail_dir.display(), "storing a message");
            Reply::new(451, "4.3.0 local error: the message could not be stored")
        }
    }
}

/// The value of the first header `name` (case-insensitive) of the message's header section
/// (up to its first empty line), unfolded and trimmed.
fn header(raw: &[u8], name: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in raw.split(|byte| *byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if let Some(value) = &mut found {
            if continuation {
                value.push_str(&String::from_utf8_lossy(line));
                continue;
            }
            break;
        }
        if continuation {
            continue;
        }
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        if line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            found = Some(String::from_utf8_lossy(&line[colon + 1..]).into_owned());
        }
    }
    found.map(|value| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_case_insensitively_unfolded_and_only_in_the_header_section() {
        let raw = b"From: a@example.org\r\nx-notification-id:  n-1 \r\nSubject: a\r\n long\r\n\tsubject\r\nX-Registration-Id: r-1\r\n\r\nX-Other: body\r\n";
        assert_eq!(header(raw, "X-Notification-Id").as_deref(), Some("n-1"));
        assert_eq!(header(raw, "X-Registration-Id").as_deref(), Some("r-1"));
        assert_eq!(header(raw, "subject").as_deref(), Some("a long\tsubject"));
        assert_eq!(header(raw, "X-Other"), None);
        assert_eq!(header(b"", "X-Other"), None);
        // Bare LF line endings, and the first of two headers wins.
        let raw = b"X-Notification-Id: n-1\nX-Notification-Id: n-2\n\n";
        assert_eq!(header(raw, "X-Notification-Id").as_deref(), Some("n-1"));
        // The header section ends at the first empty line.
        assert_eq!(
            header(b"\r\nX-Notification-Id: n-1\r\n", "X-Notification-Id"),
            None
        );
    }

    #[test]
    fn paths_parse_with_the_null_path_and_parameters() {
        assert_eq!(parse_path("FROM:<a@b>", "FROM:"), Some(("a@b", "")));
        assert_eq!(
            parse_path("from: <a@b> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b", "SIZE=10 BODY=8BITMIME"))
        );
        assert_eq!(parse_path("FROM:<>", "FROM:"), Some(("", "")));
        assert_eq!(
            parse_path("TO:<ż@example.pl>", "TO:"),
            Some(("ż@example.pl", ""))
        );
        for bad in [
            "FROM:a@b",
            "FROM:<a@b",
            "TO:<a@b>",
            "FROM:<a b>",
            "FROM:<a@b>SIZE=1",
            "",
            "FR",
        ] {
            assert_eq!(parse_path(bad, "FROM:"), None, "{bad}");
        }
    }

    #[test]
    fn replies_are_written_one_line_or_many() {
        assert_eq!(Reply::new(250, "2.0.0 OK").to_bytes(), b"250 2.0.0 OK\r\n");
        let many = Reply {
            code: 250,
            lines: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
        };
        assert_eq!(many.to_bytes(), b"250-a\r\n250-b\r\n250 c\r\n");
    }

    #[tokio::test]
    async fn lines_are_read_whole_or_dropped_when_too_long() {
        let input: &[u8] = b"short\r\nmuch too long a line\r\nok\nend-without-newline";
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"short\r\n");
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(
            read_line(&mut reader, &mut line, 10).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"ok\n");
        assert_eq!(
            read_line(&mut reader, &mut line, 100).await.unwrap(),
            Line::Eof
        );
    }
}
