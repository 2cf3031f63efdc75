//! Scenario 6: SIGTERM while many requests are in flight: exit 0 within
//! the grace period, every outcome written, every unfinished claim released
//! at once rather than left to its lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;
use crate::harness::*;

const MESSAGES: i64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_in_the_grace_period_writing_or_releasing_everything() {
    let db = fresh_db().await;
    // Most answers take 100 ms; until the first sidecar is gone, every
    // 50th message hangs far beyond the grace period.
    let stalling = Arc::new(AtomicBool::new(true));
    let receiver = Receiver::start(None, {
        let stalling = stalling.clone();
        move |r| {
            let n: u64 = r.webhook_id.rsplit('-').next().unwrap().parse().unwrap();
            if n.is_multiple_of(50) && stalling.load(Ordering::SeqCst) {
                Reply::ok().delay(Duration::from_secs(60))
            } else {
                Reply::ok().delay(Duration::from_millis(100))
            }
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    // A long lease: only an explicit release makes a row due again soon.
    let launch = |worker: &str| {
        Launch::new(&db.url, worker)
            .env("OUTBOXD_CONCURRENCY", "64")
            .env("OUTBOXD_LEASE", "60s")
            .env("OUTBOXD_REQUEST_TIMEOUT", "30s")
            .env("OUTBOXD_SHUTDOWN_GRACE", "2s")
    };
    let mut sidecar = launch("stopping").spawn();
    insert_batch(&db.client, "load", 0, MESSAGES).await;
    assert!(receiver.wait_until(WAIT, |r| r.len() >= 300).await);

    let stopping = Instant::now();
    let status = sidecar.terminate(Duration::from_secs(10)).await;
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(3500), "exit took {took:?}");

    let received = receipts(&receiver);
    let Leftover {
        delivered,
        released,
        unstarted,
    } = after_shutdown(&db.client, &received).await;
    eprintln!(
        "SIGTERM with {} received: exit 0 after {took:?}; {delivered} delivered, \
         {released} cut off and released, {unstarted} never claimed",
        received.len()
    );
    assert_eq!(
        attempt_rows(&db.client).await,
        delivered,
        "every outcome written"
    );
    assert!(released > 0, "requests past the grace period were cut off");
    assert!(released <= 64, "at most the in-flight requests");
    assert!(unstarted > 0, "claiming stopped");

    // Released rows are due at once: a successor finishes everything long
    // before the 60 s lease would have expired.
    stalling.store(false, Ordering::SeqCst);
    let mut successor = launch("successor").spawn();
    assert!(wait_delivered(&db.client, MESSAGES, Duration::from_secs(30)).await);
    assert!(successor.terminate(Duration::from_secs(10)).await.success());
    let per_id = receipts(&receiver);
    assert_eq!(per_id.len() as i64, MESSAGES);
    assert_eq!(
        extra_receipts(&per_id),
        released,
        "only the cut-off requests went twice"
    );
}

/// What a stopped sidecar left behind.
struct Leftover {
    /// Rows delivered.
    delivered: i64,
    /// Rows whose request had started, handed back.
    released: usize,
    /// Rows never sent.
    unstarted: usize,
}

/// Sorts every row into delivered, released or never sent, asserting that
/// nothing is left in flight and that every pending row is unowned,
/// uncounted and due at once.
async fn after_shutdown(client: &Client, received: &HashMap<String, usize>) -> Leftover {
    let rows = client
        .query(
            "SELECT s.event_id, d.status, d.attempts, d.lease_owner, d.next_attempt_at <= now()
             FROM outbox.message_status s JOIN outbox.deliveries d ON d.id = s.delivery_id",
            &[],
        )
        .await
        .unwrap();
    let mut leftover = Leftover {
        delivered: 0,
        released: 0,
        unstarted: 0,
    };
    for row in rows {
        let event_id: String = row.get(0);
        let status: String = row.get(1);
        let claim = (
            row.get::<_, i32>(2),
            row.get::<_, Option<String>>(3),
            row.get::<_, Option<bool>>(4),
        );
        match status.as_str() {
            "delivered" => {
                assert!(received.contains_key(&event_id), "{event_id}");
                leftover.delivered += 1;
            }
            "pending" => {
                assert_eq!(claim, (0, None, Some(true)), "{event_id}");
                if received.contains_key(&event_id) {
                    leftover.released += 1;
                } else {
                    leftover.unstarted += 1;
                }
            }
            other => panic!("{event_id} is {other} after shutdown"),
        }
    }
    leftover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_as_soon_as_in_flight_requests_are_done() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |_| Reply::ok().delay(Duration::from_millis(300)))
        .await
        .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "prompt")
        .env("OUTBOXD_CONCURRENCY", "16")
        .env("OUTBOXD_SHUTDOWN_GRACE", "20s")
        .spawn();
    insert_batch(&db.client, "m", 0, 200).await;
    assert!(receiver.wait_until(WAIT, |r| r.len() >= 16).await);

    let stopping = Instant::now();
    assert!(sidecar.terminate(Duration::from_secs(25)).await.success());
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "waited {took:?}, not just for the requests in flight"
    );
    let delivered = count_status(&db.client, "delivered").await;
    assert_eq!(
        delivered as usize,
        receiver.count(),
        "every started request finished and was written"
    );
    assert_eq!(count_status(&db.client, "in_flight").await, 0);
}
