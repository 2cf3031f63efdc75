//! Failures become retries on schedule, then `dead`; `Retry-After` counts.

use std::time::Duration;

use outboxd::retry::RetryPolicy;
use outboxd::signature::Secret;

use crate::common::*;

async fn attempts_of(db: &TestDb, event_id: &str) -> Vec<(i32, Option<i32>, Option<String>)> {
    db.client
        .query(
            "SELECT a.attempt, a.status_code, a.error
             FROM outbox.attempts a JOIN outbox.message_status s ON s.delivery_id = a.delivery_id
             WHERE s.event_id = $1 ORDER BY a.attempt",
            &[&event_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn status_of(db: &TestDb, event_id: &str) -> (String, i32, Option<i32>, Option<String>) {
    let r = db
        .client
        .query_one(
            "SELECT status, attempts, last_status_code, last_error FROM outbox.message_status WHERE event_id = $1",
            &[&event_id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[tokio::test]
async fn fails_twice_then_succeeds_with_the_same_webhook_id() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth <= 2 {
            Reply::status(500).body("database is on fire")
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "flaky", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == 3).await);
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let got = receiver.received();
    assert!(
        got.iter().all(|r| r.webhook_id == "flaky"),
        "same webhook-id on every attempt"
    );
    assert_eq!(
        status_of(&db, "flaky").await,
        ("delivered".into(), 3, Some(200), None)
    );
    let attempts = attempts_of(&db, "flaky").await;
    assert_eq!(
        attempts,
        [
            (1, Some(500), Some("HTTP 500".into())),
            (2, Some(500), Some("HTTP 500".into())),
            (3, Some(200), None)
        ]
    );
    let excerpt: String = db
        .client
        .query_one(
            "SELECT response_excerpt FROM outbox.attempts WHERE attempt = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(excerpt, "database is on fire");
}

#[tokio::test]
async fn always_failing_receiver_ends_dead_after_the_last_attempt() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |_| Reply::status(502)).await.unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db)); // three attempts
    insert_message(&db.client, "doomed", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(receiver.count(), 3);
    assert_eq!(
        status_of(&db, "doomed").await,
        ("dead".into(), 3, Some(502), Some("HTTP 502".into()))
    );
    assert_eq!(attempts_of(&db, "doomed").await.len(), 3);
}

#[tokio::test]
async fn connection_errors_are_retried_and_recorded() {
    let db = fresh_db().await;
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    add_endpoint(
        &db.client,
        "e",
        &format!("http://127.0.0.1:{port}/"),
        None,
        &Secret::generate(),
    )
    .await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "nobody-home", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let (status, attempts, code, error) = status_of(&db, "nobody-home").await;
    assert_eq!((status.as_str(), attempts, code), ("dead", 3, None));
    let error = error.unwrap();
    assert!(error.starts_with("connection failed"), "{error}");
    assert!(!error.contains("http://"), "no URL in errors: {error}");
}

#[tokio::test]
async fn timeouts_are_retried_and_recorded() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::ok().delay(Duration::from_secs(3))
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    db.client
        .execute("UPDATE outbox.endpoints SET timeout_ms = 300", &[])
        .await
        .unwrap();
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "slow", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let attempts = attempts_of(&db, "slow").await;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].1, None);
    assert_eq!(attempts[0].2.as_deref(), Some("timed out after 300ms"));
    assert_eq!(attempts[1], (2, Some(200), None));
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut config = config(&db);
    // Without Retry-After the retry would be immediate.
    config.retry = RetryPolicy::parse("0s,0s,0s", Duration::from_secs(60)).unwrap();
    let sidecar = spawn(config);
    insert_message(&db.client, "busy", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == 2).await);
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let got = receiver.received();
    let gap = got[1].at.duration_since(got[0].at).unwrap();
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After"
    );
    assert!(gap < Duration::from_secs(5), "retried only after {gap:?}");
    assert_eq!(status_of(&db, "busy").await.0, "delivered");
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_keeps_its_deliveries_pending() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |_| Reply::status(410)).await.unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "gone", "t", "{}").await;
    assert!(
        eventually(WAIT, || async {
            let r = db
                .client
                .query_one("SELECT enabled FROM outbox.endpoints WHERE id = 'e'", &[])
                .await
                .unwrap();
            !r.get::<_, bool>(0)
        })
        .await
    );
    // Stopping proves nothing else is attempted meanwhile.
    sidecar.stop().await;
    assert_eq!(receiver.count(), 1);
    let (status, attempts, code, _) = status_of(&db, "gone").await;
    assert_eq!((status.as_str(), attempts, code), ("pending", 1, Some(410)));
    let reason: String = db
        .client
        .query_one("SELECT disabled_reason FROM outbox.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reason.contains("410"), "{reason}");
}

