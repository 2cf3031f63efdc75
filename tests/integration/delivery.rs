//! From an INSERT to a verified POST: signing, fan-out, transactions,
//! scheduling and wake-up latency.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use outboxd::signature::Secret;
use sha2::Sha256;

use crate::common::*;

/// An HMAC computed here, not by outboxd::signature: an independent check.
fn independent_signature(secret_whsec: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = BASE64
        .decode(secret_whsec.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn one_message_becomes_one_signed_post() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "billing", &receiver.url(), None, &secret).await;
    let sidecar = spawn(config(&db));

    insert_message(
        &db.client,
        "evt_1",
        "invoice.paid",
        r#"{"amount": 42, "currency": "EUR"}"#,
    )
    .await;
    assert!(
        receiver.wait_until(WAIT, |r| !r.is_empty()).await,
        "no request arrived"
    );
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let got = receiver.received();
    assert_eq!(got.len(), 1, "exactly one POST");
    let r = &got[0];
    assert_eq!(r.webhook_id, "evt_1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json().unwrap(),
        serde_json::json!({"amount": 42, "currency": "EUR"})
    );
    let sent_at: u64 = r.timestamp.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(sent_at) < 60,
        "webhook-timestamp is the current time"
    );
    assert_eq!(
        r.signature,
        independent_signature(&secret.to_whsec(), "evt_1", &r.timestamp, &r.body)
    );
    assert_eq!(
        r.verified,
        Some(Ok(())),
        "outboxd::signature::Verifier accepts it too"
    );

    let row = db
        .client
        .query_one(
            "SELECT status, attempts, last_status_code, delivered_at IS NOT NULL, next_attempt_at
             FROM outbox.message_status WHERE event_id = 'evt_1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "delivered");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(200));
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Option<SystemTime>>(4), None);
    let attempts: i64 = count(
        &db.client,
        "SELECT count(*) FROM outbox.attempts WHERE status_code = 200 AND error IS NULL",
    )
    .await;
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn every_secret_of_an_endpoint_signs() {
    let db = fresh_db().await;
    let (old, new) = (Secret::generate(), Secret::generate());
    let receiver = ok_receiver(None).await;
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('e', $1, ARRAY[$2, $3])",
            &[&receiver.url(), &old.to_whsec(), &new.to_whsec()],
        )
        .await
        .unwrap();
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "rot", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| !r.is_empty()).await);
    sidecar.stop().await;
    let r = &receiver.received()[0];
    let entries: Vec<&str> = r.signature.split(' ').collect();
    assert_eq!(
        entries,
        [
            independent_signature(&old.to_whsec(), "rot", &r.timestamp, &r.body),
            independent_signature(&new.to_whsec(), "rot", &r.timestamp, &r.body)
        ]
    );
}

#[tokio::test]
async fn fan_out_respects_event_type_filters_and_explicit_endpoints() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let all = ok_receiver(None).await;
    let orders = ok_receiver(None).await;
    add_endpoint(&db.client, "all", &all.url(), None, &secret).await;
    add_endpoint(
        &db.client,
        "orders",
        &orders.url(),
        Some(&["order.created"]),
        &secret,
    )
    .await;
    let sidecar = spawn(config(&db));

    insert_message(&db.client, "m1", "order.created", "{}").await;
    insert_message(&db.client, "m2", "user.deleted", "{}").await;
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id)
             VALUES ('m3', 'user.deleted', '{}', 'orders')",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let ids = |r: &Receiver| {
        let mut ids: Vec<String> = r.received().into_iter().map(|r| r.webhook_id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&all),
        ["m1", "m2"],
        "no filter: every fanned-out type, not the explicit m3"
    );
    assert_eq!(
        ids(&orders),
        ["m1", "m3"],
        "filtered, plus the message addressed to it"
    );
}

#[tokio::test]
async fn unknown_explicit_endpoint_is_an_insert_error() {
    let db = fresh_db().await;
    let error = db
        .client
        .execute(
            "INSERT INTO outbox.messages (event_type, payload, endpoint_id) VALUES ('t', '{}', 'nope')",
            &[],
        )
        .await
        .unwrap_err();
    let db_error = error.as_db_error().unwrap();
    assert_eq!(db_error.code().code(), "23503");
    assert!(
        db_error.message().contains("unknown endpoint_id \"nope\""),
        "{}",
        db_error.message()
    );
    let messages: i64 = count(&db.client, "SELECT count(*) FROM outbox.messages").await;
    assert_eq!(messages, 0);
}

