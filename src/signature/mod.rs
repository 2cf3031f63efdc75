//! Standard Webhooks signatures (<https://www.standardwebhooks.com>) over
//! `{webhook-id}.{webhook-timestamp}.{body}`, sent as space-separated
//! entries of the `webhook-signature` header:
//! - `v1,<base64>`: HMAC-SHA256 keyed by the base64-decoded part of a
//!   `whsec_` secret (symmetric: sender and receiver share it);
//! - `v1a,<base64>`: ed25519 with a `whsk_` secret key, verified with its
//!   `whpk_` public key (asymmetric: see [`ed25519`]).
//!
//! The sidecar signs with [`sign_with`] (one entry per endpoint key, so
//! rotation is adding the new key before dropping the old one); receivers
//! written in Rust verify with a [`Verifier`], which accepts a webhook when
//! any entry matches any of its keys, rejects stale and future timestamps,
//! and compares MACs in constant time. Key types redact themselves in
//! `Debug` and `Display`, so a secret cannot leak through a log line or an
//! error.
//!
//! ```
//! use outboxd::signature::{Secret, Verifier, sign};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let header = sign(&[secret.clone()], "msg_1", 1_700_000_000, b"{}");
//! let verifier = Verifier::new(vec![secret]);
//! verifier.verify_at("msg_1", "1700000000", &header, b"{}", 1_700_000_010).unwrap();
//! ```
//!
//! With an ed25519 key pair the receiver holds only the public key:
//!
//! ```
//! use outboxd::signature::{SigningKey, Verifier, VerifyingKey, ed25519, sign_with};
//!
//! let key = ed25519::SecretKey::generate().unwrap();
//! let public = key.public_key().to_whpk(); // give this to the receiver
//! let header = sign_with(&[SigningKey::Ed25519(key)], "msg_1", 1_700_000_000, b"{}");
//! assert!(header.starts_with("v1a,"));
//! let verifier = Verifier::with_keys(vec![VerifyingKey::parse(&public).unwrap()]);
//! verifier.verify_at("msg_1", "1700000000", &header, b"{}", 1_700_000_010).unwrap();
//! ```

pub mod ed25519;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a `webhook-timestamp` may be from the verifier's clock by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// A signing key. `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>` (the prefix is optional, as in the reference
    /// libraries). The error never contains the secret.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = BASE64.decode(encoded).map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(key))
    }

    /// Wraps raw key bytes, e.g. freshly generated ones.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// A new random 32-byte secret from the operating system's CSPRNG.
    ///
    /// # Panics
    /// When the operating system has no random number generator to offer
    /// (see [`Secret::try_generate`]).
    pub fn generate() -> Self {
        Self::try_generate().expect("the operating system's random number generator failed")
    }

    /// A new random 32-byte secret, or an error when the operating system's
    /// random number generator fails.
    pub fn try_generate() -> Result<Self, ring::error::Unspecified> {
        let mut key = vec![0u8; 32];
        SystemRandom::new().fill(&mut key)?;
        Ok(Self(key))
    }

    /// The `whsec_<base64>` form, for storing in `outbox.endpoints.secrets`.
    pub fn to_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a key string was refused. The text never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not standard base64.
    #[error("secret is not whsec_ followed by standard base64")]
    NotBase64,
    /// The secret decodes to no bytes.
    #[error("secret is empty")]
    Empty,
    /// Not `whsk_` + base64 of a 32-byte seed or a 64-byte key pair.
    #[error("secret key is not whsk_ followed by the base64 of a 32- or 64-byte ed25519 key")]
    NotSecretKey,
    /// A 64-byte `whsk_` key whose public half does not belong to its seed.
    #[error("secret key's public half does not match its seed")]
    KeyPairMismatch,
    /// Not `whpk_` + base64 of 32 bytes.
    #[error("public key is not whpk_ followed by the base64 of 32 bytes")]
    NotPublicKey,
}

/// A key the sender signs with: an HMAC secret or an ed25519 secret key.
#[derive(Debug, Clone)]
pub enum SigningKey {
    /// `whsec_`: signs `v1,` entries.
    Hmac(Secret),
    /// `whsk_`: signs `v1a,` entries.
    Ed25519(ed25519::SecretKey),
}

impl SigningKey {
    /// Parses a `whsec_` secret or a `whsk_` secret key, as stored in
    /// `outbox.endpoints.secrets`.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if text.starts_with(ed25519::SECRET_KEY_PREFIX) {
            ed25519::SecretKey::parse(text).map(Self::Ed25519)
        } else {
            Secret::parse(text).map(Self::Hmac)
        }
    }
}

/// A key a receiver verifies with: the shared HMAC secret or an ed25519
/// public key.
#[derive(Debug, Clone)]
pub enum VerifyingKey {
    /// `whsec_`: checks `v1,` entries.
    Hmac(Secret),
    /// `whpk_`: checks `v1a,` entries.
    Ed25519(ed25519::PublicKey),
}