#[tokio::test]
async fn malformed_secret_kills_only_that_delivery() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(
        &db.client,
        "good",
        &receiver.url(),
        None,
        &Secret::generate(),
    )
    .await;
    // SQL refuses such a secret since 0004; an endpoint stored before that
    // (or with the check disabled) must still fail alone.
    db.client
        .batch_execute("ALTER TABLE outbox.endpoints DISABLE TRIGGER endpoints_check")
        .await
        .unwrap();
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('bad', $1, ARRAY['whsec_***not-base64***'])",
            &[&receiver.url()],
        )
        .await
        .unwrap();
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "m", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(receiver.count(), 1, "the good endpoint still got its POST");
    let row = db
        .client
        .query_one(
            "SELECT status, last_error FROM outbox.message_status WHERE endpoint_id = 'bad'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "dead");
    let error: String = row.get(1);
    assert!(error.contains("endpoint secret #1"), "{error}");
    assert!(
        !error.contains("not-base64"),
        "the secret is not echoed: {error}"
    );
}

#[tokio::test]
async fn huge_error_bodies_are_cut_to_the_excerpt_cap() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(500).body(vec![b'x'; 4 * 1024 * 1024])
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "big-answer", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let excerpt_len: i32 = db
        .client
        .query_one(
            "SELECT octet_length(response_excerpt) FROM outbox.attempts WHERE attempt = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(excerpt_len, 4096);
    assert_eq!(status_of(&db, "big-answer").await.0, "delivered");
}

#[tokio::test]
async fn nul_bytes_and_broken_utf8_in_an_answer_are_stored_as_replacement_characters() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(500).body(&b"bad\0news \xff"[..])
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "odd-answer", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let excerpt: String = db
        .client
        .query_one(
            "SELECT response_excerpt FROM outbox.attempts WHERE attempt = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(excerpt, "bad\u{fffd}news \u{fffd}");
    assert_eq!(status_of(&db, "odd-answer").await.0, "delivered");
}

/// An endpoint's `timeout_ms` longer than the lease allows is capped: the
/// request ends (and its outcome is written) before the lease does, so no
/// second claim sends the same delivery while the first is still waiting.
#[tokio::test]
async fn an_endpoint_timeout_beyond_the_lease_is_capped() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let hanging = Receiver::start(None, |_| Reply::ok().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    add_endpoint(&db.client, "slow", &hanging.url(), None, &secret).await;
    db.client
        .batch_execute("UPDATE outbox.endpoints SET timeout_ms = 30000")
        .await
        .unwrap();
    let mut config = config(&db);
    config.request_timeout = Duration::from_secs(2);
    config.lease = Duration::from_secs(8);
    config.shutdown_grace = Duration::from_millis(100);
    let sidecar = spawn(config);
    insert_message(&db.client, "m", "t", "{}").await;
    let first_written = eventually(Duration::from_secs(15), || async {
        !attempts_of(&db, "m").await.is_empty()
    })
    .await;
    let requests = hanging.received();
    sidecar.stop().await;
    assert!(first_written, "the first attempt ended within the lease");
    let (attempt, code, error) = attempts_of(&db, "m").await.remove(0);
    assert_eq!((attempt, code), (1, None));
    let error = error.unwrap();
    assert!(error.starts_with("timed out after 3s"), "{error}");
    assert!(error.contains("capped at --lease"), "{error}");
    // Requests never overlapped: each began after the one before ended.
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at).unwrap();
        assert!(gap >= Duration::from_millis(2900), "{gap:?}");
    }
}
