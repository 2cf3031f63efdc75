//! Tenants: a message reaches only endpoints of its own tenant (NULL only
//! NULL), an endpoint of another tenant is refused at insert, and the
//! tenant reader sees one tenant's delivery log and nothing else.

use std::time::{Duration, Instant};

use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;

/// Endpoint `id` of `tenant` (None: no tenant) on `url`, subscribed to
/// `types` (None: every type).
async fn add_tenant_endpoint(
    client: &Client,
    id: &str,
    tenant: Option<&str>,
    url: &str,
    types: Option<&[&str]>,
) {
    add_endpoint(client, id, url, types, &Secret::generate()).await;
    client
        .execute(
            "UPDATE outbox.endpoints SET tenant_id = $2 WHERE id = $1",
            &[&id, &tenant],
        )
        .await
        .unwrap();
}

async fn insert_for(client: &Client, event_id: &str, tenant: Option<&str>, event_type: &str) {
    client
        .execute(
            "INSERT INTO outbox.messages (event_id, tenant_id, event_type, payload)
             VALUES ($1, $2, $3, '{}')",
            &[&event_id, &tenant, &event_type],
        )
        .await
        .unwrap();
}

fn ids(receiver: &Receiver) -> Vec<String> {
    let mut ids: Vec<String> = receiver
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .collect();
    ids.sort();
    ids
}

/// Three tenants, one of them "none": four endpoints, six messages,
/// delivered by the real sidecar.
async fn three_tenants_delivered() -> (TestDb, [Receiver; 4]) {
    let db = fresh_db().await;
    let receivers = [
        ok_receiver(None).await,
        ok_receiver(None).await,
        ok_receiver(None).await,
        ok_receiver(None).await,
    ];
    add_tenant_endpoint(
        &db.client,
        "acme-all",
        Some("acme"),
        &receivers[0].url(),
        None,
    )
    .await;
    add_tenant_endpoint(
        &db.client,
        "acme-orders",
        Some("acme"),
        &receivers[1].url(),
        Some(&["order.created"]),
    )
    .await;
    add_tenant_endpoint(
        &db.client,
        "globex-all",
        Some("globex"),
        &receivers[2].url(),
        None,
    )
    .await;
    add_tenant_endpoint(&db.client, "plain-all", None, &receivers[3].url(), None).await;
    let sidecar = spawn(config(&db));
    insert_for(&db.client, "acme-1", Some("acme"), "order.created").await;
    insert_for(&db.client, "acme-2", Some("acme"), "user.deleted").await;
    insert_for(&db.client, "globex-1", Some("globex"), "order.created").await;
    insert_for(&db.client, "plain-1", None, "order.created").await;
    // A tenant without endpoints: delivered to nobody.
    insert_for(&db.client, "initech-1", Some("initech"), "order.created").await;
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, tenant_id, event_type, payload, endpoint_id)
             VALUES ('acme-3', 'acme', 'user.deleted', '{}', 'acme-orders')",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    (db, receivers)
}

#[tokio::test]
async fn messages_reach_only_endpoints_of_their_own_tenant() {
    let (db, [acme_all, acme_orders, globex_all, plain_all]) = three_tenants_delivered().await;
    assert_eq!(ids(&acme_all), ["acme-1", "acme-2"]);
    assert_eq!(ids(&acme_orders), ["acme-1", "acme-3"]);
    assert_eq!(ids(&globex_all), ["globex-1"]);
    assert_eq!(ids(&plain_all), ["plain-1"], "NULL reaches only NULL");
    let tenants: Vec<(String, Option<String>, Option<String>)> = db
        .client
        .query(
            "SELECT event_id, endpoint_id, tenant_id FROM outbox.message_status ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        tenants.iter().all(|(event, endpoint, tenant)| {
            let endpoint = endpoint.as_deref().unwrap();
            let owner = endpoint.split('-').next().unwrap();
            tenant.as_deref().unwrap_or("plain") == owner && event.starts_with(owner)
        }),
        "{tenants:?}"
    );
}

