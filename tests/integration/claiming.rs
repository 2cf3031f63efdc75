//! Claims: batch limits, lease expiry and fencing, concurrent sidecars.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outboxd::config::DatabaseUrl;
use outboxd::db::Db;
use outboxd::db::queries::Queries;
use outboxd::delivery::{AttemptRecord, Job, Outcome, Verdict};
use outboxd::signature::Secret;
use outboxd::writer::Writer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const DAY: Duration = Duration::from_secs(86_400);

async fn queries(db: &TestDb) -> Queries {
    Queries::connect(&Db::new(&DatabaseUrl::new(db.url.clone())).unwrap())
        .await
        .unwrap()
}

/// Endpoint "e", pointing where nothing listens: these tests claim and
/// write outcomes themselves.
async fn no_receiver_endpoint(db: &TestDb) {
    add_unreachable_endpoint(&db.client, "e").await;
}

async fn insert_many(db: &TestDb, n: i32) {
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'evt-' || g, 't', jsonb_build_object('n', g) FROM generate_series(1, $1) g",
            &[&n],
        )
        .await
        .unwrap();
}

/// The outcome of one attempt at `job`.
fn outcome(job: &Job, verdict: Verdict, status: u16) -> Outcome {
    let record = AttemptRecord {
        started_at: SystemTime::now(),
        duration: Duration::from_millis(3),
        status_code: Some(status),
        error: (status >= 300).then(|| format!("HTTP {status}")),
        response_excerpt: None,
    };
    Outcome::attempted(job, verdict, record)
}

#[tokio::test]
async fn a_claim_never_takes_more_rows_than_its_batch() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    db.client
        .execute("UPDATE outbox.endpoints SET max_in_flight = 1000", &[])
        .await
        .unwrap();
    insert_many(&db, 25).await;
    let q = queries(&db).await;
    let lease = Duration::from_secs(60);

    let first = q.claim("w", 10, lease).await.unwrap();
    let second = q.claim("w", 10, lease).await.unwrap();
    let third = q.claim("w", 10, lease).await.unwrap();
    let fourth = q.claim("w", 10, lease).await.unwrap();
    assert_eq!(
        [first.len(), second.len(), third.len(), fourth.len()],
        [10, 10, 5, 0]
    );
    let mut ids: Vec<i64> = [first, second, third]
        .concat()
        .iter()
        .map(|j| j.claim.delivery_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "no row claimed twice while leased");
    assert_eq!(count_status(&db.client, "in_flight").await, 25);
}

