//! Scenario 2: three `run` processes on one database drain a large backlog
//! with no duplicates, no losses, and work spread over all three.

use std::time::{Duration, Instant};

use outboxd::signature::Secret;

use crate::common::*;
use crate::harness::*;

const REPLICAS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_drain_fifty_thousand_messages_exactly_once_and_share_the_work() {
    drain_with_three_replicas(50_000).await;
}

/// Soak: a quarter of a million messages (~45 s with `--release`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak, about a minute in a release build: cargo test --release --test faults -- --ignored"]
async fn soak_three_replicas_drain_a_quarter_million_messages_exactly_once() {
    drain_with_three_replicas(250_000).await;
}

async fn drain_with_three_replicas(messages: i64) {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    let mut replicas: Vec<Outboxd> = (0..REPLICAS)
        .map(|i| {
            Launch::new(&db.url, &format!("replica-{i}"))
                .env("OUTBOXD_LEASE", "60s")
                .env("OUTBOXD_REQUEST_TIMEOUT", "15s")
                .spawn()
        })
        .collect();

    let started = Instant::now();
    for chunk in 0..10 {
        insert_batch(&db.client, "r", chunk * messages / 10, messages / 10).await;
    }
    let within = Duration::from_secs(150.max(messages as u64 / 200));
    assert!(
        wait_delivered(&db.client, messages, within).await,
        "{:?} after {:?}",
        statuses(&db.client).await,
        started.elapsed()
    );
    let took = started.elapsed();
    let mut peak_rss = Vec::new();
    for replica in &mut replicas {
        peak_rss.push(replica.peak_rss_kib());
        assert!(replica.terminate(Duration::from_secs(10)).await.success());
    }
    let by_worker = attempts_by_worker(&db.client).await;
    eprintln!(
        "{messages} messages in {took:?}; attempts by replica {by_worker:?}; peak RSS {peak_rss:?} KiB"
    );

    let per_id = receipts(&receiver);
    assert_eq!(per_id.len() as i64, messages, "zero losses");
    assert_eq!(extra_receipts(&per_id), 0, "zero duplicates");
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.verified == Some(Ok(())))
    );
    assert_eq!(attempt_rows(&db.client).await, messages, "one attempt each");
    assert_eq!(
        by_worker.len(),
        REPLICAS,
        "every replica worked: {by_worker:?}"
    );
    for (worker, attempts) in &by_worker {
        assert!(
            *attempts >= messages / 20,
            "{worker} did only {attempts} of {messages}"
        );
    }
}