#[tokio::test]
async fn the_tenant_reader_sees_its_tenant_and_nothing_else() {
    let (db, _receivers) = three_tenants_delivered().await;
    let (_, reader) = login_as(&db, "outbox_tenant_reader").await;
    let count = |sql: &'static str| {
        let reader = &reader;
        async move { reader.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let views = [
        "SELECT count(*) FROM outbox.message_status",
        "SELECT count(*) FROM outbox.endpoint_health",
        "SELECT count(*) FROM outbox.attempts",
    ];
    for sql in views {
        assert_eq!(count(sql).await, 0, "nothing with the setting unset: {sql}");
    }
    reader
        .batch_execute("SET outbox.tenant_id = 'acme'")
        .await
        .unwrap();
    assert_eq!(count(views[0]).await, 4, "acme-1 twice, acme-2, acme-3");
    assert_eq!(count(views[1]).await, 2);
    assert_eq!(count(views[2]).await, 4);
    let foreign: i64 = reader
        .query_one(
            "SELECT (SELECT count(*) FROM outbox.message_status WHERE tenant_id IS DISTINCT FROM 'acme')
                  + (SELECT count(*) FROM outbox.endpoint_health WHERE tenant_id IS DISTINCT FROM 'acme')
                  + (SELECT count(*) FROM outbox.attempts WHERE tenant_id IS DISTINCT FROM 'acme')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0);
    reader
        .query_one(
            "SELECT set_config('outbox.tenant_id', 'globex', false)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(count(views[0]).await, 1);
    reader
        .batch_execute("RESET outbox.tenant_id")
        .await
        .unwrap();
    assert_eq!(count(views[0]).await, 0);

    for sql in [
        "SELECT secrets FROM outbox.endpoints",
        "SELECT headers FROM outbox.endpoints",
        "SELECT url FROM outbox.endpoints",
        "SELECT * FROM outbox.deliveries",
        "SELECT payload FROM outbox.messages",
        "SELECT * FROM outbox.events",
        "INSERT INTO outbox.messages (event_type, payload) VALUES ('t', '{}')",
        "UPDATE outbox.attempts SET error = 'x'",
    ] {
        let error = reader.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            error.code().map(|c| c.code()),
            Some("42501"),
            "{sql}: {error}"
        );
    }
    // Writers and the sidecar still see every tenant.
    let (_, writer) = login_as(&db, "outbox_writer").await;
    let all: i64 = writer
        .query_one("SELECT count(*) FROM outbox.message_status", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 6);
}

#[tokio::test]
async fn an_endpoint_of_another_tenant_is_refused_and_nothing_is_kept() {
    let db = fresh_db().await;
    add_tenant_endpoint(
        &db.client,
        "acme-e",
        Some("acme"),
        "http://127.0.0.1:9/",
        None,
    )
    .await;
    add_tenant_endpoint(&db.client, "plain-e", None, "http://127.0.0.1:9/", None).await;
    db.client
        .batch_execute("CREATE TABLE orders (id int)")
        .await
        .unwrap();
    for (tenant, endpoint) in [
        (Some("globex"), "acme-e"),
        (None, "acme-e"),
        (Some("acme"), "plain-e"),
    ] {
        db.client.batch_execute("BEGIN").await.unwrap();
        db.client
            .batch_execute("INSERT INTO orders VALUES (1)")
            .await
            .unwrap();
        let error = db
            .client
            .execute(
                "INSERT INTO outbox.messages (tenant_id, event_type, payload, endpoint_id)
                 VALUES ($1, 't', '{}', $2)",
                &[&tenant, &endpoint],
            )
            .await
            .unwrap_err();
        db.client.batch_execute("ROLLBACK").await.unwrap();
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23514", "{tenant:?} -> {endpoint}");
        assert!(
            error.message().contains(&format!(
                "endpoint \"{endpoint}\" does not belong to the tenant"
            )),
            "{}",
            error.message()
        );
    }
    for bad in ["", "  ", "a\nb"] {
        let error = db
            .client
            .execute(
                "INSERT INTO outbox.messages (tenant_id, event_type, payload) VALUES ($1, 't', '{}')",
                &[&bad],
            )
            .await
            .unwrap_err();
        assert_eq!(error.code().map(|c| c.code()), Some("23514"), "{bad:?}");
        let error = db
            .client
            .execute(
                "UPDATE outbox.endpoints SET tenant_id = $1 WHERE id = 'plain-e'",
                &[&bad],
            )
            .await
            .unwrap_err();
        assert_eq!(error.code().map(|c| c.code()), Some("23514"), "{bad:?}");
    }
    let kept: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM outbox.messages)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 0, "nothing of the refused transactions is kept");
}

#[tokio::test]
async fn an_endpoint_with_work_in_progress_cannot_move_to_another_tenant() {
    let db = fresh_db().await;
    add_tenant_endpoint(&db.client, "e", Some("acme"), "http://127.0.0.1:9/", None).await;
    // Addressed to it: refused while not yet routed, and once routed.
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, tenant_id, event_type, payload, endpoint_id)
             VALUES ('m', 'acme', 't', '{}', 'e')",
        )
        .await
        .unwrap();
    let moving = "UPDATE outbox.endpoints SET tenant_id = 'globex' WHERE id = 'e'";
    for routed in [false, true] {
        if routed {
            route(&db.client).await;
        }
        let error = db.client.execute(moving, &[]).await.unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23514");
        assert!(error.message().contains("cannot move to another tenant"));
    }
    db.client
        .batch_execute("SELECT outbox.cancel(id) FROM outbox.deliveries")
        .await
        .unwrap();
    db.client.execute(moving, &[]).await.unwrap();
    // Its subscriptions moved with it.
    insert_for(&db.client, "g", Some("globex"), "t").await;
    insert_for(&db.client, "a", Some("acme"), "t").await;
    route(&db.client).await;
    let events: Vec<String> = db
        .client
        .query(
            "SELECT m.event_id FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
             WHERE d.status = 'pending' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["g"]);
}

