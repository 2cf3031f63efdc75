//! ed25519 (`whsk_`/`whpk_`, `v1a,`) signatures end to end, checked with an
//! implementation that is not outboxd's: outboxd signs with `ring`, these
//! tests verify with `ed25519-dalek`, and the reverse.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::Signer as _;
use outboxd::signature::{Secret, Verifier, VerifyError, VerifyingKey, ed25519};

use crate::common::*;

/// The `v1a,` entries of a header, decoded.
fn v1a_entries(header: &str) -> Vec<ed25519_dalek::Signature> {
    header
        .split(' ')
        .filter_map(|e| e.strip_prefix("v1a,"))
        .map(|b64| {
            let bytes: [u8; 64] = BASE64.decode(b64).unwrap().try_into().unwrap();
            ed25519_dalek::Signature::from_bytes(&bytes)
        })
        .collect()
}

fn dalek_public(whpk: &str) -> ed25519_dalek::VerifyingKey {
    let bytes: [u8; 32] = BASE64
        .decode(whpk.strip_prefix("whpk_").unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap()
}

#[tokio::test]
async fn an_endpoint_with_a_key_pair_and_a_secret_signs_with_both() {
    let db = fresh_db().await;
    let key = ed25519::SecretKey::generate().unwrap();
    let public = key.public_key().to_whpk();
    let hmac = Secret::generate();
    // The receiver holds only the public key.
    let verifier = Verifier::with_keys(vec![VerifyingKey::parse(&public).unwrap()]);
    let receiver = Receiver::start(Some(verifier), |_| Reply::ok())
        .await
        .unwrap();
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('e', $1, ARRAY[$2, $3])",
            &[&receiver.url(), &key.to_whsk(), &hmac.to_whsec()],
        )
        .await
        .unwrap();
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "evt_ed", "t", r#"{"n": 1}"#).await;
    assert!(receiver.wait_until(WAIT, |r| !r.is_empty()).await);
    sidecar.stop().await;

    let r = &receiver.received()[0];
    assert_eq!(
        r.verified,
        Some(Ok(())),
        "outboxd's verifier, public key only"
    );
    let entries: Vec<&str> = r.signature.split(' ').collect();
    assert_eq!(entries.len(), 2);
    assert!(entries[0].starts_with("v1a,") && entries[1].starts_with("v1,"));

    // Third-party check of the exact bytes on the wire.
    let content = [
        r.webhook_id.as_bytes(),
        b".",
        r.timestamp.as_bytes(),
        b".",
        &r.body,
    ]
    .concat();
    let signatures = v1a_entries(&r.signature);
    assert_eq!(signatures.len(), 1);
    dalek_public(&public)
        .verify_strict(&content, &signatures[0])
        .expect("ed25519-dalek accepts outboxd's signature");
    let tampered = [&content[..], b" "].concat();
    assert!(
        dalek_public(&public)
            .verify_strict(&tampered, &signatures[0])
            .is_err()
    );
}

#[test]
fn signatures_made_by_another_implementation_verify() {
    let dalek = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let whpk = format!("whpk_{}", BASE64.encode(dalek.verifying_key().as_bytes()));
    let content = b"msg_1.1700000000.{\"a\":1}";
    let header = format!("v1a,{}", BASE64.encode(dalek.sign(content).to_bytes()));

    let verifier = Verifier::with_keys(vec![VerifyingKey::parse(&whpk).unwrap()]);
    verifier
        .verify_at("msg_1", "1700000000", &header, b"{\"a\":1}", 1_700_000_000)
        .unwrap();
    assert_eq!(
        verifier.verify_at("msg_1", "1700000000", &header, b"{\"a\":2}", 1_700_000_000),
        Err(VerifyError::Mismatch)
    );

    // And the same seed through outboxd's whsk_ parser gives the same key
    // and, ed25519 being deterministic, the same signature.
    let ours = ed25519::SecretKey::parse(&format!("whsk_{}", BASE64.encode([42u8; 32]))).unwrap();
    assert_eq!(ours.public_key().to_whpk(), whpk);
    assert_eq!(ours.sign(content), dalek.sign(content).to_bytes());
}
