//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the
//! base64-decoded part of a `whsec_` secret, sent as `v1,<base64>` entries
//! separated by spaces in the `webhook-signature` header.
//!
//! The sidecar signs with [`sign`]; receivers written in Rust verify with a
//! [`Verifier`]. Secrets live in [`Secret`], whose `Debug` never shows the
//! key, so a secret cannot leak through a log line or an error.
//!
//! ```
//! use outboxd::signature::{Secret, Verifier, sign};
//!
//! let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let header = sign(&[secret.clone()], "msg_1", 1_700_000_000, b"{}");
//! let verifier = Verifier::new(vec![secret]);
//! verifier.verify_at("msg_1", "1700000000", &header, b"{}", 1_700_000_010).unwrap();
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
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

    /// A new random 32-byte secret.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        fastrand::fill(&mut key);
        Self(key)
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

/// Why a secret string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not standard base64.
    #[error("secret is not whsec_ followed by standard base64")]
    NotBase64,
    /// The secret decodes to no bytes.
    #[error("secret is empty")]
    Empty,
}

/// The `webhook-signature` header value: one `v1,<base64>` entry per secret,
/// separated by spaces, so receivers holding any one of them can verify.
pub fn sign(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(secrets.len() * 48);
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        let tag = signed_content_mac(secret, msg_id, &timestamp.to_string(), body);
        BASE64.encode_string(tag.finalize().into_bytes(), &mut header);
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
    /// The header has no `v1,` entry at all.
    #[error("webhook-signature has no v1 signature")]
    NoSignature,
    /// No `v1,` entry matches any of the verifier's secrets.
    #[error("no signature matches: wrong secret or modified body")]
    Mismatch,
}

/// Checks `webhook-*` headers against one or more secrets (several during a
/// rotation), rejecting stale or future timestamps.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier with the default five-minute timestamp tolerance.
    pub fn new(secrets: Vec<Secret>) -> Self {
        Self {
            secrets,
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
        let sent: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::MalformedTimestamp)?;
        let tolerance = self.tolerance.as_secs() as i64;
        let age = now.saturating_sub(sent);
        if age > tolerance {
            return Err(VerifyError::TooOld(age));
        }
        if -age > tolerance {
            return Err(VerifyError::TooNew(-age));
        }
        let candidates: Vec<Vec<u8>> = signature
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .collect();
        if candidates.is_empty() {
            return Err(VerifyError::NoSignature);
        }
        let timestamp = timestamp.trim();
        let matches = self.secrets.iter().any(|secret| {
            let mac = signed_content_mac(secret, msg_id, timestamp, body);
            // verify_slice compares in constant time.
            candidates
                .iter()
                .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
        });
        if matches {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors made by the reference `standardwebhooks` Python library.
    const VECTORS: &str = include_str!("../tests/data/standard-webhooks-vectors.json");

    fn vectors() -> Vec<serde_json::Value> {
        let file: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
        file["vectors"].as_array().unwrap().clone()
    }

    #[test]
    fn signs_every_reference_vector_identically() {
        let vectors = vectors();
        assert_eq!(vectors.len(), 15);
        for v in vectors {
            let secret = Secret::parse(v["secret"].as_str().unwrap()).unwrap();
            let body = BASE64.decode(v["body_b64"].as_str().unwrap()).unwrap();
            let ts = v["timestamp"].as_i64().unwrap();
            let ours = sign(&[secret], v["msg_id"].as_str().unwrap(), ts, &body);
            assert_eq!(
                ours,
                v["signature"].as_str().unwrap(),
                "vector {}",
                v["name"]
            );
        }
    }

    #[test]
    fn verifies_every_reference_vector() {
        for v in vectors() {
            let secret = Secret::parse(v["secret"].as_str().unwrap()).unwrap();
            let body = BASE64.decode(v["body_b64"].as_str().unwrap()).unwrap();
            let ts = v["timestamp"].as_i64().unwrap();
            Verifier::new(vec![secret])
                .verify_at(
                    v["msg_id"].as_str().unwrap(),
                    &ts.to_string(),
                    v["signature"].as_str().unwrap(),
                    &body,
                    ts,
                )
                .unwrap_or_else(|e| panic!("vector {}: {e}", v["name"]));
        }
    }

    fn secret(n: u8) -> Secret {
        Secret::from_bytes(vec![n; 32])
    }

    #[test]
    fn any_of_several_signatures_verifies_during_rotation() {
        let header = sign(&[secret(1), secret(2)], "id", 100, b"body");
        assert_eq!(header.split(' ').count(), 2);
        for key in [secret(1), secret(2)] {
            Verifier::new(vec![key])
                .verify_at("id", "100", &header, b"body", 100)
                .unwrap();
        }
    }

    #[test]
    fn rejects_wrong_secret_tampered_body_and_other_id() {
        let header = sign(&[secret(1)], "id", 100, b"body");
        let v = Verifier::new(vec![secret(1)]);
        let wrong = Verifier::new(vec![secret(9)]);
        assert_eq!(
            wrong.verify_at("id", "100", &header, b"body", 100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            v.verify_at("id", "100", &header, b"bodY", 100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            v.verify_at("id2", "100", &header, b"body", 100),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn rejects_stale_future_and_malformed_timestamps() {
        let v = Verifier::new(vec![secret(1)]).with_tolerance(Duration::from_secs(60));
        let header = sign(&[secret(1)], "id", 1000, b"x");
        assert_eq!(
            v.verify_at("id", "1000", &header, b"x", 1061),
            Err(VerifyError::TooOld(61))
        );
        assert_eq!(
            v.verify_at("id", "1000", &header, b"x", 939),
            Err(VerifyError::TooNew(61))
        );
        assert!(v.verify_at("id", "1000", &header, b"x", 1060).is_ok());
        assert_eq!(
            v.verify_at("id", "10a0", &header, b"x", 1000),
            Err(VerifyError::MalformedTimestamp)
        );
    }

    #[test]
    fn rejects_headers_without_v1_entries() {
        let v = Verifier::new(vec![secret(1)]);
        for header in ["", "v2,abc", "v1a,abc", "garbage"] {
            assert_eq!(
                v.verify_at("id", "1", header, b"", 1),
                Err(VerifyError::NoSignature)
            );
        }
        assert_eq!(
            v.verify_at("id", "1", "v1,!!notbase64", b"", 1),
            Err(VerifyError::NoSignature)
        );
    }

    #[test]
    fn secrets_round_trip_and_never_print() {
        let s = Secret::generate();
        let text = s.to_whsec();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap(), s);
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert_eq!(Secret::parse("whsec_***"), Err(SecretError::NotBase64));
        assert_eq!(Secret::parse("whsec_"), Err(SecretError::Empty));
    }
}
