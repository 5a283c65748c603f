//! The wire contract both receivers share with the notification processor: header names,
//! the id rule and the webhook signature (`docs/notifications-receivers.md`).

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The header naming the notification (one per decision and channel): the idempotency key.
/// An e-mail header of the message, and an HTTP header of a webhook delivery.
pub const NOTIFICATION_ID_HEADER: &str = "X-Notification-Id";
/// The header naming the registration the notification is about.
pub const REGISTRATION_ID_HEADER: &str = "X-Registration-Id";
/// The webhook header carrying the signing time, in unix seconds.
pub const SIGNATURE_TIMESTAMP_HEADER: &str = "X-Signature-Timestamp";
/// The webhook header carrying the signature, `sha256=<hex>` (see [`sign`]).
pub const SIGNATURE_HEADER: &str = "X-Signature";
/// The prefix of a signature's value.
pub const SIGNATURE_PREFIX: &str = "sha256=";
/// The path webhook deliveries are posted to.
pub const WEBHOOK_PATH: &str = "/webhook";
/// How far (either way) a signature's timestamp may be from the receiver's clock, in seconds.
pub const MAX_CLOCK_SKEW_S: i64 = 300;
/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

type HmacSha256 = Hmac<Sha256>;

/// The `X-Signature` value of a webhook delivery: `sha256=` and the lowercase hex of
/// HMAC-SHA256 keyed with `secret` over
/// `"<timestamp>\n<notification id>\n<registration id>\n<body>"`, where `timestamp` is the
/// decimal `X-Signature-Timestamp` (unix seconds), the ids are the `X-Notification-Id` and
/// `X-Registration-Id` values (a line feed cannot occur in a header value, so no two
/// deliveries sign the same text) and `body` is the raw request body.
///
/// ```
/// let signature = receivers::sign(
///     b"dev-webhook-secret",
///     1_700_000_000,
///     "n-1",
///     "r-1",
///     br#"{"ok":true}"#,
/// );
/// assert!(signature.starts_with("sha256="));
/// assert_eq!(signature.len(), 7 + 64);
/// ```
pub fn sign(
    secret: &[u8],
    timestamp: i64,
    notification_id: &str,
    registration_id: &str,
    body: &[u8],
) -> String {
    let digest = mac(secret, timestamp, notification_id, registration_id, body)
        .finalize()
        .into_bytes();
    let mut signature = String::with_capacity(SIGNATURE_PREFIX.len() + 2 * digest.len());
    signature.push_str(SIGNATURE_PREFIX);
    for byte in digest {
        signature.push(char::from(HEX[usize::from(byte >> 4)]));
        signature.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    signature
}

/// Whether `signature` (an `X-Signature` value) is
/// [`sign`]`(secret, timestamp, notification_id, registration_id, body)`. The digests are
/// compared in constant time; hex digits may be of either case.
pub fn verify(
    secret: &[u8],
    timestamp: i64,
    notification_id: &str,
    registration_id: &str,
    body: &[u8],
    signature: &str,
) -> bool {
    let Some(digest) = signature
        .strip_prefix(SIGNATURE_PREFIX)
        .and_then(decode_hex)
    else {
        return false;
    };
    mac(secret, timestamp, notification_id, registration_id, body)
        .verify_slice(&digest)
        .is_ok()
}

/// Whether `id` may name a notification or a registration: 1 to [`MAX_ID_LEN`] ASCII
/// letters, digits, `-`, `_` or `.`, not starting with `.` (a UUID fits; a notification id
/// is also a file name in the SMTP sink's directory).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(
    secret: &[u8],
    timestamp: i64,
    notification_id: &str,
    registration_id: &str,
    body: &[u8],
) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    for part in [
        timestamp.to_string().as_bytes(),
        notification_id.as_bytes(),
        registration_id.as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(body);
    mac
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    fn digit(byte: u8) -> Option<u8> {
        match byte {
            b'0'..=b'9' => Some(byte - b'0'),
            b'a'..=b'f' => Some(byte - b'a' + 10),
            b'A'..=b'F' => Some(byte - b'A' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed once with Python:
    /// `hmac.new(b"dev-webhook-secret", b'1700000000\nn-1\nr-1\n{"notification_id":"n-1"}',
    /// hashlib.sha256).hexdigest()`.
    const VECTOR: &str = "sha256=5b1b2d48ab9060befb797f136b5c4816e25b58721b801a6fd1c45a1a7bd5f804";

    #[test]
    fn sign_matches_a_vector_computed_elsewhere() {
        let body = br#"{"notification_id":"n-1"}"#;
        assert_eq!(
            sign(b"dev-webhook-secret", 1_700_000_000, "n-1", "r-1", body),
            VECTOR
        );
        // Another key and an empty body: Python's hmac.new(b"key", b"0\na\nb\n", sha256).
        assert_eq!(
            sign(b"key", 0, "a", "b", b""),
            "sha256=42929b7d0494922ea5b9703a460a6561a5c7e15c552c54bb7b44212bc8748acb"
        );
    }

    #[test]
    fn verify_accepts_only_the_right_signature() {
        let body = br#"{"notification_id":"n-1"}"#;
        let secret = b"dev-webhook-secret";
        let check = |secret: &[u8], ts, nid, rid, body: &[u8], signature: &str| {
            verify(secret, ts, nid, rid, body, signature)
        };
        assert!(check(secret, 1_700_000_000, "n-1", "r-1", body, VECTOR));
        assert!(check(
            secret,
            1_700_000_000,
            "n-1",
            "r-1",
            body,
            &VECTOR.to_uppercase().replace("SHA256=", "sha256=")
        ));
        assert!(!check(b"other", 1_700_000_000, "n-1", "r-1", body, VECTOR));
        assert!(!check(secret, 1_700_000_001, "n-1", "r-1", body, VECTOR));
        assert!(!check(secret, 1_700_000_000, "n-2", "r-1", body, VECTOR));
        assert!(!check(secret, 1_700_000_000, "n-1", "r-2", body, VECTOR));
        assert!(!check(secret, 1_700_000_000, "n-1.r", "1", body, VECTOR));
        assert!(!check(secret, 1_700_000_000, "n-1", "r-1", b"{}", VECTOR));
        assert!(!check(
            secret,
            1_700_000_000,
            "n-1",
            "r-1",
            body,
            &VECTOR[7..]
        ));
        assert!(!check(
            secret,
            1_700_000_000,
            "n-1",
            "r-1",
            body,
            &VECTOR[..VECTOR.len() - 2]
        ));
        assert!(!check(
            secret,
            1_700_000_000,
            "n-1",
            "r-1",
            body,
            &VECTOR.replace('e', "g")
        ));
        assert!(!check(secret, 1_700_000_000, "n-1", "r-1", body, "sha256="));
        assert!(!check(secret, 1_700_000_000, "n-1", "r-1", body, ""));
    }

    #[test]
    fn ids_are_short_plain_tokens() {
        for id in [
            "n-1",
            "0190c1e5-7b2a-7c4d-9e6f-5a4b3c2d1e0f",
            "a.b_c",
            &"x".repeat(128),
        ] {
            assert!(is_valid_id(id), "{id}");
        }
        for id in [
            "",
            ".hidden",
            "../up",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(129),
            "a\r\n",
        ] {
            assert!(!is_valid_id(id), "{id:?}");
        }
    }
}
