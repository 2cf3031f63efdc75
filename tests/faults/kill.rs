//! Scenario 1: `run` processes SIGKILLed mid-batch, again and again, while
//! messages stream in; each time a replacement picks up.

use std::collections::HashSet;
use std::time::Duration;

use outboxd::signature::Secret;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::common::*;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_sidecars_lose_nothing_and_duplicate_only_their_lost_leases() {
    kill_repeatedly(8).await;
}

/// Soak: a hundred kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak, about 30 s: cargo test --test faults -- --ignored"]
async fn soak_a_hundred_sigkills_lose_nothing() {
    kill_repeatedly(100).await;
}

/// Starts a sidecar, SIGKILLs it mid-batch, `kills` times over, while a
/// producer streams messages in; then a survivor finishes.
async fn kill_repeatedly(kills: usize) {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |_| Reply::ok().delay(Duration::from_millis(20)))
        .await
        .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let stop_producing = CancellationToken::new();
    let producer = tokio::spawn(produce(db.connect().await, stop_producing.clone()));

    // Event ids whose lease died with a killed process: only these may
    // arrive twice (the dead process may have POSTed them already).
    let mut lost = HashSet::new();
    let mut lost_leases = 0;
    for round in 0..kills {
        let worker = format!("doomed-{round}");
        let mut sidecar = Launch::new(&db.url, &worker).spawn();
        assert!(
            eventually(WAIT, || mid_batch(&db.client, &worker)).await,
            "{worker} never got going"
        );
        sidecar.kill().await;
        assert!(wait_sessions_gone(&db.client, &worker).await);
        let leased = leased_by(&db.client, &worker).await;
        lost_leases += leased.len();
        lost.extend(leased);
    }
    stop_producing.cancel();
    let produced = producer.await.unwrap();

    let mut survivor = Launch::new(&db.url, "survivor").spawn();
    assert!(
        wait_delivered(&db.client, produced, Duration::from_secs(60)).await,
        "{:?} of {produced}",
        statuses(&db.client).await
    );
    assert!(survivor.terminate(Duration::from_secs(10)).await.success());

    assert_eq!(statuses(&db.client).await.len(), 1, "all delivered");
    let per_id = receipts(&receiver);
    assert_eq!(per_id.len() as i64, produced, "every message arrived");
    let duplicated: Vec<&String> = per_id
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    let extra = extra_receipts(&per_id);
    eprintln!(
        "{kills} kills, {produced} messages, {lost_leases} leases lost, {extra} duplicate receipts"
    );
    assert!(
        duplicated.iter().all(|id| lost.contains(*id)),
        "only deliveries whose lease died with a process arrive twice"
    );
    assert!(
        extra <= lost_leases,
        "{extra} duplicates > {lost_leases} lost leases"
    );
    let unlogged: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM outbox.deliveries d WHERE NOT EXISTS (
                 SELECT 1 FROM outbox.attempts a
                 WHERE a.delivery_id = d.id AND a.attempt = d.attempts AND a.status_code = 200)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unlogged, 0, "every delivery's successful attempt is logged");
}

/// Inserts 10 messages every 10 ms until told to stop; returns how many.
async fn produce(client: Client, stop: CancellationToken) -> i64 {
    let mut produced = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        insert_batch(&client, "s", produced, 10).await;
        produced += 10;
    }
    produced
}

/// `worker` has delivered a good hundred and holds leases right now.
async fn mid_batch(client: &Client, worker: &str) -> bool {
    client
        .query_one(
            "SELECT (SELECT count(*) FROM outbox.attempts WHERE worker_id = $1) >= 100
                AND EXISTS (SELECT 1 FROM outbox.deliveries
                            WHERE status = 'in_flight' AND lease_owner = $1)",
            &[&worker],
        )
        .await
        .unwrap()
        .get(0)
}

/// Event ids still leased to `worker`.
async fn leased_by(client: &Client, worker: &str) -> Vec<String> {
    client
        .query(
            "SELECT m.event_id FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
             WHERE d.status = 'in_flight' AND d.lease_owner = $1",
            &[&worker],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
