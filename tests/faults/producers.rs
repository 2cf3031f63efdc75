//! Scenario 7: producers that do unusual but legal things: commit late
//! (a lower id after higher ones), insert thousands of rows in one
//! transaction, schedule far into the future. Every sidecar here polls
//! only once a minute, so deliveries come from wake-ups and from draining
//! full batches back to back, never from the poll.

use std::time::{Duration, Instant};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_transactions_that_commit_late_are_still_delivered() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "late")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .spawn();

    // Twenty producers take their ids first and commit last.
    let mut slow = Vec::new();
    for i in 0..20 {
        let producer = db.connect().await;
        producer
            .batch_execute(&format!(
                "BEGIN; INSERT INTO outbox.messages (event_id, event_type, payload)
                 VALUES ('late-{i}', 'fault.test', '{{}}')"
            ))
            .await
            .unwrap();
        slow.push(producer);
    }
    insert_batch(&db.client, "early", 0, 500).await;
    assert!(wait_delivered(&db.client, 500, WAIT).await);
    for producer in slow.iter().rev() {
        producer.batch_execute("COMMIT").await.unwrap();
    }
    assert!(
        wait_delivered(&db.client, 520, WAIT).await,
        "{:?}",
        statuses(&db.client).await
    );
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());

    let ids = db
        .client
        .query_one(
            "SELECT max(id) FILTER (WHERE event_id LIKE 'late-%'),
                    min(id) FILTER (WHERE event_id LIKE 'early-%')
             FROM outbox.messages",
            &[],
        )
        .await
        .unwrap();
    assert!(
        ids.get::<_, i64>(0) < ids.get::<_, i64>(1),
        "the late ones hold the lower ids"
    );
    let per_id = receipts(&receiver);
    assert_eq!(per_id.len(), 520);
    assert_eq!(extra_receipts(&per_id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_messages_from_one_transaction_drain_without_waiting_for_the_poll() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "bulk")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .spawn();
    // 5000 statements, one transaction: 5000 notifications folded into one
    // at commit, then nothing but full batches.
    let inserted = Instant::now();
    db.client
        .batch_execute(
            "DO $$ BEGIN
                 FOR i IN 1..5000 LOOP
                     INSERT INTO outbox.messages (event_id, event_type, payload)
                     VALUES ('bulk-' || i, 'fault.test', jsonb_build_object('n', i));
                 END LOOP;
             END $$",
        )
        .await
        .unwrap();
    assert!(
        wait_delivered(&db.client, 5000, Duration::from_secs(50)).await,
        "{:?} after {:?}",
        statuses(&db.client).await,
        inserted.elapsed()
    );
    eprintln!(
        "5000 messages of one transaction delivered in {:?}",
        inserted.elapsed()
    );
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
    let per_id = receipts(&receiver);
    assert_eq!(per_id.len(), 5000);
    assert_eq!(extra_receipts(&per_id), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_deliver_after_does_not_slow_anything_else() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    // A few rows parked forever, then the sidecar starts with nothing else
    // to look at.
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, deliver_after)
             SELECT 'never-' || g, 'fault.test', '{}', 'infinity'
             FROM generate_series(1, 3) g",
        )
        .await
        .unwrap();
    let mut sidecar = Launch::new(&db.url, "future")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .spawn();
    let parked_forever = stream_and_time(&db.client, &receiver, "now").await;
    // Then ten thousand rows a year ahead.
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, deliver_after)
             SELECT 'next-year-' || g, 'fault.test', '{}', now() + interval '1 year'
             FROM generate_series(1, 10000) g",
        )
        .await
        .unwrap();
    let next_year = stream_and_time(&db.client, &receiver, "soon").await;
    assert!(wait_delivered(&db.client, 100, WAIT).await);
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
    eprintln!(
        "slowest of 50 with 3 rows parked forever: {parked_forever:?}; \
         with 10,000 more a year ahead: {next_year:?}"
    );

    for slowest in [parked_forever, next_year] {
        assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    }
    assert_eq!(receiver.count(), 100, "nothing scheduled was sent early");
    // Scheduled messages are routed to their deliveries when due: until
    // then they show as pending messages without a delivery.
    let pending: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM outbox.message_status WHERE status = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 10_003);
    let log = sidecar.log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "the sidecar reported failures:\n{log}"
    );
}

/// Inserts 50 messages `<prefix>-<n>` one by one, each once the previous
/// one arrived; returns the slowest insert-to-arrival time.
async fn stream_and_time(client: &Client, receiver: &Receiver, prefix: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let event_id = format!("{prefix}-{i}");
        let started = Instant::now();
        insert_message(client, &event_id, "fault.test", "{}").await;
        assert!(
            receiver
                .wait_until(Duration::from_secs(2), |r| r
                    .iter()
                    .any(|r| r.webhook_id == event_id))
                .await,
            "{event_id} took over 2 s"
        );
        slowest = slowest.max(started.elapsed());
    }
    slowest
}
