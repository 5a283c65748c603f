//! Capabilities and protection of personal data.
//!
//! All keys derive from one server secret (`REG_SECRET`) with HMAC-SHA256 and a purpose label,
//! so every replica of every service that holds the secret agrees without a lookup:
//! - a registration's **token** is a MAC of its id: any replica verifies it offline;
//! - a **citizen key** is a MAC of the national id: uniqueness is enforced on it, and the log
//!   never holds the national id in clear;
//! - a **digest** is a keyed hash of anything derived from personal data (the canonical
//!   request, an idempotency key): a plain hash of a PESEL-bearing request could be
//!   recovered by trying the 10⁴ PESELs of a birth date, a keyed one cannot without the
//!   secret;
//! - **personal data** is sealed with ChaCha20-Poly1305 under the data key, bound to the
//!   registration id as associated data.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::events::{PersonalData, Sealed};
use crate::model::RegistrationId;

type HmacSha256 = Hmac<Sha256>;

/// The development secret used when `REG_SECRET` is unset. `deploy/up` says so loudly; never
/// use it in production.
pub const DEVELOPMENT_SECRET: &str = "development-only-secret-change-me";

/// The operator token used when `REG_ADMIN_TOKEN` is unset (development mode only).
pub const DEVELOPMENT_ADMIN_TOKEN: &str = "dev-admin-token";

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identifier of the data key in use, recorded in every [`Sealed`] block.
const DATA_KEY_ID: &str = "k1";
/// Bytes of MAC kept in a token: 128 bits.
const TOKEN_BYTES: usize = 16;

/// Keys derived from the server secret. Cheap to clone; never printed.
#[derive(Clone)]
pub struct Keys {
    token: [u8; 32],
    citizen: [u8; 32],
    digest: [u8; 32],
    data: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

/// A sealed block that does not open: wrong key, wrong registration, or tampered.
#[derive(Debug, thiserror::Error)]
#[error("sealed personal data could not be opened (wrong key, wrong registration or tampered)")]
pub struct OpenError;

fn derive(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

fn mac(key: &[u8; 32], message: &[u8]) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac
}

impl Keys {
    /// Derives every key from the server secret.
    pub fn from_secret(secret: &str) -> Self {
        let secret = secret.as_bytes();
        Keys {
            token: derive(secret, "registration-token/v1"),
            citizen: derive(secret, "citizen-key/v1"),
            digest: derive(secret, "digest/v1"),
            data: derive(secret, "personal-data/v1"),
        }
    }

    /// The token (capability) for a registration: base64url of a truncated HMAC of its id.
    pub fn token(&self, id: &RegistrationId) -> String {
        let tag = mac(&self.token, id.as_str().as_bytes())
            .finalize()
            .into_bytes();
        B64.encode(&tag[..TOKEN_BYTES])
    }

    /// Checks a token in constant time.
    pub fn verify_token(&self, id: &RegistrationId, token: &str) -> bool {
        let Ok(bytes) = B64.decode(token.as_bytes()) else {
            return false;
        };
        bytes.len() == TOKEN_BYTES
            && mac(&self.token, id.as_str().as_bytes())
                .verify_truncated_left(&bytes)
                .is_ok()
    }

    /// The citizen key for a national id: 32 hex digits, stable for a given secret.
    pub fn citizen_key(&self, national_id: &str) -> String {
        let tag = mac(&self.citizen, national_id.as_bytes())
            .finalize()
            .into_bytes();
        hex::encode(&tag[..16])
    }

