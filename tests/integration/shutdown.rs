//! Shutdown: stop claiming, finish or release in-flight work, write every
//! outcome.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outboxd::signature::Secret;

use crate::common::*;

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_loses_nothing() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |_| Reply::ok().delay(Duration::from_millis(300)))
        .await
        .unwrap();
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut cfg = config(&db);
    cfg.concurrency = 8;
    let sidecar = spawn(cfg.clone());
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'evt-' || g, 't', '{}' FROM generate_series(1, 40) g",
            &[],
        )
        .await
        .unwrap();
    assert!(
        receiver.wait_until(WAIT, |r| r.len() >= 8).await,
        "requests in flight"
    );
    sidecar.stop().await;

    assert_eq!(
        count_status(&db.client, "in_flight").await,
        0,
        "nothing left leased"
    );
    let delivered = count_status(&db.client, "delivered").await;
    let pending = count_status(&db.client, "pending").await;
    assert_eq!(delivered + pending, 40);
    assert_eq!(
        delivered as usize,
        receiver.count(),
        "every answered request was recorded"
    );
    assert!(pending > 0, "shutdown stopped claiming");

    // A successor finishes the rest, re-sending nothing.
    let successor = spawn(cfg);
    assert!(wait_settled(&db.client, WAIT).await);
    successor.stop().await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *per_id.entry(r.webhook_id).or_default() += 1;
    }
    assert_eq!(per_id.len(), 40);
    assert!(per_id.values().all(|&n| n == 1));
}

#[tokio::test]
async fn requests_outliving_the_grace_period_are_released_not_left_leased() {
    let db = fresh_db().await;
    let stuck = Receiver::start(None, |_| Reply::ok().delay(Duration::from_secs(4)))
        .await
        .unwrap();
    add_endpoint(&db.client, "e", &stuck.url(), None, &Secret::generate()).await;
    let mut cfg = config(&db);
    cfg.shutdown_grace = Duration::from_millis(200);
    let sidecar = spawn(cfg.clone());
    for i in 0..3 {
        insert_message(&db.client, &format!("m{i}"), "t", "{}").await;
    }
    assert!(stuck.wait_until(WAIT, |r| r.len() == 3).await);
    let stopping = Instant::now();
    sidecar.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "did not wait for the stuck receiver"
    );

    let rows = db
        .client
        .query(
            "SELECT status, attempts, lease_owner FROM outbox.deliveries",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        assert_eq!(row.get::<_, String>(0), "pending");
        assert_eq!(
            row.get::<_, i32>(1),
            0,
            "a released claim is not counted as an attempt"
        );
        assert_eq!(row.get::<_, Option<String>>(2), None);
    }

    let healthy = ok_receiver(None).await;
    db.client
        .execute("UPDATE outbox.endpoints SET url = $1", &[&healthy.url()])
        .await
        .unwrap();
    let successor = spawn(cfg);
    assert!(
        wait_settled(&db.client, WAIT).await,
        "released rows are due at once"
    );
    successor.stop().await;
    assert_eq!(healthy.count(), 3);
}
