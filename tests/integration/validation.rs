//! Bad input is refused at insert time with an error that names the problem
//! (SQLSTATE 23514), never echoes a secret, and changes nothing.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use outboxd::signature::Secret;
use tokio_postgres::error::DbError;

use crate::common::*;

mod limits;

fn whsec(len: usize) -> String {
    format!("whsec_{}", BASE64.encode(vec![7u8; len]))
}

async fn insert_endpoint(db: &TestDb, url: &str, secrets: &[String]) -> Result<u64, DbError> {
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('ep', $1, $2)",
            &[&url, &secrets],
        )
        .await
        .map_err(|e| e.as_db_error().expect("a database error").clone())
}

fn assert_check_violation(error: &DbError, needle: &str) {
    assert_eq!(error.code().code(), "23514", "{error:?}");
    assert!(
        error.message().contains(needle),
        "{:?} should say {needle:?}",
        error.message()
    );
    assert!(error.hint().is_some(), "a hint says how to fix it");
}

#[tokio::test]
async fn endpoint_urls_must_be_http_or_https() {
    let db = fresh_db().await;
    let secrets = [whsec(32)];
    for (url, needle) in [
        ("ftp://files.example.com/in", r#"has scheme "ftp""#),
        ("file:///etc/passwd", r#"has scheme "file""#),
        ("gopher://x", r#"has scheme "gopher""#),
        ("example.com/hook", r#"has scheme """#),
        ("https:///nohost", "has no host"),
    ] {
        let error = insert_endpoint(&db, url, &secrets).await.unwrap_err();
        assert_check_violation(&error, needle);
        assert!(error.message().contains(r#"endpoint "ep""#));
    }
    for url in ["http://hooks.example.com/a", "HTTPS://hooks.example.com"] {
        insert_endpoint(&db, url, &secrets).await.unwrap();
        db.client
            .batch_execute("DELETE FROM outbox.endpoints")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn malformed_secrets_are_refused_without_echoing_them() {
    let db = fresh_db().await;
    let url = "https://hooks.example.com/";
    for (bad, position) in [
        (vec![whsec(23)], 1),
        (vec![whsec(65)], 1),
        (vec![whsec(32), "whsec_***not-base64***".to_owned()], 2),
        (vec!["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()], 1),
        (vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS".to_owned()], 1),
        (vec![format!("whsk_{}", BASE64.encode([1u8; 31]))], 1),
    ] {
        let error = insert_endpoint(&db, url, &bad).await.unwrap_err();
        assert_check_violation(
            &error,
            &format!("secret #{position} of endpoint \"ep\" is malformed"),
        );
        let shown = format!(
            "{} {:?} {:?}",
            error.message(),
            error.detail(),
            error.hint()
        );
        let secret = &bad[position - 1];
        assert!(!shown.contains(secret.as_str()), "echoed: {shown}");
        assert!(!shown.contains(&secret[6..]), "echoed: {shown}");
    }
    let good = [whsec(24), whsec(64), Secret::generate().to_whsec()];
    insert_endpoint(&db, url, &good).await.unwrap();
    let count: i64 = count(&db.client, "SELECT count(*) FROM outbox.endpoints").await;
    assert_eq!(count, 1, "only the valid endpoint was stored");
}

#[tokio::test]
async fn a_secret_cannot_be_broken_by_a_later_update() {
    let db = fresh_db().await;
    insert_endpoint(&db, "https://hooks.example.com/", &[whsec(32)])
        .await
        .unwrap();
    let error = db
        .client
        .execute(
            "UPDATE outbox.endpoints SET secrets = secrets || 'whsec_x'::text WHERE id = 'ep'",
            &[],
        )
        .await
        .unwrap_err();
    assert_check_violation(error.as_db_error().unwrap(), "secret #2");
    let error = db
        .client
        .execute(
            "UPDATE outbox.endpoints SET url = 'javascript:alert(1)' WHERE id = 'ep'",
            &[],
        )
        .await
        .unwrap_err();
    assert_check_violation(error.as_db_error().unwrap(), r#"scheme "javascript""#);
}

#[tokio::test]
async fn empty_event_types_are_refused() {
    let db = fresh_db().await;
    for event_type in ["", "   "] {
        let error = db
            .client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('e1', $1, '{}')",
                &[&event_type],
            )
            .await
            .unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23514");
        assert_eq!(
            error.constraint(),
            Some("event_type_not_blank_max_256_bytes_no_control_chars")
        );
    }
}

#[tokio::test]
async fn payloads_above_the_configured_cap_are_refused() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    let default_cap: i32 = db
        .client
        .query_one("SELECT max_payload_bytes FROM outbox.settings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(default_cap, 256 * 1024);

    db.client
        .batch_execute("UPDATE outbox.settings SET max_payload_bytes = 100")
        .await
        .unwrap();
    // {"a": "xxx…"} as jsonb text: 9 bytes around the string.
    let payload = |n: usize| format!(r#"{{"a": "{}"}}"#, "x".repeat(n));
    insert_message(&db.client, "fits", "t", &payload(91)).await;
    let error = db
        .client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             VALUES ('small', 't', '{}'), ('big', 't', $1::text::jsonb)",
            &[&payload(92)],
        )
        .await
        .unwrap_err();
    let error = error.as_db_error().unwrap();
    assert_eq!(error.code().code(), "23514");
    assert_eq!(error.constraint(), Some("payload_within_max_payload_bytes"));
    let stored: Vec<String> = db
        .client
        .query("SELECT event_id FROM outbox.messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["fits"], "the failed statement stored nothing");
    route(&db.client).await;
    let deliveries: i64 = count(&db.client, "SELECT count(*) FROM outbox.deliveries").await;
    assert_eq!(deliveries, 1);
}

#[tokio::test]
async fn tls_columns_must_hold_pem_and_come_in_pairs() {
    let db = fresh_db().await;
    insert_endpoint(&db, "https://hooks.example.com/", &[whsec(32)])
        .await
        .unwrap();
    for (set, needle) in [
        ("ca_pem = 'not a cert'", "ca_pem"),
        (
            "client_cert_pem = 'x', client_key_pem = '-----BEGIN PRIVATE KEY-----'",
            "client_cert_pem",
        ),
        (
            "client_cert_pem = '-----BEGIN CERTIFICATE-----', client_key_pem = 'hunter2'",
            "client_key_pem",
        ),
        (
            "client_cert_pem = '-----BEGIN CERTIFICATE-----'",
            "both client_cert_pem and client_key_pem",
        ),
    ] {
        let error = db
            .client
            .execute(&format!("UPDATE outbox.endpoints SET {set}"), &[])
            .await
            .unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23514", "{set}: {error:?}");
        assert!(
            error.message().contains(needle),
            "{set}: {}",
            error.message()
        );
        assert!(!error.message().contains("hunter2"));
    }
}
