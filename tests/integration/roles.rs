//! Least privilege: log in as members of `outbox_writer` and
//! `outbox_sidecar` and check what each may and may not do.

use outboxd::config::DatabaseUrl;
use outboxd::signature::Secret;
use tokio_postgres::Client;

use crate::common::*;

/// Runs `sql` and expects SQLSTATE 42501 (insufficient_privilege).
async fn assert_refused(client: &Client, sql: &str) {
    let error = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("should be refused: {sql}"));
    assert_eq!(
        error.code().map(|c| c.code()),
        Some("42501"),
        "{sql}: {error}"
    );
}

#[tokio::test]
async fn roles_are_nologin_groups() {
    let db = fresh_db().await;
    let rows = db
        .client
        .query(
            "SELECT rolname::text, rolcanlogin FROM pg_roles
             WHERE rolname IN ('outbox_writer', 'outbox_sidecar') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let roles: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        roles,
        [
            ("outbox_sidecar".to_owned(), false),
            ("outbox_writer".to_owned(), false)
        ]
    );
}

#[tokio::test]
async fn migrating_more_databases_reuses_the_existing_roles() {
    // The roles exist already (the template database created them); each
    // of several databases migrating at once must still get its grants.
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut db = empty_db().await;
        runs.push(tokio::spawn(async move {
            outboxd::db::migrate::run(&mut db.client).await.unwrap();
            db
        }));
    }
    for run in runs {
        let db = run.await.unwrap();
        let granted: bool = db
            .client
            .query_one(
                "SELECT has_column_privilege('outbox_writer', 'outbox.messages', 'payload', 'INSERT')
                    AND has_table_privilege('outbox_sidecar', 'outbox.deliveries', 'SELECT')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(granted);
    }
}

#[tokio::test]
async fn writer_inserts_and_reads_status_but_nothing_else() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "e").await;
    let (_, app) = login_as(&db, "outbox_writer").await;

    app.batch_execute(
        "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('w1', 't', '{}')",
    )
    .await
    .unwrap();
    let returned: String = app
        .query_one(
            "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('w2', 't', '{}')
             RETURNING event_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(returned, "w2");
    let again = app
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('w1', 't', '{}')
             ON CONFLICT (event_id) DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(again, 0);

    // Fan-out ran on the writer's behalf; the writer sees the result.
    let status: Vec<(String, String)> = app
        .query(
            "SELECT event_id, status FROM outbox.message_status ORDER BY event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        status,
        [
            ("w1".into(), "pending".into()),
            ("w2".into(), "pending".into())
        ]
    );
    let enabled: bool = app
        .query_one("SELECT enabled FROM outbox.endpoints WHERE id = 'e'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(enabled);

    for sql in [
        "SELECT secrets FROM outbox.endpoints",
        "SELECT client_key_pem FROM outbox.endpoints",
        "SELECT url FROM outbox.endpoints",
        "SELECT * FROM outbox.endpoints",
        "SELECT payload FROM outbox.messages",
        "SELECT * FROM outbox.deliveries",
        "SELECT * FROM outbox.attempts",
        "UPDATE outbox.deliveries SET status = 'cancelled', next_attempt_at = NULL",
        "DELETE FROM outbox.deliveries",
        "INSERT INTO outbox.deliveries (message_id, endpoint_id, next_attempt_at) VALUES (1, 'e', now())",
        "UPDATE outbox.messages SET event_type = 'x'",
        "DELETE FROM outbox.messages",
        // Ids come from the sequence: a chosen one would break every later
        // insert that reaches it, and jump the queue of its ordering key.
        "INSERT INTO outbox.messages (id, event_id, event_type, payload)
         OVERRIDING SYSTEM VALUE VALUES (1000, 'w3', 't', '{}')",
        "INSERT INTO outbox.messages (event_id, event_type, payload, created_at)
         VALUES ('w4', 't', '{}', now() - interval '1 year')",
        "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('mine', 'https://example.com', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'])",
        "UPDATE outbox.endpoints SET enabled = false",
        "UPDATE outbox.settings SET max_payload_bytes = 1",
        "CREATE TABLE outbox.mine (id int)",
    ] {
        assert_refused(&app, sql).await;
    }
    route(&db.client).await;
    let deliveries: i64 = count(
        &db.client,
        "SELECT count(*) FROM outbox.deliveries WHERE status = 'pending'",
    )
    .await;
    assert_eq!(deliveries, 2, "nothing the writer tried changed them");
}

#[tokio::test]
async fn sidecar_role_runs_outboxd_and_can_do_nothing_else() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let ok = ok_receiver(Some(&secret)).await;
    let flaky = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    let gone = Receiver::start(None, |_| Reply::status(410)).await.unwrap();
    add_endpoint(&db.client, "ok", &ok.url(), None, &secret).await;
    add_endpoint(&db.client, "flaky", &flaky.url(), None, &secret).await;
    add_endpoint(&db.client, "gone", &gone.url(), None, &secret).await;
    let (url, sidecar_client) = login_as(&db, "outbox_sidecar").await;

    let mut config = config(&db);
    config.database_url = DatabaseUrl::new(url);
    let sidecar = spawn(config);
    insert_message(&db.client, "m", "t", "{}").await;
    let done = eventually(WAIT, || async {
        let row = db
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM outbox.deliveries WHERE status = 'delivered'),
                        (SELECT NOT enabled FROM outbox.endpoints WHERE id = 'gone')",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 2 && row.get::<_, bool>(1)
    })
    .await;
    sidecar.stop().await;
    assert!(
        done,
        "claimed, delivered, retried and disabled as outbox_sidecar"
    );
    assert_eq!(ok.received()[0].verified, Some(Ok(())));
    assert_eq!(flaky.count(), 2);
    let attempts: i64 = count(&db.client, "SELECT count(*) FROM outbox.attempts").await;
    assert_eq!(attempts, 4, "ok 1, flaky 2, gone 1");

    for sql in [
        "INSERT INTO outbox.messages (event_type, payload) VALUES ('t', '{}')",
        "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('mine', 'https://example.com', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'])",
        "UPDATE outbox.endpoints SET url = 'http://169.254.169.254/'",
        "UPDATE outbox.endpoints SET secrets = ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']",
        "UPDATE outbox.messages SET payload = '{}'",
        "UPDATE outbox.deliveries SET message_id = 1",
        // Deliveries, messages and events it may delete (the retention
        // purge); attempts only go with their delivery.
        "DELETE FROM outbox.attempts",
        "UPDATE outbox.settings SET max_payload_bytes = 1",
        "CREATE TABLE outbox.mine (id int)",
        "DROP TABLE outbox.attempts",
    ] {
        assert_refused(&sidecar_client, sql).await;
    }
}