/// One tenant's backlog of 20,000 messages to a receiver that takes 200 ms
/// (an endpoint allowed the sidecar's whole concurrency) must not delay
/// another tenant's messages.
#[tokio::test]
async fn one_tenants_backlog_does_not_delay_another() {
    let db = fresh_db().await;
    let slow = Receiver::start(None, |_| Reply::ok().delay(Duration::from_millis(200)))
        .await
        .unwrap();
    let fast = ok_receiver(None).await;
    add_tenant_endpoint(&db.client, "busy", Some("busy"), &slow.url(), None).await;
    add_tenant_endpoint(&db.client, "quiet", Some("quiet"), &fast.url(), None).await;
    db.client
        .batch_execute("UPDATE outbox.endpoints SET max_in_flight = 128 WHERE id = 'busy'")
        .await
        .unwrap();
    db.client
        .execute(
            "INSERT INTO outbox.messages (tenant_id, event_type, payload)
             SELECT 'busy', 't', '{}' FROM generate_series(1, 20000)",
            &[],
        )
        .await
        .unwrap();
    let mut config = config(&db);
    config.concurrency = 128;
    config.shutdown_grace = Duration::from_millis(100);
    let sidecar = spawn(config);
    assert!(
        slow.wait_until(WAIT, |r| r.len() >= 128).await,
        "the busy tenant fills every slot"
    );
    let started = Instant::now();
    db.client
        .execute(
            "INSERT INTO outbox.messages (tenant_id, event_type, payload)
             SELECT 'quiet', 't', '{}' FROM generate_series(1, 50)",
            &[],
        )
        .await
        .unwrap();
    let delivered = fast.wait_until(WAIT, |r| r.len() >= 50).await;
    let took = started.elapsed();
    eprintln!("50 messages of the quiet tenant in {took:?}");
    sidecar.stop().await;
    assert!(delivered, "the quiet tenant's messages were delivered");
    assert!(
        took < Duration::from_secs(3),
        "50 messages of the quiet tenant took {took:?} beside the busy one's backlog"
    );
}

#[tokio::test]
async fn a_pending_delivery_of_a_disabled_endpoint_says_why_to_its_tenant_only() {
    let db = fresh_db().await;
    db.client
        .batch_execute(
            "INSERT INTO outbox.endpoints (id, url, secrets, tenant_id)
             VALUES ('acme-hooks', 'https://acme.example.com/in', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'], 'acme'),
                    ('globex-hooks', 'https://globex.example.com/in', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'], 'globex');
             INSERT INTO outbox.messages (event_id, tenant_id, event_type, payload)
             VALUES ('a1', 'acme', 't', '{}'), ('g1', 'globex', 't', '{}');
             SELECT outbox.route(10);
             UPDATE outbox.endpoints SET enabled = false, disabled_reason = 'receiver migration'
             WHERE id = 'globex-hooks';",
        )
        .await
        .unwrap();
    let reasons: Vec<(String, String, Option<String>)> = db
        .client
        .query(
            "SELECT event_id, status, waiting_reason FROM outbox.message_status ORDER BY event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        reasons,
        [
            ("a1".into(), "pending".into(), None),
            (
                "g1".into(),
                "pending".into(),
                Some("endpoint globex-hooks is disabled: receiver migration".into())
            ),
        ]
    );

    let (_, reader) = login_as(&db, "outbox_tenant_reader").await;
    reader
        .batch_execute("SET outbox.tenant_id = 'acme'")
        .await
        .unwrap();
    let seen: Vec<(String, Option<String>)> = reader
        .query(
            "SELECT event_id, waiting_reason FROM outbox.message_status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seen,
        [("a1".to_owned(), None)],
        "globex's reason stays with globex"
    );
    reader
        .batch_execute("SET outbox.tenant_id = 'globex'")
        .await
        .unwrap();
    let reason: Option<String> = reader
        .query_one("SELECT waiting_reason FROM outbox.message_status", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        reason.as_deref(),
        Some("endpoint globex-hooks is disabled: receiver migration")
    );
}
