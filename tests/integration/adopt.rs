//! Adopting an application's existing outbox table (`outbox.adopt`,
//! `outbox.unadopt`, `outbox.adopt_backfill`, `outboxd adopt|unadopt`):
//! Debezium-shaped and custom tables feed outbox.messages in the inserting
//! transaction, and removing an adoption drops only what it installed.

use std::collections::HashMap;

use outboxd::signature::Secret;
use tokio_postgres::{Client, GenericClient};

use crate::common::*;

mod backfill;
mod checks;
mod cli;

/// The table Debezium's outbox event router reads, plus a business table.
const DEBEZIUM: &str = "
    CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL);
    CREATE TABLE outboxevent (
        id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype varchar(255) NOT NULL,
        aggregateid   varchar(255) NOT NULL,
        type          varchar(255) NOT NULL,
        payload       jsonb,
        created_at    timestamptz NOT NULL DEFAULT now()
    );";

/// Inserts one Debezium outbox row; returns its id (the event id).
async fn insert_event(
    client: &impl GenericClient,
    aggregate: &str,
    kind: &str,
    payload: &str,
) -> String {
    client
        .query_one(
            "INSERT INTO outboxevent (aggregatetype, aggregateid, type, payload)
             VALUES ('order', $1, $2, $3::text::jsonb) RETURNING id::text",
            &[&aggregate, &kind, &payload],
        )
        .await
        .expect("inserting an outbox row")
        .get(0)
}

async fn adopt(client: &Client, table: &str, mapping: &str) -> serde_json::Value {
    let text: String = client
        .query_one(
            "SELECT outbox.adopt($1::text::regclass, $2::text::jsonb)::text",
            &[&table, &mapping],
        )
        .await
        .unwrap_or_else(|e| panic!("adopting {table}: {e}"))
        .get(0);
    serde_json::from_str(&text).unwrap()
}

/// (table, trigger) of every adopting trigger, and every generated function.
async fn adopted_objects(client: &Client) -> (Vec<String>, Vec<String>) {
    let strings = |sql: &'static str| async move {
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter().map(|r| r.get(0)).collect::<Vec<String>>()
    };
    let triggers = strings(
        "SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger
         WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'outbox.%' ORDER BY 1",
    )
    .await;
    let functions = strings(
        "SELECT proname::text FROM pg_proc
         WHERE pronamespace = 'outbox'::regnamespace AND proname LIKE 'adopted\\_%' ORDER BY 1",
    )
    .await;
    (triggers, functions)
}

#[tokio::test]
async fn debezium_rows_deleted_in_their_transaction_are_delivered_verified_in_aggregate_order() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    let mapping = adopt(&db.client, "outboxevent", "{}").await;
    assert_eq!(
        mapping,
        serde_json::json!({"event_id": "id", "event_type": "type", "payload": "payload",
                           "ordering_key": "aggregateid"})
    );
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "shipping", &receiver.url(), None, &secret).await;
    let mut config = config(&db);
    // One request at a time: arrival order is then messages.id order, which
    // is what per-ordering-key delivery follows.
    config.concurrency = 1;
    let sidecar = spawn(config);

    // The application: business row and outbox row in one transaction, the
    // outbox row deleted at once (it only had to reach the WAL for Debezium).
    let mut app = db.connect().await;
    let mut sent: HashMap<String, (String, i64)> = HashMap::new();
    for step in 0..3_i64 {
        for (n, aggregate) in ["1001", "1002"].into_iter().enumerate() {
            let tx = app.transaction().await.unwrap();
            tx.execute(
                "INSERT INTO orders VALUES ($1, 10) ON CONFLICT (id) DO UPDATE SET total = orders.total + 10",
                &[&(1001 + n as i64)],
            )
            .await
            .unwrap();
            let payload = format!(r#"{{"order": {aggregate}, "step": {step}}}"#);
            let id = insert_event(&tx, aggregate, "order.updated", &payload).await;
            tx.execute("DELETE FROM outboxevent WHERE id = $1::text::uuid", &[&id])
                .await
                .unwrap();
            tx.commit().await.unwrap();
            sent.insert(id, (aggregate.to_owned(), step));
        }
    }
    assert!(receiver.wait_until(WAIT, |r| r.len() == 6).await);
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outboxevent").await,
        0
    );
    let mut steps: HashMap<String, Vec<i64>> = HashMap::new();
    for r in receiver.received() {
        assert_eq!(
            r.verified,
            Some(Ok(())),
            "signed with the endpoint's secret"
        );
        let (aggregate, step) = &sent[&r.webhook_id];
        let body = r.json().unwrap();
        assert_eq!(body["step"], *step);
        assert_eq!(body["order"].to_string(), *aggregate);
        steps.entry(aggregate.clone()).or_default().push(*step);
    }
    assert_eq!(steps["1001"], [0, 1, 2]);
    assert_eq!(steps["1002"], [0, 1, 2]);
    let keys = db
        .client
        .query(
            "SELECT event_id, ordering_key FROM outbox.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    for row in keys {
        let (event_id, key): (String, String) = (row.get(0), row.get(1));
        assert_eq!(key, sent[&event_id].0, "ordering_key is the aggregate id");
    }
    assert_eq!(count_status(&db.client, "delivered").await, 6);
}

