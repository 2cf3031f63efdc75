//! Standard Webhooks asymmetric keys: ed25519, serialised as `whsk_<base64>`
//! (the secret key: a 32-byte seed, or the common 64-byte seed-then-public
//! form) and `whpk_<base64>` (the 32-byte public key). Signatures travel as
//! `v1a,<base64>` entries. Receivers hold only the public key, so a leaked
//! receiver configuration cannot forge webhooks.
//!
//! The arithmetic is `ring`'s (already the TLS provider); this module only
//! parses, serialises and redacts.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use super::SecretError;

/// Prefix of a serialised ed25519 secret key.
pub const SECRET_KEY_PREFIX: &str = "whsk_";
/// Prefix of a serialised ed25519 public key.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

const SEED_LEN: usize = 32;
const PUBLIC_LEN: usize = 32;

/// An ed25519 signing key. `Debug` and `Display` redact it.
pub struct SecretKey {
    seed: [u8; SEED_LEN],
    pair: Ed25519KeyPair,
}

impl SecretKey {
    /// Parses `whsk_<base64>` of a 32-byte seed or of 64 bytes (seed, then
    /// the matching public key). The error never contains the key.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or(SecretError::NotSecretKey)?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| SecretError::NotSecretKey)?;
        let (seed, public) = match bytes.len() {
            SEED_LEN => (&bytes[..], None),
            64 => (&bytes[..SEED_LEN], Some(&bytes[SEED_LEN..])),
            _ => return Err(SecretError::NotSecretKey),
        };
        let pair = match public {
            None => Ed25519KeyPair::from_seed_unchecked(seed),
            Some(public) => Ed25519KeyPair::from_seed_and_public_key(seed, public),
        }
        .map_err(|_| SecretError::KeyPairMismatch)?;
        let mut key = [0u8; SEED_LEN];
        key.copy_from_slice(seed);
        Ok(Self { seed: key, pair })
    }

    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut seed = [0u8; SEED_LEN];
        SystemRandom::new().fill(&mut seed)?;
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| ring::error::Unspecified)?;
        Ok(Self { seed, pair })
    }

    /// `whsk_` + base64 of seed and public key (64 bytes), for storing in
    /// `outbox.endpoints.secrets`.
    pub fn to_whsk(&self) -> String {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&self.seed);
        bytes.extend_from_slice(self.pair.public_key().as_ref());
        format!("{SECRET_KEY_PREFIX}{}", BASE64.encode(bytes))
    }

    /// The matching public key, for receivers.
    pub fn public_key(&self) -> PublicKey {
        let mut key = [0u8; PUBLIC_LEN];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// The 64-byte signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        // The seed was accepted once, so it is accepted again.
        let pair = Ed25519KeyPair::from_seed_unchecked(&self.seed)
            .expect("a seed that built a key pair builds it again");
        Self {
            seed: self.seed,
            pair,
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An ed25519 public key: not a secret, printed in full.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey([u8; PUBLIC_LEN]);

impl PublicKey {
    /// Parses `whpk_<base64>` of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(SecretError::NotPublicKey)?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| SecretError::NotPublicKey)?;
        let key: [u8; PUBLIC_LEN] = bytes.try_into().map_err(|_| SecretError::NotPublicKey)?;
        Ok(Self(key))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_LEN] {
        &self.0
    }

    /// `whpk_<base64>`, to hand to receivers.
    pub fn to_whpk(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", BASE64.encode(self.0))
    }

    /// Whether `signature` signs `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_whpk())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032 section 7.1, TEST 1 and TEST 2: known answers from the
    /// specification, not from this code.
    #[test]
    fn signs_the_rfc_8032_vectors() {
        for (seed, public, message, signature) in [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ] {
            let key = SecretKey::parse(&format!("whsk_{}", BASE64.encode(hex(seed)))).unwrap();
            assert_eq!(key.public_key().as_bytes().to_vec(), hex(public));
            assert_eq!(key.sign(&hex(message)), hex(signature));
            assert!(key.public_key().verify(&hex(message), &hex(signature)));
        }
    }

    #[test]
    fn keys_round_trip_and_secret_keys_never_print() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_whsk();
        let again = SecretKey::parse(&text).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = key.public_key().to_whpk();
        assert_eq!(PublicKey::parse(&public).unwrap(), key.public_key());
        assert_eq!(format!("{key:?} {key}"), "SecretKey(<redacted>) <redacted>");
        assert!(!format!("{key:?}").contains(&text[5..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let seed = BASE64.encode([1u8; 32]);
        assert!(SecretKey::parse(&format!("whsk_{seed}")).is_ok());
        assert_eq!(
            SecretKey::parse(&format!("whsec_{seed}")).unwrap_err(),
            SecretError::NotSecretKey
        );
        assert_eq!(
            SecretKey::parse(&format!("whsk_{}", BASE64.encode([1u8; 31]))).unwrap_err(),
            SecretError::NotSecretKey
        );
        // 64 bytes whose public half does not belong to the seed.
        assert_eq!(
            SecretKey::parse(&format!("whsk_{}", BASE64.encode([1u8; 64]))).unwrap_err(),
            SecretError::KeyPairMismatch
        );
        assert_eq!(
            PublicKey::parse(&format!("whpk_{}", BASE64.encode([1u8; 33]))).unwrap_err(),
            SecretError::NotPublicKey
        );
    }
}
