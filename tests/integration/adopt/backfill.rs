//! `outbox.adopt_backfill`: rows written before the adoption, sent on
//! request in keyset batches, oldest first, each event id once.

use tokio_postgres::Client;

use super::*;

/// Runs `outbox.adopt_backfill` batch by batch as the CLI does; returns
/// (batches, rows scanned, messages inserted).
async fn backfill(client: &Client, table: &str, since: &str, batch: i32) -> (i32, i32, i32) {
    let (mut after_at, mut after_id) = (None::<std::time::SystemTime>, None::<String>);
    let (mut batches, mut scanned, mut inserted) = (0, 0, 0);
    loop {
        let row = client
            .query_one(
                "SELECT * FROM outbox.adopt_backfill($1::text::regclass, $2::text::timestamptz, $3, $4, $5)",
                &[&table, &since, &batch, &after_at, &after_id],
            )
            .await
            .unwrap();
        let n: i32 = row.get("scanned");
        batches += 1;
        scanned += n;
        inserted += row.get::<_, i32>("inserted");
        if n < batch {
            return (batches, scanned, inserted);
        }
        (after_at, after_id) = (row.get("last_at"), row.get("last_id"));
    }
}

#[tokio::test]
async fn backfill_sends_older_rows_oldest_first_in_batches_and_only_once() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    // 20 rows in the last hour (five share one timestamp, to page across a
    // tie) and 5 from two days ago, all written before the adoption.
    db.client
        .batch_execute(
            r#"INSERT INTO outboxevent (aggregatetype, aggregateid, type, payload, created_at)
               SELECT 'order', (i % 3)::text, 'order.created', jsonb_build_object('i', i),
                      CASE WHEN i <= 5 THEN now() - interval '30 minutes'
                           WHEN i <= 20 THEN now() - interval '1 minute' * (40 - i)
                           ELSE now() - interval '2 days' END
               FROM generate_series(1, 25) i;"#,
        )
        .await
        .unwrap();
    adopt(&db.client, "outboxevent", r#"{"timestamp": "created_at"}"#).await;
    let live = insert_event(&db.client, "1", "order.paid", "{}").await;

    let since: String = db
        .client
        .query_one("SELECT (now() - interval '1 day')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        backfill(&db.client, "outboxevent", &since, 7).await,
        (3, 20, 20),
        "7 + 7 + 6 rows; the live row and the old ones are left out"
    );
    assert_eq!(
        backfill(&db.client, "outboxevent", &since, 7).await,
        (3, 20, 0),
        "again: every event id is there already"
    );
    let order: Vec<(String, std::time::SystemTime)> = db
        .client
        .query(
            "SELECT m.event_id, e.created_at
             FROM outbox.messages m JOIN outboxevent e ON e.id::text = m.event_id
             ORDER BY m.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(order.len(), 21);
    assert_eq!(
        order[0].0, live,
        "the live row came first, from the trigger"
    );
    assert!(
        order[1..].windows(2).all(|w| w[0].1 <= w[1].1),
        "backfilled oldest first"
    );
}

#[tokio::test]
async fn backfill_needs_an_adopted_table_with_a_timestamp() {
    let db = fresh_db().await;
    db.client.batch_execute(DEBEZIUM).await.unwrap();
    let call = "SELECT * FROM outbox.adopt_backfill('outboxevent', now() - interval '1 hour')";
    let error = db.client.query(call, &[]).await.unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains("outboxevent is not adopted"),
        "{error}"
    );
    adopt(&db.client, "outboxevent", "{}").await;
    let error = db.client.query(call, &[]).await.unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains(r#"has no "timestamp" column"#),
        "{error}"
    );
}
