//! Ordering-key locks: producers hold their message keys' locks until they
//! commit (routing waits for them), and the outcome writer only tries the
//! (endpoint, key) locks, so a key held elsewhere delays that key alone.

use std::time::Duration;

use outboxd::signature::Secret;

use crate::common::*;

/// Anyone who can connect may hold an advisory lock, and a producer's open
/// transaction holds its key. Meanwhile the outcome of that key's earlier
/// message waits, and every other endpoint's outcomes are written at once;
/// when both let go, the key moves on in order, each message POSTed once.
#[tokio::test]
async fn a_held_ordering_key_delays_only_its_own_outcomes() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    // The keyed endpoint answers its first request late, so that the
    // producer's transaction is open when that outcome is written.
    let keyed = Receiver::start(None, |r| {
        let reply = Reply::ok();
        match r.json().unwrap()["seq"].as_i64() {
            Some(1) => reply.delay(Duration::from_millis(500)),
            _ => reply,
        }
    })
    .await
    .unwrap();
    let other = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "keyed", &keyed.url(), Some(&["a"]), &secret).await;
    add_endpoint(&db.client, "other", &other.url(), Some(&["b"]), &secret).await;
    let sidecar = spawn(config(&db));
    let insert_keyed = |seq: i64| {
        format!(
            "INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
             VALUES ('k{seq}', 'a', '{{\"seq\": {seq}}}', 'order-1')"
        )
    };
    db.client.batch_execute(&insert_keyed(1)).await.unwrap();
    assert!(keyed.wait_until(WAIT, |r| r.len() == 1).await);

    // Someone holds the (endpoint, key) lock the outcome writer needs.
    let stranger = db.connect().await;
    stranger
        .batch_execute(
            "SELECT pg_advisory_lock(1868724225, hashtext('keyed' || chr(31) || 'order-1'))",
        )
        .await
        .unwrap();
    let producer = db.connect().await;
    producer.batch_execute("BEGIN").await.unwrap();
    producer.batch_execute(&insert_keyed(2)).await.unwrap();
    // The first keyed request is answered; its outcome now waits.
    assert!(keyed.wait_until(WAIT, |r| r[0].replied_at.is_some()).await);
    for i in 0..5 {
        insert_message(&db.client, &format!("b{i}"), "b", "{}").await;
    }
    let others_written = eventually(Duration::from_secs(5), || async {
        db.client
            .query_one(
                "SELECT count(*) FROM outbox.deliveries WHERE endpoint_id = 'other' AND status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 5
    })
    .await;
    let keyed_head: String = db
        .client
        .query_one(
            "SELECT status FROM outbox.message_status WHERE event_id = 'k1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    stranger
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    producer.batch_execute("COMMIT").await.unwrap();
    let settled = wait_settled(&db.client, WAIT).await;
    sidecar.stop().await;

    assert!(
        others_written,
        "other endpoints' outcomes were written while the key was held"
    );
    assert_eq!(keyed_head, "in_flight", "the held key's outcome waited");
    assert!(settled);
    let seqs: Vec<i64> = keyed
        .received()
        .iter()
        .map(|r| r.json().unwrap()["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2], "in order, each once");
    assert_eq!(other.count(), 5, "each once");
}

/// Two producers inserting the same two keys in opposite orders wait for
/// each other: PostgreSQL aborts one (40P01), which keeps none of its
/// rows; the other commits, and its messages are delivered. (Inserting
/// keys in one order, as the README advises, cannot deadlock.)
#[tokio::test]
async fn producers_that_take_keys_in_opposite_orders_lose_one_whole_transaction() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let insert = "INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
                  VALUES ($1, 't', '{}', $2)";
    let mut first = db.connect().await;
    let mut second = db.connect().await;
    for client in [&first, &second] {
        // Deadlocks are looked for after this long (1 s by default).
        client
            .batch_execute("SET deadlock_timeout = '50ms'")
            .await
            .unwrap();
    }
    let one = first.transaction().await.unwrap();
    let two = second.transaction().await.unwrap();
    one.execute(insert, &[&"one-a", &"a"]).await.unwrap();
    two.execute(insert, &[&"two-b", &"b"]).await.unwrap();
    // Each now takes the other's key.
    let (one_b, two_a) = tokio::join!(
        one.execute(insert, &[&"one-b", &"b"]),
        two.execute(insert, &[&"two-a", &"a"])
    );
    let (survivor, victim, error) = match (one_b, two_a) {
        (Ok(_), Err(error)) => ((one, ["one-a", "one-b"]), two, error),
        (Err(error), Ok(_)) => ((two, ["two-b", "two-a"]), one, error),
        other => panic!("expected exactly one deadlock victim: {other:?}"),
    };
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("40P01"),
        "{error}"
    );
    victim.rollback().await.unwrap();
    survivor.0.commit().await.unwrap();

    let sidecar = spawn(config(&db));
    assert!(receiver.wait_until(WAIT, |r| r.len() == 2).await);
    sidecar.stop().await;
    let kept: Vec<String> = db
        .client
        .query("SELECT event_id FROM outbox.messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(kept, survivor.1, "the survivor's rows, in its order");
    let mut sent: Vec<String> = receiver
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    sent.sort();
    let mut expected = survivor.1.map(String::from).to_vec();
    expected.sort();
    assert_eq!(sent, expected, "each sent once, nothing of the victim");
}