/// On PostgreSQL 13 and 14 every role may create objects in `public`. A
/// writer that shadows a built-in there (with a function whose argument
/// types match a call better) must not get it run by the sidecar: neither
/// by the triggers its outcome writes fire nor by its own statements.
#[tokio::test]
async fn functions_in_public_never_run_as_the_sidecar() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let failing = Receiver::start(None, |_| Reply::status(500)).await.unwrap();
    add_endpoint(&db.client, "e", &failing.url(), None, &secret).await;
    let (_, app) = login_as(&db, "outbox_writer").await;
    // PostgreSQL 15 and later no longer grant this by default.
    db.client
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    app.batch_execute(
        "CREATE TABLE public.loot (who text, what text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.steal() RETURNS void LANGUAGE sql AS
           $$ INSERT INTO public.loot SELECT current_user, array_to_string(secrets, ',') FROM outbox.endpoints $$;
         -- record_event and on_delivery_finished (a delivery going dead):
         CREATE FUNCTION public.json_build_object(text, bigint, text, text) RETURNS json
           LANGUAGE plpgsql AS $$ BEGIN PERFORM public.steal(); RETURN '{}'; END $$;
         CREATE FUNCTION public.jsonb_build_object(text, integer, text, integer, text, text) RETURNS jsonb
           LANGUAGE plpgsql AS $$ BEGIN PERFORM public.steal(); RETURN '{}'; END $$;
         -- the sidecar's own statements:
         CREATE FUNCTION public.make_interval(secs double precision) RETURNS interval
           LANGUAGE plpgsql AS $$ BEGIN PERFORM public.steal(); RETURN '1 second'; END $$;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO PUBLIC;",
    )
    .await
    .unwrap();
    let (url, _) = login_as(&db, "outbox_sidecar").await;
    let mut config = config(&db);
    config.database_url = DatabaseUrl::new(url);
    config.retry =
        outboxd::retry::RetryPolicy::parse("0s", std::time::Duration::from_secs(1)).unwrap();
    let sidecar = spawn(config);
    app.batch_execute(
        "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ('m', 't', '{}')",
    )
    .await
    .unwrap();
    let dead = eventually(WAIT, || async {
        db.client
            .query_one(
                "SELECT count(*) FROM outbox.events WHERE kind = 'delivery.dead'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    sidecar.stop().await;
    assert!(dead, "the delivery went dead and the event was recorded");
    let loot: Vec<(String, String)> = db
        .client
        .query("SELECT who, what FROM public.loot", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(loot.is_empty(), "the writer's functions ran as {loot:?}");
}

#[tokio::test]
async fn every_outbox_function_pins_its_search_path() {
    let db = fresh_db().await;
    let unpinned: Vec<String> = db
        .client
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'outbox'::regnamespace
               AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(unpinned.is_empty(), "{unpinned:?}");
}
