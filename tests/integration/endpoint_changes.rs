//! Changing who an endpoint is (deleting it, renaming it, moving it to
//! another tenant) while routing runs: neither side may act on what the
//! other has not committed yet, or a delivery is left for an endpoint that
//! is gone, or a tenant's message queued for another tenant's endpoint.

use crate::common::*;

/// A change to endpoint "e", and the SQLSTATE that refuses it once the
/// endpoint has a delivery.
const CHANGES: [(&str, &str); 3] = [
    ("DELETE FROM outbox.endpoints WHERE id = 'e'", "23503"),
    (
        "UPDATE outbox.endpoints SET id = 'e2' WHERE id = 'e'",
        "23503",
    ),
    (
        "UPDATE outbox.endpoints SET tenant_id = 'globex' WHERE id = 'e'",
        "23514",
    ),
];

/// Deliveries whose endpoint is gone or belongs to another tenant.
const STRAYS: &str = "SELECT count(*) FROM outbox.deliveries d
     LEFT JOIN outbox.endpoints e ON e.id = d.endpoint_id
     WHERE e.id IS NULL OR e.tenant_id IS DISTINCT FROM d.tenant_id";

/// Endpoint "e" without a tenant, subscribed to everything, and a message
/// that fans out to it, not yet routed.
async fn endpoint_and_message() -> TestDb {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    insert_message(&db.client, "m", "t", "{}").await;
    db
}

#[tokio::test]
async fn a_change_waits_for_routing_in_progress_and_then_sees_its_delivery() {
    for (change, refused_with) in CHANGES {
        let db = endpoint_and_message().await;
        let mut router = db.connect().await;
        let routing = router.transaction().await.unwrap();
        let routed: i32 = routing
            .query_one("SELECT outbox.route(10)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(routed, 1);

        let changer = db.connect().await;
        let changing = tokio::spawn(async move { changer.batch_execute(change).await });
        assert!(
            advisory_lock_waiters(&db.client, 1).await,
            "{change}: went ahead while routing to the endpoint was not committed"
        );
        assert!(!changing.is_finished());
        routing.commit().await.unwrap();

        let error = changing.await.unwrap().unwrap_err();
        assert_eq!(
            error.as_db_error().map(|e| e.code().code()),
            Some(refused_with),
            "{change}: {error}"
        );
        assert_eq!(count(&db.client, STRAYS).await, 0, "{change}");
        assert_eq!(count_status(&db.client, "pending").await, 1, "{change}");
    }
}

#[tokio::test]
async fn routing_does_nothing_during_a_change_and_then_sees_the_endpoint_as_it_became() {
    for (change, _) in CHANGES {
        let db = endpoint_and_message().await;
        let mut changer = db.connect().await;
        let changing = changer.transaction().await.unwrap();
        changing.batch_execute(change).await.unwrap();

        // Neither waits (the claim sent behind it would stall) nor routes
        // by what the endpoint was.
        let router = db.connect().await;
        let routed = tokio::time::timeout(WAIT, router.query_one("SELECT outbox.route(10)", &[]))
            .await
            .expect("routing does not wait for the change")
            .unwrap()
            .get::<_, i32>(0);
        assert_eq!(routed, 0, "{change}");
        assert_eq!(
            count(
                &db.client,
                "SELECT count(*) FROM outbox.messages WHERE NOT routed"
            )
            .await,
            1,
            "{change}"
        );
        changing.commit().await.unwrap();

        // Routed now, and no delivery for what the endpoint no longer is:
        // the message had no other subscriber.
        assert_eq!(route(&router).await, 1, "{change}");
        assert_eq!(count(&db.client, STRAYS).await, 0, "{change}");
        let made = count(&db.client, "SELECT count(*) FROM outbox.deliveries").await;
        let renamed = change.contains("SET id");
        assert_eq!(
            made,
            i64::from(renamed),
            "{change}: only a renamed endpoint still matches"
        );
    }
}

#[tokio::test]
async fn recovering_messages_for_an_endpoint_and_moving_it_exclude_each_other() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    add_unreachable_endpoint(&db.client, "other").await;
    // Routed to "other" only ("e" was created after it), so "e" may
    // recover it.
    db.client
        .batch_execute(
            "UPDATE outbox.endpoints SET created_at = now() + interval '1 hour' WHERE id = 'e';
             INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('old', 't', '{}');",
        )
        .await
        .unwrap();
    route(&db.client).await;

    let mut recoverer = db.connect().await;
    let recovering = recoverer.transaction().await.unwrap();
    let made: i32 = recovering
        .query_one("SELECT outbox.recover('e', now() - interval '1 day')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 1);
    let changer = db.connect().await;
    let moving = tokio::spawn(async move {
        changer
            .batch_execute("UPDATE outbox.endpoints SET tenant_id = 'globex' WHERE id = 'e'")
            .await
    });
    assert!(advisory_lock_waiters(&db.client, 1).await);
    recovering.commit().await.unwrap();
    let error = moving.await.unwrap().unwrap_err();
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("23514"),
        "{error}"
    );
    assert_eq!(count(&db.client, STRAYS).await, 0);
}

