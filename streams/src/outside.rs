//! Failures of outside systems (the government registry, the mail relay, the text-message
//! gateway) as events record them: a bounded code and a fixed sentence per code, never the
//! outside system's own words. Those may echo personal data (an e-mail address, a name, a
//! national id) into the immutable log, and be of any length: a 100 KiB reply does not fit
//! in one JetStream message ([`crate::config::MAX_MESSAGE_BYTES`]), so its record would be
//! retried forever and the registration would never reach its outcome.
//!
//! Codes are lowercase ASCII letters, digits and `_`, at most [`MAX_CODE_LEN`] long, named
//! `<system>_<what>` (`registry_timeout`, `registry_http_503`, `smtp_550`,
//! `webhook_http_307`); the reason is one sentence per code, at most [`MAX_REASON_LEN`]
//! long, written by this project.

use std::fmt;

/// The longest code kept.
pub const MAX_CODE_LEN: usize = 40;
/// The longest reason kept.
pub const MAX_REASON_LEN: usize = 160;
/// The code shown for a failure recorded before failures had codes.
pub const UNCLASSIFIED: &str = "unclassified";
/// The reason shown for a failure recorded before failures had codes: its text came from the
/// outside system and is not shown.
pub const UNCLASSIFIED_REASON: &str =
    "recorded before failures had codes; the outside system's words are not shown";

/// A failure of an outside system, as it may be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsideError {
    code: String,
    reason: &'static str,
}

impl OutsideError {
    /// `code` (anything but lowercase ASCII letters, digits and `_` dropped, cut at
    /// [`MAX_CODE_LEN`]) with its fixed `reason` (cut at [`MAX_REASON_LEN`]).
    pub fn new(code: impl AsRef<str>, reason: &'static str) -> OutsideError {
        OutsideError {
            code: bounded_code(code.as_ref()),
            reason: cut(reason, MAX_REASON_LEN),
        }
    }

    /// The code, e.g. `smtp_550`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The fixed sentence of the code.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for OutsideError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

/// The code and reason to show for a recorded `(error_code, last_error)`: an event written
/// before codes existed (no code) holds the outside system's own words, which are not shown;
/// anything else is bounded again, whoever wrote it.
pub fn shown(error_code: &str, last_error: &str) -> (String, String) {
    if error_code.is_empty() {
        return (UNCLASSIFIED.to_owned(), UNCLASSIFIED_REASON.to_owned());
    }
    (
        bounded_code(error_code),
        cut(last_error, MAX_REASON_LEN).to_owned(),
    )
}

fn bounded_code(code: &str) -> String {
    let kept: String = code
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .take(MAX_CODE_LEN)
        .collect();
    if kept.is_empty() {
        UNCLASSIFIED.to_owned()
    } else {
        kept
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_are_bounded_and_old_words_are_not_shown() {
        let e = OutsideError::new(
            "smtp_550",
            "the mail server refused the message permanently",
        );
        assert_eq!(e.code(), "smtp_550");
        assert_eq!(
            e.to_string(),
            "the mail server refused the message permanently (smtp_550)"
        );
        let long = "x".repeat(1000);
        assert_eq!(OutsideError::new(&long, "r").code().len(), MAX_CODE_LEN);
        assert_eq!(OutsideError::new("smtp_550\r\n", "r").code(), "smtp_550");
        assert_eq!(OutsideError::new("@<>", "r").code(), UNCLASSIFIED);
        assert_eq!(
            shown("", "550 jan.kowalski@example.pl unknown"),
            (UNCLASSIFIED.to_owned(), UNCLASSIFIED_REASON.to_owned())
        );
        let (code, reason) = shown("registry_timeout", &"ż".repeat(200));
        assert_eq!(code, "registry_timeout");
        assert!(reason.len() <= MAX_REASON_LEN && reason.chars().all(|c| c == 'ż'));
    }
}
