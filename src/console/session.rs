//! Who may use the console: the sign-in token, the session cookie and the
//! CSRF tokens. Stateless: a session is a cookie holding its expiry and an
//! HMAC of it under a key drawn at start (a restart signs everyone out);
//! a CSRF token is an HMAC of the session it belongs to, so a form from
//! one session is refused in another. Every comparison is constant-time
//! (`Mac::verify_slice`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::Sha256;

pub use crate::config::{ConsoleToken, MIN_TOKEN_LEN};

type HmacSha256 = Hmac<Sha256>;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "outboxd_console";
/// The cookie that ties the sign-in form to the browser that asked for it.
pub const LOGIN_COOKIE: &str = "outboxd_console_login";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Signs and checks sessions and CSRF tokens.
pub struct Keys {
    key: [u8; 32],
    /// The token's MAC, compared with the MAC of what is typed.
    token_mac: Vec<u8>,
}

impl Keys {
    /// A fresh random key, for `token`.
    pub fn new(token: &ConsoleToken) -> Self {
        let mut key = [0u8; 32];
        // A system without randomness cannot run outboxd at all (TLS
        // needs it too); fail loudly rather than sign with zeros.
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system's random number generator");
        let mut keys = Self {
            key,
            token_mac: Vec::new(),
        };
        keys.token_mac = keys.sign(&["token", token.expose()]);
        keys
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    fn sign(&self, parts: &[&str]) -> Vec<u8> {
        self.mac(parts).finalize().into_bytes().to_vec()
    }

    fn verify(&self, parts: &[&str], claimed: &str) -> bool {
        let Ok(claimed) = URL_SAFE_NO_PAD.decode(claimed) else {
            return false;
        };
        self.mac(parts).verify_slice(&claimed).is_ok()
    }

    /// Whether `typed` is the token, in constant time.
    pub fn token_matches(&self, typed: &str) -> bool {
        self.mac(&["token", typed])
            .verify_slice(&self.token_mac)
            .is_ok()
    }

    /// A new session cookie value, valid for [`SESSION_LIFETIME`].
    pub fn new_session(&self, now: SystemTime) -> String {
        let expires = unix(now + SESSION_LIFETIME).to_string();
        let mac = URL_SAFE_NO_PAD.encode(self.sign(&["session", &expires]));
        format!("{expires}.{mac}")
    }

    /// Whether `cookie` is a session this process signed and that has not
    /// expired.
    pub fn session_valid(&self, cookie: &str, now: SystemTime) -> bool {
        let Some((expires, mac)) = cookie.split_once('.') else {
            return false;
        };
        let Ok(at) = expires.parse::<u64>() else {
            return false;
        };
        at > unix(now) && self.verify(&["session", expires], mac)
    }

    /// The CSRF token of the forms of `session`.
    pub fn csrf(&self, session: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.sign(&["csrf", session]))
    }

    /// Whether `token` is the CSRF token of `session`.
    pub fn csrf_valid(&self, session: &str, token: &str) -> bool {
        self.verify(&["csrf", session], token)
    }

    /// A random value for [`LOGIN_COOKIE`].
    pub fn login_nonce(&self) -> String {
        let mut nonce = [0u8; 16];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random number generator");
        URL_SAFE_NO_PAD.encode(nonce)
    }
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for `/console` only.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    )
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(&ConsoleToken::new("correct horse battery staple"))
    }

    #[test]
    fn only_the_token_signs_in() {
        let keys = keys();
        assert!(keys.token_matches("correct horse battery staple"));
        assert!(!keys.token_matches("correct horse battery stapl"));
        assert!(!keys.token_matches(""));
        assert_eq!(
            format!("{:?}", ConsoleToken::new("secret")),
            "ConsoleToken(***)"
        );
    }

    #[test]
    fn sessions_expire_and_belong_to_their_process() {
        let keys = keys();
        let now = SystemTime::now();
        let session = keys.new_session(now);
        assert!(keys.session_valid(&session, now));
        assert!(!keys.session_valid(&session, now + SESSION_LIFETIME));
        assert!(!Keys::new(&ConsoleToken::new("x".repeat(20))).session_valid(&session, now));
        let forged = format!(
            "{}.{}",
            unix(now) + 999_999,
            session.split_once('.').unwrap().1
        );
        assert!(!keys.session_valid(&forged, now));
        assert!(!keys.session_valid("garbage", now));
    }

    #[test]
    fn a_csrf_token_works_for_its_session_only() {
        let keys = keys();
        let now = SystemTime::now();
        let (a, b) = (
            keys.new_session(now),
            keys.new_session(now + Duration::from_secs(1)),
        );
        assert!(keys.csrf_valid(&a, &keys.csrf(&a)));
        assert!(!keys.csrf_valid(&b, &keys.csrf(&a)));
        assert!(!keys.csrf_valid(&a, ""));
    }

    #[test]
    fn cookies_are_read_by_name() {
        let header = "a=1; outboxd_console=v.x; b=2";
        assert_eq!(cookie(header, SESSION_COOKIE), Some("v.x"));
        assert_eq!(cookie(header, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "v", SESSION_LIFETIME);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }
}