#[tokio::test]
async fn a_custom_mapping_sets_every_message_column() {
    let db = fresh_db().await;
    db.client
        .batch_execute(
            r#"CREATE SCHEMA shop;
               CREATE TABLE shop."Outbox Events" (
                   event_uuid text PRIMARY KEY, kind text NOT NULL, body json,
                   customer bigint, target text, not_before timestamptz);"#,
        )
        .await
        .unwrap();
    let mapping = r#"{"event_id": "event_uuid", "event_type": "kind", "payload": "body",
                      "ordering_key": "customer", "endpoint_id": "target",
                      "deliver_after": "not_before"}"#;
    adopt(&db.client, r#"shop."Outbox Events""#, mapping).await;
    let (broadcast, direct) = (ok_receiver(None).await, ok_receiver(None).await);
    add_endpoint(
        &db.client,
        "all",
        &broadcast.url(),
        None,
        &Secret::generate(),
    )
    .await;
    add_endpoint(&db.client, "one", &direct.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    db.client
        .batch_execute(
            r#"INSERT INTO shop."Outbox Events" VALUES
               ('e-1', 'invoice.sent', '{"invoice": 7}', 42, 'one', NULL),
               ('e-2', 'invoice.due', '{"invoice": 8}', 42, NULL, now() + interval '1 hour');"#,
        )
        .await
        .unwrap();
    assert!(direct.wait_until(WAIT, |r| r.len() == 1).await);
    sidecar.stop().await;

    let got = &direct.received()[0];
    assert_eq!(got.webhook_id, "e-1");
    assert_eq!(got.json().unwrap(), serde_json::json!({"invoice": 7}));
    assert_eq!(broadcast.count(), 0, "e-1 went to its endpoint only");
    let row = db
        .client
        .query_one(
            "SELECT event_type, ordering_key, endpoint_id, deliver_after > now() + interval '50 minutes'
             FROM outbox.messages WHERE event_id = 'e-2'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "invoice.due");
    assert_eq!(row.get::<_, String>(1), "42");
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert!(row.get::<_, bool>(3), "deliver_after comes from not_before");
    assert_eq!(count_status(&db.client, "pending").await, 2, "e-2 waits");
    let (_, functions) = adopted_objects(&db.client).await;
    assert!(
        functions[0].starts_with("adopted_shop_Outbox_Events_"),
        "{functions:?}"
    );
}

#[tokio::test]
async fn a_rolled_back_insert_delivers_nothing() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    adopt(&db.client, "outboxevent", "{}").await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;
    let sidecar = spawn(config(&db));

    let mut app = db.connect().await;
    let tx = app.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (1, 5)", &[])
        .await
        .unwrap();
    insert_event(&tx, "1", "order.created", r#"{"n": "rolled back"}"#).await;
    tx.rollback().await.unwrap();
    let kept = insert_event(&db.client, "2", "order.created", r#"{"n": "kept"}"#).await;

    assert!(receiver.wait_until(WAIT, |r| !r.is_empty()).await);
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].webhook_id, kept);
    assert_eq!(got[0].verified, Some(Ok(())));
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.messages").await,
        1
    );
}