#[tokio::test]
async fn claims_skip_disabled_endpoints_until_re_enabled() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    insert_many(&db, 3).await;
    db.client
        .execute(
            "UPDATE outbox.endpoints SET enabled = false, disabled_reason = 'maintenance'",
            &[],
        )
        .await
        .unwrap();
    let q = queries(&db).await;
    assert_eq!(
        q.claim("w", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        q.next_due("w", false, Duration::from_secs(60))
            .await
            .unwrap(),
        None,
        "nothing claimable is due"
    );
    db.client
        .execute("UPDATE outbox.endpoints SET enabled = true", &[])
        .await
        .unwrap();
    assert_eq!(
        q.claim("w", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_delivery_scheduled_at_infinity_is_never_due() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, deliver_after)
             VALUES ('parked', 't', '{}', 'infinity')",
            &[],
        )
        .await
        .unwrap();
    route(&db.client).await;
    let q = queries(&db).await;
    assert_eq!(
        q.next_due("w", false, Duration::from_secs(60))
            .await
            .unwrap(),
        Some(Duration::MAX)
    );
    assert!(
        q.claim("w", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_worker_whose_lease_expired_cannot_overwrite_the_new_owners_outcome() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    insert_many(&db, 1).await;
    let (a, b) = (queries(&db).await, queries(&db).await);

    let claimed_by_a = a
        .claim("worker-a", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(claimed_by_a.len(), 1);
    let job_a = &claimed_by_a[0];
    assert_eq!(job_a.claim.attempt, 1);
    assert!(
        b.claim("worker-b", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );

    // Worker A is "stuck in a request" past its lease; B takes over.
    let deadline = tokio::time::Instant::now() + WAIT;
    let claimed_by_b = loop {
        let claimed = b
            .claim("worker-b", 10, Duration::from_secs(60))
            .await
            .unwrap();
        if !claimed.is_empty() {
            break claimed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired lease was never re-claimable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job_b = &claimed_by_b[0];
    assert_eq!(
        (job_b.claim.delivery_id, job_b.claim.attempt),
        (job_a.claim.delivery_id, 2)
    );
    let written = b
        .complete("worker-b", &[&outcome(job_b, Verdict::Delivered, 200)], DAY)
        .await
        .unwrap()
        .written;
    assert_eq!(written, 1);

    // A finally finishes: its failure must change nothing.
    let stale = outcome(job_a, Verdict::Retry(Duration::ZERO), 500);
    assert_eq!(
        a.complete("worker-a", &[&stale], DAY)
            .await
            .unwrap()
            .written,
        0
    );
    assert_eq!(a.release("worker-a", &[job_a.claim]).await.unwrap(), 0);
    // Nor may A, by some bug, write B's claim.
    let forged = outcome(job_b, Verdict::Dead, 500);
    assert_eq!(
        a.complete("worker-a", &[&forged], DAY)
            .await
            .unwrap()
            .written,
        0
    );

    let row = db
        .client
        .query_one(
            "SELECT status, attempts, last_status_code, lease_owner FROM outbox.deliveries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(200));
    assert_eq!(row.get::<_, Option<String>>(3), None);
    let logged: Vec<(i32, Option<String>)> = db
        .client
        .query("SELECT attempt, worker_id FROM outbox.attempts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        logged,
        [(2, Some("worker-b".to_owned()))],
        "only the owner's attempt is logged, with the owner's name"
    );
}

#[tokio::test]
async fn the_outcome_of_a_claim_a_crash_forgot_does_not_land_on_the_next_claim() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    insert_many(&db, 1).await;
    let q = queries(&db).await;
    let forgotten = q.claim("w", 10, Duration::from_secs(60)).await.unwrap();
    // What a crash does to a claim that never reached the disk: the row is
    // back as it was before it.
    db.client
        .batch_execute(
            "UPDATE outbox.deliveries
             SET status = 'pending', attempts = 0, lease_owner = NULL, next_attempt_at = now()",
        )
        .await
        .unwrap();
    let again = q.claim("w", 10, Duration::from_secs(60)).await.unwrap();
    let (old, new) = (&forgotten[0], &again[0]);
    assert_eq!(
        (old.claim.delivery_id, old.claim.attempt),
        (new.claim.delivery_id, new.claim.attempt)
    );
    assert_ne!(old.claim.leased_until, new.claim.leased_until);

    // Both requests went out; their outcomes meet in one batch.
    let late = outcome(old, Verdict::Retry(Duration::ZERO), 500);
    let current = outcome(new, Verdict::Delivered, 200);
    let written = q
        .complete("w", &[&late, &current], DAY)
        .await
        .unwrap()
        .written;
    assert_eq!(written, 1, "only the current claim's outcome lands");
    assert_eq!(q.release("w", &[old.claim]).await.unwrap(), 0);
    let row = db
        .client
        .query_one(
            "SELECT d.status, d.last_status_code, (SELECT count(*) FROM outbox.attempts)
             FROM outbox.deliveries d",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, Option<i32>>(1), Some(200));
    assert_eq!(row.get::<_, i64>(2), 1, "one attempt logged");
}

#[tokio::test]
async fn an_outcome_the_database_refuses_does_not_hold_up_the_others() {
    let db = fresh_db().await;
    no_receiver_endpoint(&db).await;
    insert_many(&db, 3).await;
    let jobs = queries(&db)
        .await
        .claim("w", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 3);
    let (sender, outcomes) = tokio::sync::mpsc::channel(8);
    let writer = Writer::new(
        Db::new(&DatabaseUrl::new(db.url.clone())).unwrap(),
        "w".into(),
        DAY,
        outcomes,
        Arc::new(Notify::new()),
    );
    // PostgreSQL text cannot hold NUL: this one fails on its data, in
    // whatever batch it is written.
    let mut poisoned = outcome(&jobs[1], Verdict::Retry(Duration::ZERO), 500);
    poisoned.record.as_mut().unwrap().error = Some("bad\0byte".into());
    for outcome in [
        outcome(&jobs[0], Verdict::Delivered, 200),
        poisoned,
        outcome(&jobs[2], Verdict::Delivered, 200),
    ] {
        sender.send(outcome).await.unwrap();
    }
    drop(sender);
    tokio::time::timeout(WAIT, writer.run(CancellationToken::new()))
        .await
        .expect("the writer finished instead of retrying forever");
    let statuses: Vec<(i64, String)> = db
        .client
        .query("SELECT id, status FROM outbox.deliveries ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        statuses,
        [
            (jobs[0].claim.delivery_id, "delivered".to_owned()),
            (jobs[1].claim.delivery_id, "in_flight".to_owned()),
            (jobs[2].claim.delivery_id, "delivered".to_owned()),
        ],
        "the refused one waits for its lease to end"
    );
}

#[tokio::test]
async fn two_sidecars_deliver_ten_thousand_messages_exactly_once() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    let mut first = config(&db);
    first.worker_id = "replica-1".into();
    let mut second = config(&db);
    second.worker_id = "replica-2".into();
    let sidecars = [spawn(first), spawn(second)];

    insert_many(&db, 10_000).await;
    assert!(
        receiver
            .wait_until(Duration::from_secs(120), |r| r.len() >= 10_000)
            .await,
        "only {} of 10000 arrived",
        receiver.count()
    );
    assert!(wait_settled(&db.client, Duration::from_secs(60)).await);
    for sidecar in sidecars {
        sidecar.stop().await;
    }

    let got = receiver.received();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *per_id.entry(r.webhook_id.as_str()).or_default() += 1;
    }
    assert_eq!(per_id.len(), 10_000, "every message arrived");
    assert!(per_id.values().all(|&n| n == 1), "none arrived twice");
    assert!(got.iter().all(|r| r.verified == Some(Ok(()))));
    assert_eq!(count_status(&db.client, "delivered").await, 10_000);
    let attempts: i64 = count(&db.client, "SELECT count(*) FROM outbox.attempts").await;
    assert_eq!(attempts, 10_000);
}

#[tokio::test]
async fn async_commit_sets_the_sidecars_sessions_and_still_delivers() {
    let db = fresh_db().await;
    let url = DatabaseUrl::new(db.url.clone());
    let fast = Db::new(&url)
        .unwrap()
        .with_async_commit()
        .connect()
        .await
        .unwrap();
    let setting: String = fast
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "off");

    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    let mut cfg = config(&db);
    cfg.async_commit = true;
    let sidecar = spawn(cfg);
    insert_many(&db, 20).await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    assert_eq!(count_status(&db.client, "delivered").await, 20);
}
