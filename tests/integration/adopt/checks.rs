//! What adopting checks: mappings at adopt time, payloads and required
//! columns at insert time, and the rights the generated trigger runs with.

use super::*;

#[tokio::test]
async fn text_payloads_must_hold_json_and_required_columns_a_value() {
    let db = fresh_db().await;
    db.client
        .batch_execute("CREATE TABLE textbox (id bigint, type text, payload text);")
        .await
        .unwrap();
    adopt(&db.client, "textbox", "{}").await;
    db.client
        .execute(
            r#"INSERT INTO textbox VALUES (1, 't', '{"a": [1, 2]}')"#,
            &[],
        )
        .await
        .unwrap();
    let stored: String = db
        .client
        .query_one("SELECT payload::text FROM outbox.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, r#"{"a": [1, 2]}"#);

    let bad = db
        .client
        .execute("INSERT INTO textbox VALUES (2, 't', 'not json')", &[])
        .await
        .unwrap_err();
    let bad = bad.as_db_error().unwrap();
    assert_eq!(bad.code().code(), "22P02");
    assert!(
        bad.message()
            .starts_with(r#"adopted table public.textbox: column "payload" is not valid JSON"#),
        "{}",
        bad.message()
    );
    let null = db
        .client
        .execute("INSERT INTO textbox VALUES (3, NULL, '{}')", &[])
        .await
        .unwrap_err();
    let null = null.as_db_error().unwrap();
    assert_eq!(null.code().code(), "23502");
    assert!(
        null.message().contains(r#"column "type" is NULL"#),
        "{}",
        null.message()
    );
    assert_eq!(count(&db.client, "SELECT count(*) FROM textbox").await, 1);
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM outbox.messages").await,
        1
    );
}

#[tokio::test]
async fn bad_mappings_are_clear_errors_at_adopt_time() {
    let db = fresh_db().await;
    db.client
        .batch_execute(&format!(
            "{DEBEZIUM} CREATE VIEW recent AS SELECT * FROM outboxevent;
             CREATE TABLE blobs (id int, type text, payload bytea);"
        ))
        .await
        .unwrap();
    let cases = [
        (
            "outboxevent",
            r#"{"evnt_type": "type"}"#,
            "22023",
            r#"unknown mapping key "evnt_type""#,
        ),
        (
            "outboxevent",
            r#"{"event_type": "kind"}"#,
            "42703",
            r#"public.outboxevent has no column "kind" (mapping key "event_type")"#,
        ),
        (
            "outboxevent",
            r#"{"payload": null}"#,
            "22023",
            r#"mapping key "payload" must name a column"#,
        ),
        (
            "outboxevent",
            r#"{"deliver_after": "type"}"#,
            "42804",
            "deliver_after column \"type\" of public.outboxevent is character varying",
        ),
        (
            "outboxevent",
            "[]",
            "22023",
            "the mapping must be a JSON object",
        ),
        (
            "blobs",
            "{}",
            "42804",
            "payload column \"payload\" of public.blobs is bytea; it must be jsonb, json or text",
        ),
        ("recent", "{}", "42809", "public.recent is not a table"),
        (
            "outbox.messages",
            "{}",
            "22023",
            "outbox.messages belongs to outboxd",
        ),
    ];
    for (table, mapping, code, message) in cases {
        let error = db
            .client
            .query_one(
                "SELECT outbox.adopt($1::text::regclass, $2::text::jsonb)",
                &[&table, &mapping],
            )
            .await
            .unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(
            error.code().code(),
            code,
            "{table} {mapping}: {}",
            error.message()
        );
        assert!(
            error.message().contains(message),
            "{table} {mapping}: {}",
            error.message()
        );
    }
    assert_eq!(adopted_objects(&db.client).await, (vec![], vec![]));
}

#[tokio::test]
async fn writers_of_an_adopted_table_need_no_rights_on_the_outbox() {
    let db = fresh_db().await;
    // Roles are cluster-wide: name them after this test's database.
    let suffix = db.url.rsplit('/').next().unwrap().to_owned();
    let (owner, writer) = (format!("owner_{suffix}"), format!("writer_{suffix}"));
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {owner}; CREATE ROLE {writer};
             CREATE SCHEMA app AUTHORIZATION {owner};
             SET ROLE {owner};
             CREATE TABLE app.outboxevent (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                           aggregateid text, type text, payload jsonb);
             GRANT USAGE ON SCHEMA app TO {writer};
             GRANT INSERT, DELETE ON app.outboxevent TO {writer};
             RESET ROLE;"
        ))
        .await
        .unwrap();
    let refused = db
        .client
        .query_one("SELECT outbox.adopt('app.outboxevent')", &[])
        .await
        .unwrap_err();
    let refused = refused.as_db_error().unwrap();
    assert_eq!(refused.code().code(), "42501");
    assert!(
        refused
            .message()
            .contains("cannot insert into outbox.messages"),
        "{}",
        refused.message()
    );
    // What an outbox writer needs (the fan-out trigger runs as it too).
    db.client
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA outbox TO {owner};
             GRANT INSERT ON outbox.messages, outbox.deliveries TO {owner};
             GRANT SELECT ON outbox.endpoints TO {owner};"
        ))
        .await
        .unwrap();
    adopt(&db.client, "app.outboxevent", "{}").await;
    let definer = db
        .client
        .query_one(
            "SELECT proowner::regrole::text, prosecdef, proconfig::text FROM pg_proc
             WHERE proname LIKE 'adopted\\_app\\_outboxevent\\_%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(definer.get::<_, String>(0), owner);
    assert!(definer.get::<_, bool>(1), "SECURITY DEFINER");
    assert_eq!(
        definer.get::<_, String>(2),
        r#"{"search_path=pg_catalog, pg_temp"}"#
    );

    add_unreachable_endpoint(&db.client, "e").await;
    db.client
        .batch_execute(&format!(
            "SET ROLE {writer};
             INSERT INTO app.outboxevent (aggregateid, type, payload) VALUES ('1', 't', '{{}}');
             RESET ROLE;"
        ))
        .await
        .unwrap();
    route(&db.client).await;
    assert_eq!(count_status(&db.client, "pending").await, 1);
    let direct = db
        .client
        .batch_execute(&format!(
            "SET ROLE {writer};
             INSERT INTO outbox.messages (event_type, payload) VALUES ('t', '{{}}');"
        ))
        .await
        .unwrap_err();
    let direct = direct.as_db_error().unwrap();
    assert_eq!(direct.message(), "permission denied for schema outbox");
    db.client
        .batch_execute(&format!(
            "RESET ROLE; DROP SCHEMA app CASCADE;
             DROP OWNED BY {owner}, {writer}; DROP ROLE {owner}; DROP ROLE {writer};"
        ))
        .await
        .unwrap();
}

