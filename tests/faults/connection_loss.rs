//! Scenario 4: connections that die, loudly (terminated by the server) or
//! silently (no FIN, no RST: a dropped NAT entry, a frozen peer). Every
//! sidecar here polls only once a minute, so whatever arrives sooner came
//! through a wake-up on a replaced connection.

use std::time::{Duration, Instant};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;
use crate::harness::proxy::Proxy;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listener_connection_is_replaced_and_wake_ups_resume() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut sidecar = Launch::new(&db.url, "terminated")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .spawn();
    let (listener, _) = listener_backend(&db.client, "terminated", None, WAIT)
        .await
        .expect("listening");

    let killed = Instant::now();
    let terminated: bool = db
        .client
        .query_one("SELECT pg_terminate_backend($1)", &[&listener])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);
    deliver_one(&db.client, &receiver, "meanwhile", Duration::from_secs(5)).await;
    assert!(
        listener_backend(
            &db.client,
            "terminated",
            Some(listener),
            Duration::from_secs(2)
        )
        .await
        .is_some(),
        "no new listener 2 s after the old one was terminated"
    );
    let recovered = killed.elapsed();
    let wake_up = wake_ups_work(&db.client, &receiver).await;
    eprintln!("listener replaced within {recovered:?}; wake-ups take {wake_up:?}");
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_listener_connection_is_noticed_and_replaced() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db.url).await;
    let mut sidecar = Launch::new(&via_proxy, "silent")
        .env("OUTBOXD_POLL_INTERVAL", "60s")
        .spawn();
    let (listener, port) = listener_backend(&db.client, "silent", None, WAIT)
        .await
        .expect("listening");

    let killed = Instant::now();
    assert!(proxy.kill_silently(port));
    insert_message(&db.client, "unheard", "t", "{}").await;
    // Its wake-up is lost with the connection; the listener's probe
    // notices the silence, and the poll after re-LISTEN finds the row.
    assert!(
        listener_backend(
            &db.client,
            "silent",
            Some(listener),
            Duration::from_secs(20)
        )
        .await
        .is_some(),
        "no new listener 20 s after the old one went silent"
    );
    let recovered = killed.elapsed();
    assert!(
        receiver
            .wait_until(Duration::from_secs(5), |r| r
                .iter()
                .any(|r| r.webhook_id == "unheard"))
            .await
    );
    let wake_up = wake_ups_work(&db.client, &receiver).await;
    eprintln!("silent listener replaced within {recovered:?}; wake-ups take {wake_up:?}");
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_dead_claim_and_write_connections_are_replaced() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let (proxy, via_proxy) = Proxy::in_front_of(&db.url).await;
    // The lease outlasts the writer's wait for its dead connection, so the
    // outcome lands instead of the delivery being re-sent.
    let mut sidecar = Launch::new(&via_proxy, "all-silent")
        .env("OUTBOXD_POLL_INTERVAL", "500ms")
        .env("OUTBOXD_LEASE", "60s")
        .spawn();
    deliver_one(&db.client, &receiver, "warm-up", Duration::from_secs(5)).await;
    assert!(
        wait_delivered(&db.client, 1, WAIT).await,
        "the writer is connected"
    );

    // Every connection goes quiet: the listener's, the claiming one (used
    // again within a poll interval), the writing one (at the next outcome)
    // and housekeeping's. Each must be given up and replaced.
    let killed = Instant::now();
    assert_eq!(proxy.kill_all_silently(), 4);
    let sent = deliver_one(&db.client, &receiver, "after", Duration::from_secs(25)).await;
    assert!(
        wait_delivered(&db.client, 2, Duration::from_secs(25)).await,
        "the outcome was written: {:?}",
        statuses(&db.client).await
    );
    let written = killed.elapsed();
    eprintln!(
        "after every connection went quiet: sent in {sent:?}, outcome written after {written:?}"
    );
    assert!(sidecar.terminate(Duration::from_secs(10)).await.success());
    assert_eq!(extra_receipts(&receipts(&receiver)), 0, "nothing re-sent");
    assert_eq!(
        attempt_rows(&db.client).await,
        2,
        "each outcome written once"
    );
}

/// Inserts one message and waits until it arrives; returns how long it took.
async fn deliver_one(
    client: &Client,
    receiver: &Receiver,
    event_id: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    insert_message(client, event_id, "t", "{}").await;
    assert!(
        receiver
            .wait_until(within, |r| r.iter().any(|r| r.webhook_id == event_id))
            .await,
        "{event_id} did not arrive within {within:?}"
    );
    started.elapsed()
}

/// Three messages in a row, each delivered within a second (with a 60 s
/// poll only a wake-up is that fast); returns the slowest.
async fn wake_ups_work(client: &Client, receiver: &Receiver) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..3 {
        let id = format!("wake-up-{i}");
        slowest = slowest.max(deliver_one(client, receiver, &id, Duration::from_secs(1)).await);
    }
    slowest
}

/// The backend (pid, client port) of `worker_id`'s wake-up listener, other
/// than `except`, once there is one (waiting at most `within`): the session
/// of that worker whose statements are the listener's `LISTEN` and
/// `SELECT 1` probe.
async fn listener_backend(
    client: &Client,
    worker_id: &str,
    except: Option<i32>,
    within: Duration,
) -> Option<(i32, u16)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let found = client
            .query_opt(
                "SELECT pid, client_port FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1
                   AND pid <> coalesce($2, 0)
                   AND query IN ('LISTEN outboxd_wakeup', 'SELECT 1')",
                &[&worker_id, &except],
            )
            .await
            .unwrap()
            .map(|r| (r.get(0), r.get::<_, i32>(1) as u16));
        if found.is_some() || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