#[tokio::test]
async fn rolled_back_transaction_delivers_nothing() {
    let mut db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    let sidecar = spawn(config(&db));

    let tx = db.client.transaction().await.unwrap();
    tx.execute("INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('rolled-back', 't', '{}')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A later committed message proves the sidecar was looking.
    insert_message(&db.client, "sentinel", "t", "{}").await;
    assert!(
        receiver
            .wait_until(WAIT, |r| r.iter().any(|r| r.webhook_id == "sentinel"))
            .await
    );
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let ids: Vec<String> = receiver
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    assert_eq!(ids, ["sentinel"]);
    let deliveries: i64 = count(&db.client, "SELECT count(*) FROM outbox.deliveries").await;
    assert_eq!(deliveries, 1);
}

#[tokio::test]
async fn duplicate_event_id_is_rejected_or_ignored_on_conflict() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    insert_message(&db.client, "same", "t", r#"{"v": 1}"#).await;

    let error = db
        .client
        .execute("INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('same', 't', '{\"v\": 2}')", &[])
        .await
        .unwrap_err();
    assert_eq!(error.code().unwrap().code(), "23505");

    let inserted = db
        .client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('same', 't', '{\"v\": 3}')
             ON CONFLICT (event_id) DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 0);
    route(&db.client).await;
    let row = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM outbox.deliveries), (SELECT payload->>'v' FROM outbox.messages)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "no second delivery");
    assert_eq!(row.get::<_, String>(1), "1", "the first payload is kept");
}

#[tokio::test]
async fn deliver_after_in_the_future_is_not_delivered_early() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));

    let due: SystemTime = db
        .client
        .query_one(
            "INSERT INTO outbox.messages (event_id, event_type, payload, deliver_after)
             VALUES ('later', 't', '{}', now() + interval '1500 milliseconds') RETURNING deliver_after",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    insert_message(&db.client, "now", "t", "{}").await;
    assert!(
        receiver
            .wait_until(WAIT, |r| r.iter().any(|r| r.webhook_id == "later"))
            .await
    );
    sidecar.stop().await;

    let got = receiver.received();
    assert_eq!(got[0].webhook_id, "now");
    let later = got.iter().find(|r| r.webhook_id == "later").unwrap();
    assert!(
        later.at >= due,
        "arrived {:?} before deliver_after",
        due.duration_since(later.at)
    );
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_still_delivered() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));

    let mut slow = db.connect().await;
    let slow_tx = slow.transaction().await.unwrap();
    slow_tx
        .execute("INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('first-in', 't', '{}')", &[])
        .await
        .unwrap();
    insert_message(&db.client, "second-in", "t", "{}").await;
    assert!(
        receiver
            .wait_until(WAIT, |r| r.iter().any(|r| r.webhook_id == "second-in"))
            .await
    );
    // Its id is lower than one already delivered: a cursor would skip it.
    slow_tx.commit().await.unwrap();
    assert!(
        receiver
            .wait_until(WAIT, |r| r.iter().any(|r| r.webhook_id == "first-in"))
            .await
    );
    sidecar.stop().await;

    let ids: Vec<i64> = db
        .client
        .query("SELECT id FROM outbox.messages ORDER BY event_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids[0] < ids[1], "first-in has the lower id");
}

#[tokio::test]
async fn notify_delivers_in_milliseconds_not_at_the_next_poll() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut config = config(&db);
    config.poll_interval = Duration::from_secs(30);
    let sidecar = spawn(config);
    // Let the first poll (and the listener's initial nudge) pass.
    insert_message(&db.client, "warm-up", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == 1).await);

    for i in 0..5 {
        let started = Instant::now();
        insert_message(&db.client, &format!("fast-{i}"), "t", "{}").await;
        assert!(receiver.wait_until(WAIT, |r| r.len() == i + 2).await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "took {took:?} with a 30 s poll"
        );
    }
    sidecar.stop().await;
}