#[tokio::test]
async fn an_endpoint_named_by_messages_not_yet_routed_is_kept() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    // The sidecar is down: nothing routes them.
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id)
             VALUES ('now', 't', '{}', 'e');
             INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id, deliver_after)
             VALUES ('later', 't', '{}', 'e', now() + interval '1 day');
             INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id, ordering_key)
             VALUES ('keyed', 't', '{}', 'e', 'k');",
        )
        .await
        .unwrap();
    for (kept_by, sql) in [
        (
            "keyed",
            "DELETE FROM outbox.messages WHERE event_id = 'keyed'",
        ),
        (
            "later",
            "DELETE FROM outbox.messages WHERE event_id = 'later'",
        ),
        ("now", "DELETE FROM outbox.messages WHERE event_id = 'now'"),
    ] {
        for change in [
            "DELETE FROM outbox.endpoints WHERE id = 'e'",
            "UPDATE outbox.endpoints SET id = 'e2' WHERE id = 'e'",
        ] {
            let error = db.client.batch_execute(change).await.unwrap_err();
            let error = error.as_db_error().unwrap();
            assert_eq!(
                error.code().code(),
                "23503",
                "{change} with {kept_by} waiting"
            );
            assert!(
                error.message().contains("wait to be routed"),
                "{}",
                error.message()
            );
        }
        db.client.batch_execute(sql).await.unwrap();
    }
    db.client
        .batch_execute("DELETE FROM outbox.endpoints WHERE id = 'e'")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_open_endpoint_change_pauses_routing_but_not_delivery() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(
        &db.client,
        "busy",
        &receiver.url(),
        None,
        &outboxd::signature::Secret::generate(),
    )
    .await;
    insert_message(&db.client, "routed-before", "t", "{}").await;
    route(&db.client).await;
    add_unreachable_endpoint(&db.client, "spare").await;
    // Somebody's transaction that deletes an endpoint, left open.
    let mut operator = db.connect().await;
    let deleting = operator.transaction().await.unwrap();
    deleting
        .batch_execute("DELETE FROM outbox.endpoints WHERE id = 'spare'")
        .await
        .unwrap();

    let sidecar = spawn(config(&db));
    assert!(
        receiver.wait_until(WAIT, |r| r.len() == 1).await,
        "a delivery routed before is sent while the change is open"
    );
    // A new message waits (routing does nothing while the change is open:
    // see routing_does_nothing_during_a_change_...) until it commits.
    insert_message(&db.client, "written-during", "t", "{}").await;
    deleting.commit().await.unwrap();
    assert!(
        receiver.wait_until(WAIT, |r| r.len() == 2).await,
        "routed and sent once the change committed"
    );
    sidecar.stop().await;
}
