//! Property-based fuzzing (proptest) of what parses untrusted input: the
//! `webhook-*` headers and signatures a receiver is sent, key strings, and
//! the SSRF classification of addresses.
//!
//! Bounded: 250 to 2,000 cases per property (about two seconds in all).
//! For a longer run: `PROPTEST_CASES=200000 cargo test --release --test
//! integration fuzzing` (see docs/security.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use outboxd::delivery::egress::{EgressPolicy, classify};
use outboxd::signature::{
    Secret, SigningKey, Verifier, VerifyError, VerifyingKey, ed25519, sign_with,
};
use proptest::prelude::*;

/// `cases` per property unless `PROPTEST_CASES` says otherwise. The
/// defaults keep this file to about two seconds in a debug build.
fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// One header entry: a known or unknown version, then base64 or garbage.
fn entry() -> impl Strategy<Value = String> {
    let version = prop_oneof![Just("v1"), Just("v1a"), Just("v2"), Just(""), Just("V1")];
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| BASE64.encode(b)),
        any::<String>(),
    ];
    (version, value).prop_map(|(v, b)| format!("{v},{b}"))
}

fn header() -> impl Strategy<Value = String> {
    let separator = prop_oneof![Just(" "), Just("  "), Just("\t"), Just(",")];
    proptest::collection::vec((entry(), separator), 0..6).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(entry, sep)| format!("{entry}{sep}"))
            .collect()
    })
}

/// An HMAC secret or an ed25519 key, as (signing, verifying) keys.
fn key_pair() -> impl Strategy<Value = (SigningKey, VerifyingKey)> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..70).prop_map(|bytes| {
            let secret = Secret::from_bytes(bytes);
            (SigningKey::Hmac(secret.clone()), VerifyingKey::Hmac(secret))
        }),
        any::<[u8; 32]>().prop_map(|seed| {
            let key = ed25519::SecretKey::parse(&format!("whsk_{}", BASE64.encode(seed))).unwrap();
            let public = VerifyingKey::Ed25519(key.public_key());
            (SigningKey::Ed25519(key), public)
        }),
    ]
}

fn verifier(keys: Vec<VerifyingKey>) -> Verifier {
    Verifier::with_keys(keys)
}

proptest! {
    #![proptest_config(config(800))]

    #[test]
    fn verification_of_arbitrary_input_never_panics_nor_passes(
        (_, key) in key_pair(),
        msg_id in any::<String>(),
        timestamp in prop_oneof![any::<String>(), any::<i64>().prop_map(|t| t.to_string())],
        header in header(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
    ) {
        let result = verifier(vec![key]).verify_at(&msg_id, &timestamp, &header, &body, now);
        prop_assert!(result.is_err(), "a random header verified: {header:?}");
    }
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn signed_webhooks_verify_and_every_tampering_is_caught(
        (signing, verifying) in key_pair(),
        (other_signing, other_verifying) in key_pair(),
        msg_id in "[ -~]{0,40}",
        timestamp in 0i64..4_000_000_000,
        skew in -300i64..=300,
        body in proptest::collection::vec(any::<u8>(), 0..300),
        flip in any::<(usize, u8)>(),
        noise in entry(),
    ) {
        let header = sign_with(&[other_signing, signing], &msg_id, timestamp, &body);
        let ts = timestamp.to_string();
        let now = timestamp + skew;
        let v = verifier(vec![verifying.clone()]);
        prop_assert_eq!(v.verify_at(&msg_id, &ts, &header, &body, now), Ok(()));
        // Extra whitespace and unknown entries do not matter.
        let noisy = format!("{noise}  {}\t", header.replace(' ', "   "));
        prop_assert_eq!(v.verify_at(&msg_id, &ts, &noisy, &body, now), Ok(()));
        // Any other key (the other entry was signed by it, so it passes too).
        prop_assert_eq!(
            verifier(vec![other_verifying]).verify_at(&msg_id, &ts, &header, &body, now),
            Ok(())
        );

        if !body.is_empty() {
            let mut tampered = body.clone();
            let (at, bits) = flip;
            tampered[at % body.len()] ^= bits.max(1);
            prop_assert_eq!(
                v.verify_at(&msg_id, &ts, &header, &tampered, now),
                Err(VerifyError::Mismatch)
            );
        }
        let longer = [&body[..], b"x"].concat();
        prop_assert_eq!(v.verify_at(&msg_id, &ts, &header, &longer, now), Err(VerifyError::Mismatch));
        let other_id = format!("{msg_id}x");
        prop_assert_eq!(v.verify_at(&other_id, &ts, &header, &body, now), Err(VerifyError::Mismatch));
        let other_ts = (timestamp + 1).to_string();
        prop_assert_eq!(v.verify_at(&msg_id, &other_ts, &header, &body, timestamp), Err(VerifyError::Mismatch));
        let stale = v.verify_at(&msg_id, &ts, &header, &body, timestamp + 301);
        prop_assert!(matches!(stale, Err(VerifyError::TooOld(301))), "{stale:?}");
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn key_parsers_never_panic_or_echo_their_input(
        text in any::<String>(),
        prefix in prop_oneof![Just(""), Just("whsec_"), Just("whsk_"), Just("whpk_")],
    ) {
        let input = format!("{prefix}{text}");
        for error in [
            SigningKey::parse(&input).err().map(|e| e.to_string()),
            VerifyingKey::parse(&input).err().map(|e| e.to_string()),
        ]
        .into_iter()
        .flatten()
        {
            if text.len() >= 8 {
                prop_assert!(!error.contains(&text), "{error:?} echoes {text:?}");
            }
        }
    }

    #[test]
    fn hidden_ipv4_addresses_are_judged_like_the_ipv4_itself(bits in any::<u32>()) {
        let v4 = Ipv4Addr::from(bits);
        let expected = classify(IpAddr::V4(v4));
        prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), expected);
        let [a, b, c, d] = v4.octets();
        let nat64 = Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]));
        prop_assert_eq!(classify(IpAddr::V6(nat64)), expected);
        // The default policy refuses exactly what is classified.
        prop_assert_eq!(EgressPolicy::default().check(IpAddr::V4(v4)).is_ok(), expected.is_none());
    }

    #[test]
    fn an_allowed_network_opens_exactly_its_addresses(bits in any::<u32>(), net in any::<u32>(), prefix in 8u8..=32) {
        let addr = IpAddr::V4(Ipv4Addr::from(bits));
        let net = ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::from(net)), prefix).unwrap().trunc();
        let policy = EgressPolicy::new(vec![net]);
        let allowed = policy.check(addr).is_ok();
        prop_assert_eq!(allowed, classify(addr).is_none() || net.contains(&addr));
    }
}
