//! Scenario 3: PostgreSQL stops (fast and immediate modes) for a few
//! seconds mid-stream and comes back. Each test has its own cluster.

use std::time::{Duration, Instant, SystemTime};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;
use crate::harness::*;

/// How long the database stays away.
const OUTAGE: Duration = Duration::from_secs(3);
/// Messages inserted before each stop.
const BACKLOG: i64 = 3000;
/// Requests in flight, and rows per claim.
const CONCURRENCY: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_postgres_restart_mid_stream_loses_and_double_counts_nothing() {
    survives_restarts(&["fast"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_postgres_restart_mid_stream_loses_and_double_counts_nothing() {
    survives_restarts(&["immediate"]).await;
}

/// Soak: ten restarts in a row, alternating modes, one sidecar throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak, about 90 s: cargo test --test faults -- --ignored"]
async fn soak_ten_postgres_restarts_lose_and_double_count_nothing() {
    survives_restarts(&["fast", "immediate"].repeat(5)).await;
}

async fn survives_restarts(modes: &[&'static str]) {
    let cluster = OwnCluster::start().await;
    let receiver = Receiver::start(None, |_| Reply::ok().delay(Duration::from_millis(20)))
        .await
        .unwrap();
    add_endpoint(
        &cluster.db.client,
        "e",
        &receiver.url(),
        None,
        &Secret::generate(),
    )
    .await;
    // A 60 s poll: whatever arrives sooner came from reconnecting, polling
    // at once and re-LISTENing. Reconnect attempts at most a second apart.
    let mut sidecar = Launch::new(&cluster.db.url, "w")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .env("OUTBOXD_RECONNECT_MAX", "1s")
        .env("OUTBOXD_LEASE", "30s")
        .env("OUTBOXD_CONCURRENCY", &CONCURRENCY.to_string())
        .spawn();
    let mut client = cluster.db.connect().await;
    let mut total = 0;
    for (cycle, mode) in modes.iter().enumerate() {
        total += BACKLOG + 1;
        client = restart_mid_stream(&cluster, &receiver, client, cycle, mode).await;
    }
    assert!(wait_delivered(&client, total, WAIT).await);
    assert!(sidecar.is_running(), "outboxd outlived the outages");
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());

    let per_id = receipts(&receiver);
    assert_eq!(per_id.len() as i64, total, "nothing lost");
    // Claims do not wait for the WAL flush, so a crash (immediate stop)
    // may forget the last ones: those rows are sent again. Every outcome
    // write flushes all claims before it, so at most the claims since the
    // last write are forgotten: a few batches. A fast stop forgets none,
    // and the lease outlives the outage, so nothing is sent twice.
    let crashes = modes.iter().filter(|m| **m == "immediate").count();
    let extra = extra_receipts(&per_id);
    eprintln!("{extra} deliveries sent twice after {crashes} crashes");
    assert!(
        extra <= crashes * 4 * CONCURRENCY,
        "{extra} re-sends after {crashes} crashes"
    );
    if crashes == 0 {
        assert_eq!(extra, 0, "the lease outlived the outage: no re-sends");
    }
    // A forgotten claim's outcome cannot land (the row was claimed again,
    // with another lease), so its request is the one not logged.
    assert_eq!(
        attempt_rows(&client).await,
        (receiver.count() - extra) as i64,
        "every request's outcome written once, except those of forgotten claims"
    );
}

/// Inserts a backlog, stops PostgreSQL in `mode` once the stream is
/// going, restarts it after [`OUTAGE`], and waits until everything is
/// delivered; returns a connection to the restarted server.
async fn restart_mid_stream(
    cluster: &OwnCluster,
    receiver: &Receiver,
    client: Client,
    cycle: usize,
    mode: &'static str,
) -> Client {
    let before = receiver.count();
    insert_batch(&client, &format!("c{cycle}"), 0, BACKLOG).await;
    assert!(
        receiver.wait_until(WAIT, |r| r.len() >= before + 500).await,
        "the stream got going"
    );
    // Requests are in flight and outcomes queued when the database goes.
    cluster.stop(mode).await;
    let at_stop = receiver.count() - before;
    // The outage itself, not a synchronisation.
    tokio::time::sleep(OUTAGE).await;
    cluster.restart().await;
    let restarted = (Instant::now(), SystemTime::now());
    let client = cluster.db.connect().await;

    let all = (cycle as i64 + 1) * (BACKLOG + 1) - 1;
    assert!(
        wait_delivered(&client, all, Duration::from_secs(30)).await,
        "{:?}",
        statuses(&client).await
    );
    let drained = restarted.0.elapsed();
    let resumed = receiver
        .received()
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > restarted.1)
        .min()
        .and_then(|at| at.duration_since(restarted.1).ok())
        .expect("deliveries after the restart");
    let woken = wake_up_after_restart(&client, receiver, cycle).await;
    eprintln!(
        "{mode}: {at_stop} of {BACKLOG} arrived before the stop; after the restart \
         the first arrived in {resumed:?}, the last in {drained:?}; a new row in {woken:?}"
    );
    assert!(
        resumed < Duration::from_secs(4),
        "with --reconnect-max 1s, delivery resumed only {resumed:?} after the restart"
    );
    client
}

/// Once the backlog is gone the sidecar idles on its 60 s poll: a new row
/// arriving within 2 s came by a wake-up, so the listener is back.
async fn wake_up_after_restart(client: &Client, receiver: &Receiver, cycle: usize) -> Duration {
    let event_id = format!("after-{cycle}");
    let inserted = Instant::now();
    insert_message(client, &event_id, "fault.test", "{}").await;
    assert!(
        receiver
            .wait_until(Duration::from_secs(2), |r| r
                .iter()
                .any(|r| r.webhook_id == event_id))
            .await,
        "no wake-up after the restart: the listener did not LISTEN again"
    );
    inserted.elapsed()
}
