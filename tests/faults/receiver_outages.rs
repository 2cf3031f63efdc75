//! Scenario 5: receivers that are down, hang, reset connections, or answer
//! 500 with an endless body. Retries follow the (short) schedule, the body
//! cap holds, memory stays bounded.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;
use crate::harness::hostile::{Hostile, Misbehaviour};
use crate::harness::*;

/// Delays (ms) before attempts 1..=8; long enough to outlast an outage.
const SCHEDULE: &[u64] = &[0, 200, 400, 800, 1600, 3200, 3200, 3200];
/// Four quick attempts, for receivers that never get better.
const SHORT_SCHEDULE: &[u64] = &[0, 100, 200, 400];

/// `OUTBOXD_RETRY_SCHEDULE` for delays in ms.
fn schedule(delays: &[u64]) -> String {
    let delays: Vec<String> = delays.iter().map(|ms| format!("{ms}ms")).collect();
    delays.join(",")
}

/// Generous: a sidecar at rest takes about 20 MiB.
const PEAK_RSS_BOUND_KIB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_goes_down_and_comes_back_gets_everything_on_schedule() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    let addr = receiver.addr();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "outage")
        .env("OUTBOXD_RETRY_SCHEDULE", &schedule(SCHEDULE))
        .spawn();
    insert_batch(&db.client, "up", 0, 20).await;
    assert!(wait_delivered(&db.client, 20, WAIT).await);

    drop(receiver);
    assert!(refused(addr).await, "the receiver is down");
    insert_batch(&db.client, "down", 0, 20).await;
    assert!(
        eventually(WAIT, || failed_at_least(&db.client, "down-%", 3)).await,
        "three failed attempts each"
    );
    let receiver = Receiver::start_at(addr, None, |_| Reply::ok())
        .await
        .unwrap();
    assert!(wait_delivered(&db.client, 40, WAIT).await);
    assert!(sidecar.peak_rss_kib() < PEAK_RSS_BOUND_KIB);
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());

    let per_id = receipts(&receiver);
    assert_eq!(per_id.len(), 20, "every message sent while it was down");
    assert_eq!(extra_receipts(&per_id), 0);
    for attempts in attempts_of(&db.client, "down-%").await {
        let (last, failed) = attempts.split_last().unwrap();
        assert_eq!(last.status_code, Some(200));
        assert!(failed.len() >= 3);
        for a in failed {
            let error = a.error.as_deref().unwrap();
            assert!(error.starts_with("connection failed"), "{error}");
        }
        assert_on_schedule(&attempts, SCHEDULE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hanging_past_the_timeout_is_cut_off_and_retried_on_schedule() {
    let db = fresh_db().await;
    // Hangs for a minute on the first two attempts of every message.
    let receiver = Receiver::start(None, |r| match r.nth {
        1 | 2 => Reply::ok().delay(Duration::from_secs(60)),
        _ => Reply::ok(),
    })
    .await
    .unwrap();
    // One message per endpoint: a failing endpoint is probed one request
    // at a time (so its retries cannot crowd out healthy endpoints), which
    // would queue several messages of one endpoint behind each other's
    // hanging attempts and blur each message's own schedule.
    for i in 0..10 {
        add_endpoint(
            &db.client,
            &format!("e{i}"),
            &receiver.url(),
            None,
            &Secret::generate(),
        )
        .await;
    }
    let mut sidecar = Launch::new(&db.url, "hang")
        .env("OUTBOXD_RETRY_SCHEDULE", &schedule(SCHEDULE))
        .env("OUTBOXD_REQUEST_TIMEOUT", "1s")
        .env("OUTBOXD_LEASE", "6s")
        .spawn();
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id)
             SELECT 'hang-' || g, 't', '{}', 'e' || g FROM generate_series(0, 9) g",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_delivered(&db.client, 10, WAIT).await);
    assert!(sidecar.peak_rss_kib() < PEAK_RSS_BOUND_KIB);
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());

    for attempts in attempts_of(&db.client, "hang-%").await {
        assert_eq!(attempts.len(), 3);
        for a in &attempts[..2] {
            assert_eq!(a.status_code, None);
            assert_eq!(a.error.as_deref(), Some("timed out after 1s"));
            assert!((1000..2000).contains(&a.duration_ms), "{}", a.duration_ms);
        }
        assert_eq!(attempts[2].status_code, Some(200));
        assert_on_schedule(&attempts, SCHEDULE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_resetting_connections_is_retried_until_dead_with_the_reason() {
    let db = fresh_db().await;
    let hostile = Hostile::start(Misbehaviour::Reset).await;
    add_endpoint(&db.client, "e", &hostile.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "reset")
        .env("OUTBOXD_RETRY_SCHEDULE", &schedule(SHORT_SCHEDULE))
        .spawn();
    insert_batch(&db.client, "reset", 0, 10).await;
    assert!(
        eventually(WAIT, || async {
            count_status(&db.client, "dead").await == 10
        })
        .await
    );
    assert!(sidecar.peak_rss_kib() < PEAK_RSS_BOUND_KIB);
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());

    assert_eq!(hostile.requests(), 40, "four attempts each, all sent");
    for attempts in attempts_of(&db.client, "reset-%").await {
        assert_eq!(attempts.len(), 4);
        for a in &attempts {
            assert_eq!(a.status_code, None);
            let error = a.error.as_deref().unwrap();
            assert!(error.contains("reset"), "{error}");
        }
        assert_on_schedule(&attempts, SHORT_SCHEDULE);
    }
    let last_errors: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM outbox.deliveries WHERE last_error LIKE '%reset%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last_errors, 10, "the reason is recorded on the dead row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_500_body_is_read_only_up_to_the_cap_and_memory_stays_bounded() {
    let db = fresh_db().await;
    let hostile = Hostile::start(Misbehaviour::EndlessError).await;
    add_endpoint(&db.client, "e", &hostile.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "endless")
        .env("OUTBOXD_RETRY_SCHEDULE", &schedule(&SHORT_SCHEDULE[..3]))
        .env("OUTBOXD_REQUEST_TIMEOUT", "10s")
        .env("OUTBOXD_LEASE", "15s")
        .env("OUTBOXD_CONCURRENCY", "64")
        .spawn();
    insert_batch(&db.client, "endless", 0, 300).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            count_status(&db.client, "dead").await == 300
        })
        .await,
        "{:?}",
        statuses(&db.client).await
    );
    let peak_rss = sidecar.peak_rss_kib();
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
    eprintln!(
        "900 endless 500s: peak RSS {peak_rss} KiB; at most {} bytes accepted on one connection",
        hostile.most_bytes_written()
    );

    assert_eq!(hostile.requests(), 900);
    let row = db
        .client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status_code = 500),
                    max(octet_length(response_excerpt)), max(duration_ms)
             FROM outbox.attempts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 900);
    assert_eq!(row.get::<_, i64>(1), 900);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(4096), "excerpt cap");
    let slowest: i32 = row.get(3);
    assert!(
        slowest < 5000,
        "reading stopped at the cap instead of running into the 10 s timeout ({slowest} ms)"
    );
    assert!(
        hostile.most_bytes_written() < 32 << 20,
        "the client hung up after the cap (plus socket buffers)"
    );
    assert!(peak_rss < PEAK_RSS_BOUND_KIB, "peak RSS {peak_rss} KiB");
}