#[tokio::test]
async fn unadopt_drops_only_what_adopt_installed_and_adopting_again_resumes() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    db.client
        .batch_execute(
            "CREATE TABLE audit (n int);
             CREATE FUNCTION public.audit_outbox() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO audit VALUES (1); RETURN NULL; END $$;
             CREATE TRIGGER audit AFTER INSERT ON outboxevent
                 FOR EACH STATEMENT EXECUTE FUNCTION public.audit_outbox();
             CREATE TABLE other_outbox (LIKE outboxevent INCLUDING DEFAULTS);",
        )
        .await
        .unwrap();
    adopt(&db.client, "outboxevent", "{}").await;
    adopt(&db.client, "other_outbox", "{}").await;
    let (triggers, functions) = adopted_objects(&db.client).await;
    assert_eq!(
        triggers,
        [
            "other_outbox:outboxd_adopt",
            "outboxevent:audit",
            "outboxevent:outboxd_adopt"
        ]
    );
    assert_eq!(functions.len(), 2, "{functions:?}");

    let unadopt = "SELECT outbox.unadopt('outboxevent')";
    assert!(
        db.client
            .query_one(unadopt, &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    );
    assert!(
        !db.client
            .query_one(unadopt, &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    );
    let (triggers, left) = adopted_objects(&db.client).await;
    assert_eq!(
        triggers,
        ["other_outbox:outboxd_adopt", "outboxevent:audit"]
    );
    assert_eq!(left.len(), 1);
    assert!(
        left[0].starts_with("adopted_public_other_outbox_"),
        "{left:?}"
    );
    assert_eq!(
        count(
            &db.client,
            "SELECT count(*) FROM pg_proc WHERE proname IN ('audit_outbox', 'adoption_json')"
        )
        .await,
        2
    );
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.adoptions").await,
        1
    );

    insert_event(&db.client, "1", "order.created", "{}").await;
    assert_eq!(count(&db.client, "SELECT count(*) FROM audit").await, 1);
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.messages").await,
        0,
        "not adopted: the insert sends nothing"
    );
    adopt(&db.client, "outboxevent", "{}").await;
    let again = insert_event(&db.client, "1", "order.paid", "{}").await;
    let ids: Vec<String> = db
        .client
        .query("SELECT event_id FROM outbox.messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [again]);
}

#[tokio::test]
async fn adopting_twice_replaces_the_trigger_and_never_doubles_messages() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    adopt(&db.client, "outboxevent", "{}").await;
    // Concurrent adoptions queue on the table lock; each replaces the last.
    let (a, b) = (db.connect().await, db.connect().await);
    tokio::join!(
        adopt(&a, "outboxevent", "{}"),
        adopt(&b, "outboxevent", "{}")
    );
    let (triggers, functions) = adopted_objects(&db.client).await;
    assert_eq!(triggers, ["outboxevent:outboxd_adopt"]);
    assert_eq!(functions.len(), 1);
    insert_event(&db.client, "7", "order.created", "{}").await;
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.messages").await,
        1
    );

    let first = "SELECT adopted_at FROM outbox.adoptions";
    let before: std::time::SystemTime = db.client.query_one(first, &[]).await.unwrap().get(0);
    adopt(&db.client, "outboxevent", r#"{"ordering_key": null}"#).await;
    insert_event(&db.client, "7", "order.paid", "{}").await;
    let keys: Vec<Option<String>> = db
        .client
        .query("SELECT ordering_key FROM outbox.messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        [Some("7".to_owned()), None],
        "the new mapping applies"
    );
    let after: std::time::SystemTime = db.client.query_one(first, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "an uninterrupted adoption keeps its start");
    assert_eq!(adopted_objects(&db.client).await.0.len(), 1);
}

#[tokio::test]
async fn several_tables_feed_one_outbox_in_insertion_order() {
    let db = fresh_db().await;
    db.client
        .batch_execute(
            "CREATE TABLE a_events (id bigint, type text, payload jsonb);
             CREATE TABLE b_events (id text, type text, payload jsonb, aggregateid int);",
        )
        .await
        .unwrap();
    adopt(&db.client, "a_events", "{}").await;
    adopt(&db.client, "b_events", "{}").await;
    db.client
        .batch_execute(
            r#"BEGIN;
               INSERT INTO a_events VALUES (1, 'a', '{"n": 1}'), (2, 'a', '{"n": 2}'), (3, 'a', '{"n": 3}');
               INSERT INTO b_events VALUES ('b-1', 'b', '{"n": 4}', 9);
               COMMIT;"#,
        )
        .await
        .unwrap();
    let rows = db
        .client
        .query(
            "SELECT event_id, ordering_key FROM outbox.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected = [("1", None), ("2", None), ("3", None), ("b-1", Some("9"))]
        .map(|(id, key)| (id.to_owned(), key.map(str::to_owned)));
    assert_eq!(got, expected);
}

#[tokio::test]
async fn rows_already_in_the_table_are_not_sent() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    for n in 0..3 {
        insert_event(&db.client, "1", "order.created", &format!("{{\"n\": {n}}}")).await;
    }
    adopt(&db.client, "outboxevent", "{}").await;
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.messages").await,
        0
    );
    let new = insert_event(&db.client, "1", "order.paid", "{}").await;
    let ids: Vec<String> = db
        .client
        .query("SELECT event_id FROM outbox.messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [new]);
}