/// Notifications seen on `outboxd_wakeup` until a sentinel, by payload.
async fn notifications_until_sentinel(
    db: &TestDb,
    action: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let (listener, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("LISTEN outboxd_wakeup")
        .await
        .unwrap();
    action.await;
    listener
        .batch_execute("NOTIFY outboxd_wakeup, 'sentinel'")
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let payload = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if payload == "sentinel" {
            return seen;
        }
        seen.push(payload);
    }
}

#[tokio::test]
async fn producers_notify_only_while_a_sidecar_waits() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let waiting = || async {
        db.client
            .query("SELECT worker_id FROM outbox.waiting", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    // Nobody waits: the insert trigger does not NOTIFY.
    let seen =
        notifications_until_sentinel(&db, insert_message(&db.client, "unheard", "t", "{}")).await;
    assert!(seen.is_empty(), "{seen:?}");

    let mut cfg = config(&db);
    cfg.worker_id = "idle-one".into();
    cfg.poll_interval = Duration::from_secs(30);
    let sidecar = spawn(cfg);
    assert!(
        eventually(WAIT, || async { waiting().await == ["idle-one"] }).await,
        "an idle sidecar waits"
    );
    assert!(
        receiver.wait_until(WAIT, |r| r.len() == 1).await,
        "it found the earlier row by state"
    );
    let seen =
        notifications_until_sentinel(&db, insert_message(&db.client, "heard", "t", "{}")).await;
    assert_eq!(seen, [""], "one constant hint");
    let started = Instant::now();
    assert!(receiver.wait_until(WAIT, |r| r.len() == 2).await);
    assert!(started.elapsed() < Duration::from_secs(1));
    sidecar.stop().await;
    assert!(
        waiting().await.is_empty(),
        "a stopped sidecar no longer waits"
    );
}

#[tokio::test]
async fn a_sidecar_kept_busy_by_a_stream_of_inserts_needs_few_notifications() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let mut cfg = config(&db);
    cfg.worker_id = "streamed".into();
    cfg.poll_interval = Duration::from_secs(30);
    let sidecar = spawn(cfg);
    let waits = || async {
        let rows = db
            .client
            .query("SELECT 1 FROM outbox.waiting", &[])
            .await
            .unwrap();
        !rows.is_empty()
    };
    assert!(eventually(WAIT, waits).await, "an idle sidecar waits");
    // A producer committing a row every millisecond or so: the sidecar
    // keeps finding work, so it stays out of outbox.waiting and producers
    // skip NOTIFY after the first few rows.
    const ROWS: usize = 200;
    let stream = async {
        for n in 0..ROWS {
            insert_message(&db.client, &format!("s{n}"), "t", "{}").await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let seen = notifications_until_sentinel(&db, stream).await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == ROWS).await);
    assert!(
        eventually(WAIT, waits).await,
        "idle again after the stream, it waits"
    );
    sidecar.stop().await;
    assert!(
        seen.len() < ROWS / 2,
        "{} notifications for {ROWS} rows",
        seen.len()
    );
}

#[tokio::test]
async fn a_waiting_row_left_by_a_crashed_sidecar_is_removed() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    db.client
        .batch_execute(
            "INSERT INTO outbox.waiting (worker_id, stale_after) VALUES
               ('crashed', now() - interval '1 second'),
               ('alive-elsewhere', now() + interval '1 hour')",
        )
        .await
        .unwrap();
    let waiting = || async {
        db.client
            .query(
                "SELECT worker_id FROM outbox.waiting ORDER BY worker_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let mut cfg = config(&db);
    cfg.worker_id = "idle-one".into();
    let sidecar = spawn(cfg);
    assert!(
        eventually(WAIT, || async {
            waiting().await == ["alive-elsewhere", "idle-one"]
        })
        .await,
        "the stale row went, the fresh one stayed: {:?}",
        waiting().await
    );
    // Its own row promises a refresh within three poll intervals and more.
    let promised: f64 = db
        .client
        .query_one(
            "SELECT extract(epoch FROM stale_after - now())::float8
             FROM outbox.waiting WHERE worker_id = 'idle-one'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        promised > 3.0 * config(&db).poll_interval.as_secs_f64(),
        "{promised}"
    );
    sidecar.stop().await;
    assert_eq!(waiting().await, ["alive-elsewhere"]);
}