/// Whether connecting to `addr` is refused (waits up to 5 s for it).
async fn refused(addr: SocketAddr) -> bool {
    eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await
}

/// Every delivery of messages whose event id is LIKE `pattern` has at least
/// `n` failed attempts logged.
async fn failed_at_least(client: &Client, pattern: &str, n: i64) -> bool {
    client
        .query_one(
            "SELECT bool_and(failed >= $2) FROM (
                 SELECT count(a.*) FILTER (WHERE a.error IS NOT NULL) AS failed
                 FROM outbox.message_status s
                 LEFT JOIN outbox.attempts a ON a.delivery_id = s.delivery_id
                 WHERE s.event_id LIKE $1 GROUP BY s.delivery_id) f",
            &[&pattern, &n],
        )
        .await
        .unwrap()
        .get::<_, Option<bool>>(0)
        .unwrap_or(false)
}

/// One logged attempt.
struct Attempt {
    started_at: SystemTime,
    duration_ms: i32,
    status_code: Option<i32>,
    error: Option<String>,
}

/// The attempts of each delivery of messages whose event id is LIKE
/// `pattern`, in order.
async fn attempts_of(client: &Client, pattern: &str) -> Vec<Vec<Attempt>> {
    let rows = client
        .query(
            "SELECT s.delivery_id, a.started_at, a.duration_ms, a.status_code, a.error
             FROM outbox.message_status s JOIN outbox.attempts a ON a.delivery_id = s.delivery_id
             WHERE s.event_id LIKE $1 ORDER BY s.delivery_id, a.attempt",
            &[&pattern],
        )
        .await
        .unwrap();
    let mut deliveries: Vec<(i64, Vec<Attempt>)> = Vec::new();
    for row in rows {
        let attempt = Attempt {
            started_at: row.get(1),
            duration_ms: row.get(2),
            status_code: row.get(3),
            error: row.get(4),
        };
        let id: i64 = row.get(0);
        match deliveries.last_mut() {
            Some((last, attempts)) if *last == id => attempts.push(attempt),
            _ => deliveries.push((id, vec![attempt])),
        }
    }
    assert!(!deliveries.is_empty(), "no attempts for {pattern}");
    deliveries.into_iter().map(|(_, a)| a).collect()
}

/// Each retry started after the scheduled delay (±20 % jitter), counted
/// from the end of the previous attempt, and not much later: the sidecar
/// wakes for the next due row instead of waiting for its poll.
fn assert_on_schedule(attempts: &[Attempt], schedule: &[u64]) {
    for (n, pair) in attempts.windows(2).enumerate() {
        let delay = Duration::from_millis(schedule[n + 1]);
        let finished = pair[0].started_at + Duration::from_millis(pair[0].duration_ms as u64);
        let waited = pair[1]
            .started_at
            .duration_since(finished)
            .unwrap_or_default();
        assert!(
            waited >= delay.mul_f64(0.8).saturating_sub(Duration::from_millis(20)),
            "attempt {} came {waited:?} after the previous one ended, before its {delay:?}",
            n + 2
        );
        assert!(
            waited <= delay.mul_f64(1.2) + Duration::from_secs(1),
            "attempt {} came {waited:?} after the previous one ended, not {delay:?}",
            n + 2
        );
    }
}