    /// A keyed hash of `bytes` for `purpose` (e.g. `request`, `idempotency-key`): 64 hex
    /// digits, stable for a given secret, different per purpose.
    pub fn digest(&self, purpose: &str, bytes: &[u8]) -> String {
        let mut mac = mac(&self.digest, purpose.as_bytes());
        mac.update(&[0]);
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Seals personal data for one registration.
    pub fn seal(&self, id: &RegistrationId, data: &PersonalData) -> Sealed {
        let cipher = ChaCha20Poly1305::new((&self.data).into());
        let nonce_bytes: [u8; 12] = rand::random();
        // Serialised and encrypted in place in the thread's scratch buffer: the 4 kB block
        // costs one allocation, its base64 text.
        let ciphertext = crate::scratch::with(|buffer| {
            serde_json::to_writer(&mut *buffer, data).expect("personal data serializes");
            cipher
                .encrypt_in_place(
                    Nonce::from_slice(&nonce_bytes),
                    id.as_str().as_bytes(),
                    buffer,
                )
                .expect("encryption with a valid key cannot fail");
            B64.encode(&buffer[..])
        });
        Sealed {
            key_id: DATA_KEY_ID.to_owned(),
            nonce: B64.encode(nonce_bytes),
            ciphertext,
        }
    }

    /// Opens a sealed block of registration `id`.
    pub fn open(&self, id: &RegistrationId, sealed: &Sealed) -> Result<PersonalData, OpenError> {
        if sealed.key_id != DATA_KEY_ID {
            return Err(OpenError);
        }
        let nonce = B64.decode(&sealed.nonce).map_err(|_| OpenError)?;
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| OpenError)?;
        if nonce.len() != 12 {
            return Err(OpenError);
        }
        let cipher = ChaCha20Poly1305::new((&self.data).into());
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: id.as_str().as_bytes(),
                },
            )
            .map_err(|_| OpenError)?;
        serde_json::from_slice(&plaintext).map_err(|_| OpenError)
    }
}

/// Lowercase hex of `bytes` (one allocation, where collecting `format!("{b:02x}")` made one
/// per byte on the edge's path).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Lowercase hex SHA-256 of `bytes`, for what holds no personal data (ETags); anything
/// derived from personal data takes [`Keys::digest`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Region;

    fn id() -> RegistrationId {
        RegistrationId::generate(&Region::parse("lodzkie").unwrap())
    }

    fn personal() -> PersonalData {
        PersonalData {
            national_id: "44051401359".into(),
            full_name: "Jan Kowalski".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1944, 5, 14).unwrap(),
            email: Some("jan@example.pl".into()),
            phone: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn digests_need_the_secret_and_differ_per_purpose() {
        let keys = Keys::from_secret("s1");
        let d = keys.digest("request", b"44051401359");
        assert_eq!(d.len(), 64);
        assert_eq!(d, keys.digest("request", b"44051401359"));
        assert_ne!(d, keys.digest("idempotency-key", b"44051401359"));
        assert_ne!(d, Keys::from_secret("s2").digest("request", b"44051401359"));
        assert_ne!(d, sha256_hex(b"44051401359"), "not the plain hash");
    }

    #[test]
    fn tokens_verify_only_for_their_registration_and_secret() {
        let keys = Keys::from_secret("s1");
        let (a, b) = (id(), id());
        let token = keys.token(&a);
        assert!(keys.verify_token(&a, &token));
        assert!(!keys.verify_token(&b, &token));
        assert!(!Keys::from_secret("s2").verify_token(&a, &token));
        assert!(!keys.verify_token(&a, ""));
        assert!(!keys.verify_token(&a, "not base64 !"));
        assert!(!keys.verify_token(&a, &token[..10]));
    }

    #[test]
    fn sealed_data_opens_only_for_its_registration() {
        let keys = Keys::from_secret("s1");
        let (a, b) = (id(), id());
        let sealed = keys.seal(&a, &personal());
        assert!(!sealed.ciphertext.contains("Kowalski"));
        assert_eq!(keys.open(&a, &sealed).unwrap(), personal());
        assert!(keys.open(&b, &sealed).is_err());
        assert!(Keys::from_secret("s2").open(&a, &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.ciphertext.replace_range(0..2, "AA");
        assert!(keys.open(&a, &tampered).is_err());
    }

    #[test]
    fn citizen_keys_are_stable_and_hide_the_national_id() {
        let keys = Keys::from_secret("s1");
        let k = keys.citizen_key("44051401359");
        assert_eq!(k, keys.citizen_key("44051401359"));
        assert_ne!(k, keys.citizen_key("02070803628"));
        assert_eq!(k.len(), 32);
        assert!(!k.contains("44051401359"));
    }
}
