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
//! - **personal data** is sealed with ChaCha20-Poly1305, bound to the registration id as
//!   associated data: since contract 1.2 under the registration's **own key**, a random key
//!   wrapped under the data key and stored on a subject of its own beside the registration
//!   ([`crate::seals`]), so that destroying that one message erases the registration's
//!   personal data from an immutable log ([`Keys::seal_own`]); blocks written before were
//!   sealed under the data key itself ([`Keys::seal`]) and still open.

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
/// The identifier of a block sealed under its registration's own key ([`Keys::seal_own`]).
const OWN_KEY_ID: &str = "r1";
/// Associated-data prefix of a wrapped own key: a wrapped key is bound to its registration.
const WRAP_AAD: &str = "own-key/v1:";
/// Bytes of a wrapped own key: a nonce, the 32-byte key, the tag.
const WRAPPED_LEN: usize = 12 + 32 + 16;
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

    /// Seals personal data for one registration under the data key itself: the format of
    /// blocks written before contract 1.2, kept for tests of that format; new registrations
    /// take [`Keys::seal_own`].
    pub fn seal(&self, id: &RegistrationId, data: &PersonalData) -> Sealed {
        seal_with(&self.data, DATA_KEY_ID, id, data)
    }

    /// Seals personal data for one registration under a new random key of its own, and
    /// returns that key wrapped under the data key: the wrapped key is stored apart from the
    /// block ([`crate::seals::message`]), and destroying it erases the block for good.
    pub fn seal_own(&self, id: &RegistrationId, data: &PersonalData) -> (Sealed, Vec<u8>) {
        let own: [u8; 32] = rand::random();
        let sealed = seal_with(&own, OWN_KEY_ID, id, data);
        let cipher = ChaCha20Poly1305::new((&self.data).into());
        let nonce: [u8; 12] = rand::random();
        let aad = format!("{WRAP_AAD}{id}");
        let mut wrapped = nonce.to_vec();
        wrapped.extend(
            cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &own,
                        aad: aad.as_bytes(),
                    },
                )
                .expect("encryption with a valid key cannot fail"),
        );
        (sealed, wrapped)
    }

    /// Whether `sealed` was sealed under its registration's own key, which must be read
    /// ([`crate::seals`]) to open it.
    pub fn needs_own_key(sealed: &Sealed) -> bool {
        sealed.key_id == OWN_KEY_ID
    }

    /// Opens a block of registration `id` sealed under its own key, given that key as
    /// [`Keys::seal_own`] wrapped it.
    pub fn open_own(
        &self,
        id: &RegistrationId,
        sealed: &Sealed,
        wrapped: &[u8],
    ) -> Result<PersonalData, OpenError> {
        if sealed.key_id != OWN_KEY_ID || wrapped.len() != WRAPPED_LEN {
            return Err(OpenError);
        }
        let cipher = ChaCha20Poly1305::new((&self.data).into());
        let aad = format!("{WRAP_AAD}{id}");
        let own = cipher
            .decrypt(
                Nonce::from_slice(&wrapped[..12]),
                Payload {
                    msg: &wrapped[12..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| OpenError)?;
        let own: [u8; 32] = own.try_into().map_err(|_| OpenError)?;
        open_with(&own, id, sealed)
    }

    /// Opens a block of registration `id` sealed under the data key itself ([`Keys::seal`]);
    /// a block sealed under its own key needs [`Keys::open_own`].
    pub fn open(&self, id: &RegistrationId, sealed: &Sealed) -> Result<PersonalData, OpenError> {
        if sealed.key_id != DATA_KEY_ID {
            return Err(OpenError);
        }
        open_with(&self.data, id, sealed)
    }
}

/// Seals `data` of registration `id` under `key`, recorded as `key_id`.
fn seal_with(key: &[u8; 32], key_id: &str, id: &RegistrationId, data: &PersonalData) -> Sealed {
    let cipher = ChaCha20Poly1305::new(key.into());
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
        key_id: key_id.to_owned(),
        nonce: B64.encode(nonce_bytes),
        ciphertext,
    }
}

/// Opens `sealed` of registration `id` under `key`.
fn open_with(
    key: &[u8; 32],
    id: &RegistrationId,
    sealed: &Sealed,
) -> Result<PersonalData, OpenError> {
    let nonce = B64.decode(&sealed.nonce).map_err(|_| OpenError)?;
    let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| OpenError)?;
    if nonce.len() != 12 {
        return Err(OpenError);
    }
    let cipher = ChaCha20Poly1305::new(key.into());
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
    fn a_block_sealed_under_its_own_key_opens_only_with_that_wrapped_key_and_this_secret() {
        let keys = Keys::from_secret("s1");
        let (a, b) = (id(), id());
        let (sealed, wrapped) = keys.seal_own(&a, &personal());
        assert!(Keys::needs_own_key(&sealed));
        assert!(!sealed.ciphertext.contains("Kowalski"));
        assert_eq!(keys.open_own(&a, &sealed, &wrapped).unwrap(), personal());
        // Not without its key, nor with another registration's, nor under another secret.
        assert!(keys.open(&a, &sealed).is_err());
        let (_, other) = keys.seal_own(&b, &personal());
        assert!(keys.open_own(&a, &sealed, &other).is_err());
        assert!(keys.open_own(&b, &sealed, &wrapped).is_err());
        assert!(
            Keys::from_secret("s2")
                .open_own(&a, &sealed, &wrapped)
                .is_err()
        );
        let mut tampered = wrapped.clone();
        tampered[20] ^= 1;
        assert!(keys.open_own(&a, &sealed, &tampered).is_err());
        // A block of the older format still opens as it did.
        let old = keys.seal(&a, &personal());
        assert!(!Keys::needs_own_key(&old));
        assert_eq!(keys.open(&a, &old).unwrap(), personal());
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
