//! Signing and verification: reference vectors, rotation, tampering,
//! timestamps, key parsing.

use super::*;

/// Vectors made by the reference `standardwebhooks` Python library.
const VECTORS: &str = include_str!("../../tests/data/standard-webhooks-vectors.json");

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

fn ed_key(n: u8) -> ed25519::SecretKey {
    ed25519::SecretKey::parse(&format!("whsk_{}", BASE64.encode([n; 32]))).unwrap()
}

#[test]
fn ed25519_signatures_verify_with_the_public_key_only() {
    let key = ed_key(3);
    let header = sign_with(&[SigningKey::Ed25519(key.clone())], "id", 100, b"body");
    assert!(header.starts_with("v1a,"), "{header}");
    let public = VerifyingKey::Ed25519(key.public_key());
    let v = Verifier::with_keys(vec![public]);
    v.verify_at("id", "100", &header, b"body", 100).unwrap();
    assert_eq!(
        v.verify_at("id", "100", &header, b"bodY", 100),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        v.verify_at("id", "101", &header, b"body", 100),
        Err(VerifyError::Mismatch)
    );
    let other = Verifier::with_keys(vec![VerifyingKey::Ed25519(ed_key(4).public_key())]);
    assert_eq!(
        other.verify_at("id", "100", &header, b"body", 100),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn mixed_headers_verify_with_any_of_the_keys() {
    let header = sign_with(
        &[SigningKey::Hmac(secret(1)), SigningKey::Ed25519(ed_key(2))],
        "id",
        100,
        b"x",
    );
    let entries: Vec<&str> = header.split(' ').collect();
    assert!(entries[0].starts_with("v1,") && entries[1].starts_with("v1a,"));
    for key in [
        VerifyingKey::Hmac(secret(1)),
        VerifyingKey::Ed25519(ed_key(2).public_key()),
    ] {
        Verifier::with_keys(vec![key])
            .verify_at("id", "100", &header, b"x", 100)
            .unwrap();
    }
    // A v1a entry is never checked as an HMAC and vice versa.
    let swapped = header.replace("v1,", "v1a,X").replace("v1a,X", "v1a,");
    assert_eq!(
        Verifier::new(vec![secret(1)]).verify_at("id", "100", &swapped, b"x", 100),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn signing_keys_parse_by_prefix() {
    assert!(matches!(
        SigningKey::parse(&secret(1).to_whsec()),
        Ok(SigningKey::Hmac(_))
    ));
    assert!(matches!(
        SigningKey::parse(&ed_key(1).to_whsk()),
        Ok(SigningKey::Ed25519(_))
    ));
    assert!(matches!(
        VerifyingKey::parse(&ed_key(1).public_key().to_whpk()),
        Ok(VerifyingKey::Ed25519(_))
    ));
    assert_eq!(
        SigningKey::parse("whsk_abc").unwrap_err(),
        SecretError::NotSecretKey
    );
    let error = SigningKey::parse("whsk_c2VjcmV0").unwrap_err().to_string();
    assert!(!error.contains("c2VjcmV0"), "{error}");
}

#[test]
fn extreme_timestamps_and_tolerances_do_not_overflow() {
    let header = sign(&[secret(1)], "id", i64::MAX, b"");
    let v = Verifier::new(vec![secret(1)]);
    assert!(matches!(
        v.verify_at("id", &i64::MAX.to_string(), &header, b"", -2),
        Err(VerifyError::TooNew(_))
    ));
    assert!(matches!(
        v.verify_at("id", &i64::MIN.to_string(), &header, b"", 5),
        Err(VerifyError::TooOld(_))
    ));
    assert_eq!(
        v.verify_at("id", "99999999999999999999", &header, b"", 5),
        Err(VerifyError::MalformedTimestamp)
    );
    let lenient = Verifier::new(vec![secret(1)]).with_tolerance(Duration::MAX);
    lenient
        .verify_at("id", &i64::MAX.to_string(), &header, b"", 0)
        .unwrap();
}

#[test]
fn generated_secrets_differ() {
    assert_ne!(Secret::generate(), Secret::generate());
}