/// The generated trigger body used to sit between fixed dollar quotes, so a
/// column name holding that tag ended the body and ran what followed as
/// the adopter (often a superuser). Now it is one quoted literal.
#[tokio::test]
async fn a_column_name_cannot_inject_sql_into_adopt() {
    let db = fresh_db().await;
    let (url, _) = login_as(&db, "outbox_writer").await;
    let app = reqwest::Url::parse(&url).unwrap().username().to_owned();
    // 63 bytes, the longest name PostgreSQL keeps.
    let column = "$body$;GRANT SELECT ON outbox.endpoints TO public;SELECT $body$";
    assert_eq!(column.len(), 63);
    db.client
        .batch_execute(&format!(
            r#"CREATE TABLE sneaky (id text, "{column}" text, payload jsonb);
               SET check_function_bodies = off;"#
        ))
        .await
        .unwrap();
    let mapping = serde_json::json!({ "event_type": column }).to_string();
    adopt(&db.client, "sneaky", &mapping).await;
    let granted: bool = db
        .client
        .query_one(
            "SELECT has_table_privilege($1, 'outbox.endpoints', 'SELECT')",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !granted,
        "the column name granted {app} the endpoints' secrets"
    );
    // And the odd column works as the mapping says.
    db.client
        .batch_execute(r#"INSERT INTO sneaky VALUES ('s1', 'order.created', '{}')"#)
        .await
        .unwrap();
    let event_type: String = db
        .client
        .query_one(
            "SELECT event_type FROM outbox.messages WHERE event_id = 's1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(event_type, "order.created");
}