impl VerifyingKey {
    /// Parses a `whsec_` secret or a `whpk_` public key.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if text.starts_with(ed25519::PUBLIC_KEY_PREFIX) {
            ed25519::PublicKey::parse(text).map(Self::Ed25519)
        } else {
            Secret::parse(text).map(Self::Hmac)
        }
    }
}

/// The `webhook-signature` header value for HMAC secrets: one `v1,<base64>`
/// entry per secret, separated by spaces, so receivers holding any one of
/// them can verify.
pub fn sign(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let keys: Vec<SigningKey> = secrets.iter().cloned().map(SigningKey::Hmac).collect();
    sign_with(&keys, msg_id, timestamp, body)
}

/// The `webhook-signature` header value: one entry per key, `v1,` for HMAC
/// secrets and `v1a,` for ed25519 keys, separated by spaces.
pub fn sign_with(keys: &[SigningKey], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mut content = None;
    let mut header = String::with_capacity(keys.len() * 92);
    for key in keys {
        if !header.is_empty() {
            header.push(' ');
        }
        match key {
            SigningKey::Hmac(secret) => {
                header.push_str("v1,");
                let tag = signed_content_mac(secret, msg_id, &timestamp, body);
                BASE64.encode_string(tag.finalize().into_bytes(), &mut header);
            }
            SigningKey::Ed25519(key) => {
                header.push_str("v1a,");
                let content =
                    content.get_or_insert_with(|| signed_content(msg_id, &timestamp, body));
                BASE64.encode_string(key.sign(content), &mut header);
            }
        }
    }
    header
}

fn signed_content_mac(secret: &Secret, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = secret.mac();
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `{id}.{timestamp}.{body}` in one buffer (ed25519 signs a whole message).
fn signed_content(msg_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(msg_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Why a received webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not an integer number of seconds.
    #[error("webhook-timestamp is not a unix timestamp in seconds")]
    MalformedTimestamp,
    /// The timestamp is older than the tolerance allows (a replay?).
    #[error("webhook-timestamp is {0} s in the past, beyond the tolerance")]
    TooOld(i64),
    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook-timestamp is {0} s in the future, beyond the tolerance")]
    TooNew(i64),
    /// The header has no well-formed `v1,` or `v1a,` entry at all.
    #[error("webhook-signature has no v1 or v1a signature")]
    NoSignature,
    /// No entry matches any of the verifier's keys.
    #[error("no signature matches: wrong key or modified body")]
    Mismatch,
}

/// Checks `webhook-*` headers against one or more keys (several during a
/// rotation), rejecting stale or future timestamps.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier for HMAC secrets with the default five-minute timestamp
    /// tolerance.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self::with_keys(secrets.into_iter().map(VerifyingKey::Hmac).collect())
    }

    /// A verifier for any mix of HMAC secrets and ed25519 public keys.
    pub fn with_keys(keys: Vec<VerifyingKey>) -> Self {
        Self {
            keys,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Changes how far `webhook-timestamp` may be from the local clock.
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies against the system clock.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.verify_at(msg_id, timestamp, signature, body, now)
    }

    /// Verifies as if the clock read `now` (unix seconds).
    pub fn verify_at(
        &self,
        msg_id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let timestamp = timestamp.trim();
        let sent: i64 = timestamp
            .parse()
            .map_err(|_| VerifyError::MalformedTimestamp)?;
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        let age = now.saturating_sub(sent);
        if age > tolerance {
            return Err(VerifyError::TooOld(age));
        }
        if age.saturating_neg() > tolerance {
            return Err(VerifyError::TooNew(age.saturating_neg()));
        }
        let (macs, signatures) = parse_entries(signature);
        if macs.is_empty() && signatures.is_empty() {
            return Err(VerifyError::NoSignature);
        }
        let mut content = None;
        let matches = self.keys.iter().any(|key| match key {
            VerifyingKey::Hmac(secret) => {
                let mac = signed_content_mac(secret, msg_id, timestamp, body);
                // verify_slice compares in constant time.
                macs.iter()
                    .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
            }
            VerifyingKey::Ed25519(public) => {
                let content =
                    content.get_or_insert_with(|| signed_content(msg_id, timestamp, body));
                signatures
                    .iter()
                    .any(|candidate| public.verify(content, candidate))
            }
        });
        if matches {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// The decodable `v1,` (HMAC) and `v1a,` (ed25519) entries of a
/// `webhook-signature` header; anything else is ignored, as the
/// specification asks of unknown versions.
fn parse_entries(header: &str) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut macs = Vec::new();
    let mut signatures = Vec::new();
    for entry in header.split_ascii_whitespace() {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        let list = match version {
            "v1" => &mut macs,
            "v1a" => &mut signatures,
            _ => continue,
        };
        if let Ok(bytes) = BASE64.decode(encoded) {
            list.push(bytes);
        }
    }
    (macs, signatures)
}

#[cfg(test)]
mod tests;
