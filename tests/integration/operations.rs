//! Operating outboxd: metrics, probes, SQL status and controls, events,
//! retention.

use std::time::Duration;

use outboxd::config::Retention;
use outboxd::embedded::postgres::{Options, TempPostgres};
use outboxd::maintenance::{self, Purged};
use outboxd::signature::Secret;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// The value of one sample line in Prometheus text, 0 when absent.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_dead_deliveries_disabled_endpoints_readiness_and_build() {
    let db = fresh_db().await;
    // Endpoint ids unique to this test: the recorder is shared by every
    // sidecar in the test process.
    add_unreachable_endpoint(&db.client, "gauges-dead").await;
    add_unreachable_endpoint(&db.client, "gauges-off").await;
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, endpoint_id)
             VALUES ('gd1', 't', '{}', 'gauges-dead'), ('gd2', 't', '{}', 'gauges-dead'),
                    ('go1', 't', '{}', 'gauges-off');
             SELECT outbox.route(10);
             UPDATE outbox.deliveries SET status = 'dead', next_attempt_at = NULL
             WHERE endpoint_id = 'gauges-dead';
             UPDATE outbox.endpoints SET enabled = false, disabled_reason = '410 Gone'
             WHERE id = 'gauges-off';",
        )
        .await
        .unwrap();
    let mut cfg = config(&db);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    let sidecar = spawn(cfg);
    let metrics_url = format!("http://{addr}/metrics");
    // The housekeeping publishes the gauges at start, then every 15 s.
    let published = eventually(WAIT, || async {
        let text = get(&metrics_url).await.1;
        sample(&text, r#"outboxd_dead_deliveries{endpoint="gauges-dead"}"#) == 2.0
            && sample(&text, r#"outboxd_endpoint_disabled{endpoint="gauges-off"}"#) == 1.0
            && sample(&text, "outboxd_ready ") == 1.0
    })
    .await;
    let text = get(&metrics_url).await.1;
    sidecar.stop().await;
    assert!(published, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"outboxd_endpoint_disabled{endpoint="gauges-dead"}"#
        ),
        0.0
    );
    assert!(
        text.contains(r#"outboxd_endpoint_disabled{endpoint="gauges-dead"} 0"#),
        "an enabled endpoint reads 0, not absent: {text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"outboxd_pending_deliveries{endpoint="gauges-off"}"#
        ),
        1.0,
        "{text}"
    );
    let version = format!(
        r#"outboxd_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    for help in [
        "# HELP outboxd_deliveries_total Ends of attempts and claims handed back unsent",
        "# TYPE outboxd_dead_deliveries gauge",
        "# TYPE outboxd_claim_batch_deliveries histogram",
    ] {
        assert!(text.contains(help), "{help}: {text}");
    }
}

#[tokio::test]
async fn metrics_count_deliveries_by_endpoint_and_outcome() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(
        &db.client,
        "metrics-ep",
        &receiver.url(),
        None,
        &Secret::generate(),
    )
    .await;
    let mut cfg = config(&db);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    let sidecar = spawn(cfg);
    let metrics_url = format!("http://{addr}/metrics");
    assert!(eventually(WAIT, || async { get(&metrics_url).await.0 == 200 }).await);

    for i in 0..3 {
        insert_message(&db.client, &format!("m{i}"), "t", "{}").await;
    }
    assert!(wait_settled(&db.client, WAIT).await);
    let delivered = r#"outboxd_deliveries_total{endpoint="metrics-ep",outcome="delivered"}"#;
    let retried = r#"outboxd_deliveries_total{endpoint="metrics-ep",outcome="retry"}"#;
    assert!(
        eventually(WAIT, || async {
            sample(&get(&metrics_url).await.1, delivered) == 3.0
        })
        .await
    );
    let text = get(&metrics_url).await.1;
    sidecar.stop().await;

    assert_eq!(sample(&text, retried), 3.0, "{text}");
    assert!(
        sample(
            &text,
            r#"outboxd_attempt_duration_seconds_count{endpoint="metrics-ep"}"#
        ) >= 6.0
    );
    assert_eq!(
        sample(
            &text,
            r#"outboxd_delivery_lag_seconds_count{endpoint="metrics-ep"}"#
        ),
        3.0
    );
    assert!(sample(&text, "outboxd_claim_batch_deliveries_count") >= 1.0);
    assert!(
        text.contains("# TYPE outboxd_in_flight_requests gauge"),
        "{text}"
    );
    assert!(!text.contains(&receiver.url()), "no URLs in labels");
    assert!(
        !text.contains("webhook_id") && !text.contains("m0"),
        "no message ids in labels"
    );
}

#[tokio::test]
async fn probes_report_liveness_and_database_readiness() {
    let cluster = tokio::task::spawn_blocking(|| {
        TempPostgres::start(&Options {
            unsafe_fast: true,
            ..Options::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let url = cluster.url("postgres");
    let mut client = connect(&url).await;
    outboxd::db::migrate::run(&mut client).await.unwrap();
    let db = TestDb { url, client };
    let mut cfg = config(&db);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    let sidecar = spawn(cfg);
    let (healthz, readyz) = (
        format!("http://{addr}/healthz"),
        format!("http://{addr}/readyz"),
    );
    assert!(
        eventually(WAIT, || async { get(&readyz).await.0 == 200 }).await,
        "ready with the database up"
    );

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop("fast").unwrap();
        cluster
    })
    .await
    .unwrap();
    assert!(
        eventually(WAIT, || async { get(&readyz).await.0 == 503 }).await,
        "not ready without it"
    );
    let (status, body) = get(&readyz).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready:"), "{body}");
    assert_eq!(get(&healthz).await.0, 200, "still alive");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().unwrap();
        cluster
    })
    .await
    .unwrap();
    assert!(
        eventually(WAIT, || async { get(&readyz).await.0 == 200 }).await,
        "ready again"
    );
    assert_eq!(get(&format!("http://{addr}/nope")).await.0, 404);
    sidecar.stop().await;
    drop(cluster);
}

#[tokio::test]
async fn endpoint_health_replay_and_cancel_from_sql() {
    let db = fresh_db().await;
    let receiver = Receiver::start(None, |r| {
        if r.json().is_some_and(|j| j["fixed"] == true) {
            Reply::ok()
        } else {
            Reply::status(500)
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "y", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "a", "t", "{}").await;
    insert_message(&db.client, "b", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);

    let health = db
        .client
        .query_one("SELECT pending, in_flight, dead, failure_streak, failing_since IS NOT NULL, last_success_at FROM outbox.endpoint_health WHERE endpoint_id = 'y'", &[])
        .await
        .unwrap();
    assert_eq!(health.get::<_, i64>(0), 0);
    assert_eq!(health.get::<_, i64>(2), 2, "both died");
    assert_eq!(health.get::<_, i32>(3), 6, "three failed attempts each");
    assert!(health.get::<_, bool>(4));
    assert_eq!(health.get::<_, Option<std::time::SystemTime>>(5), None);

    let ids: Vec<i64> = db
        .client
        .query(
            "SELECT delivery_id FROM outbox.message_status ORDER BY event_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let cancelled: bool = db
        .client
        .query_one("SELECT outbox.cancel($1)", &[&ids[1]])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled);
    let again: bool = db
        .client
        .query_one("SELECT outbox.cancel($1)", &[&ids[1]])
        .await
        .unwrap()
        .get(0);
    assert!(!again, "cancelled is final");

    db.client
        .execute(
            "UPDATE outbox.messages SET payload = '{\"fixed\": true}'",
            &[],
        )
        .await
        .unwrap();
    let replayed: i32 = db
        .client
        .query_one(
            "SELECT outbox.replay_dead('y', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(replayed, 1, "only the dead one, not the cancelled one");
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let row = db
        .client
        .query_one(
            "SELECT status, attempts FROM outbox.deliveries WHERE id = $1",
            &[&ids[0]],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0).as_str(), row.get::<_, i32>(1)),
        ("delivered", 4)
    );
    let replay_false: bool = db
        .client
        .query_one("SELECT outbox.replay($1)", &[&ids[0]])
        .await
        .unwrap()
        .get(0);
    assert!(!replay_false, "only dead deliveries replay");
    let health = db
        .client
        .query_one("SELECT failure_streak, failing_since IS NULL, last_success_at IS NOT NULL FROM outbox.endpoint_health", &[])
        .await
        .unwrap();
    assert_eq!(
        (health.get::<_, i32>(0), health.get(1), health.get(2)),
        (0, true, true)
    );
}

#[tokio::test]
async fn operational_events_are_recorded_and_notified() {
    let db = fresh_db().await;
    let (listener, mut connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener
        .batch_execute("LISTEN outbox_events")
        .await
        .unwrap();

    let receiver = Receiver::start(None, |r| {
        if r.nth <= 3 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    add_endpoint(&db.client, "ev", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "e1", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    let delivery: i64 = db
        .client
        .query_one("SELECT id FROM outbox.deliveries", &[])
        .await
        .unwrap()
        .get(0);
    db.client
        .query_one("SELECT outbox.replay($1)", &[&delivery])
        .await
        .unwrap();
    assert!(wait_settled(&db.client, WAIT).await);
    db.client
        .execute(
            "UPDATE outbox.endpoints SET enabled = false, disabled_reason = 'maintenance'",
            &[],
        )
        .await
        .unwrap();
    db.client
        .execute("UPDATE outbox.endpoints SET enabled = true", &[])
        .await
        .unwrap();
    sidecar.stop().await;

    let kinds: Vec<String> = db
        .client
        .query("SELECT kind FROM outbox.events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kinds,
        [
            "delivery.dead",
            "delivery.replay_succeeded",
            "endpoint.disabled",
            "endpoint.enabled"
        ]
    );
    let mut notified = Vec::new();
    while notified.len() < 4 {
        let payload = tokio::time::timeout(WAIT, notifications.recv())
            .await
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        notified.push(json["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(notified, kinds);
    let reason: String = db
        .client
        .query_one(
            "SELECT detail->>'reason' FROM outbox.events WHERE kind = 'endpoint.disabled'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "maintenance");
}

#[tokio::test]
async fn retention_purges_exactly_the_old_finished_rows() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "p").await;
    // Twelve messages; states and ages set by hand, as history would.
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'm' || g, 't', '{}' FROM generate_series(1, 12) g;
             SELECT outbox.route(100);
             UPDATE outbox.messages SET created_at = now() - interval '60 days'
              WHERE event_id IN ('m1','m2','m3','m4','m5','m6','m7','m8','m9','m10');
             UPDATE outbox.deliveries d SET
               status = CASE m.event_id
                 WHEN 'm1' THEN 'delivered' WHEN 'm2' THEN 'delivered' WHEN 'm3' THEN 'cancelled'
                 WHEN 'm4' THEN 'dead' WHEN 'm5' THEN 'dead' WHEN 'm6' THEN 'pending'
                 WHEN 'm7' THEN 'delivered' WHEN 'm8' THEN 'dead' ELSE d.status END,
               next_attempt_at = CASE WHEN m.event_id IN ('m1','m2','m3','m4','m5','m7','m8') THEN NULL
                                      ELSE d.next_attempt_at END,
               updated_at = CASE m.event_id
                 WHEN 'm1' THEN now() - interval '8 days'  WHEN 'm2' THEN now() - interval '40 days'
                 WHEN 'm3' THEN now() - interval '8 days'  WHEN 'm4' THEN now() - interval '31 days'
                 WHEN 'm5' THEN now() - interval '8 days'  WHEN 'm6' THEN now() - interval '50 days'
                 WHEN 'm7' THEN now() - interval '1 day'   WHEN 'm8' THEN now() - interval '29 days'
                 ELSE d.updated_at END,
               created_at = now() - interval '60 days'
             FROM outbox.messages m WHERE m.id = d.message_id;
             INSERT INTO outbox.attempts (delivery_id, attempt, started_at, duration_ms, status_code)
             SELECT id, 1, now(), 1, 200 FROM outbox.deliveries;
             DELETE FROM outbox.deliveries d USING outbox.messages m
              WHERE m.id = d.message_id AND m.event_id IN ('m9', 'm11');
             INSERT INTO outbox.events (kind, occurred_at) VALUES
               ('delivery.dead', now() - interval '31 days'), ('delivery.dead', now());",
        )
        .await
        .unwrap();
    // m9: old, no deliveries left -> message purged. m10: old message, its
    // delivery still pending -> kept. m11: new message without deliveries
    // -> kept. m12: new and pending -> kept.
    let retention = Retention {
        finished: Duration::from_secs(7 * 86400),
        dead: Duration::from_secs(30 * 86400),
        every: Duration::from_secs(60),
    };
    // As the sidecar's role, with only the rights docs/security.md grants.
    let (url, mut sidecar) = login_as(&db, "outbox_sidecar").await;
    // Its settings as behind a transaction pooler: SET LOCAL in each page.
    let pooled = outboxd::db::Db::new(&outboxd::config::DatabaseUrl::new(url))
        .unwrap()
        .with_pooler(outboxd::config::Pooler::Transaction)
        .with_pinned_search_path();
    let purged =
        maintenance::purge_once(&pooled, &mut sidecar, &retention, &CancellationToken::new())
            .await
            .unwrap();
    // Deliveries: m1, m2, m3 (finished > 7 d) and m4 (dead > 30 d) go; m5
    // and m8 (dead, younger), m6 (pending), m7 (recent), m10, m12 stay.
    assert_eq!(
        purged,
        Purged {
            deliveries: 4,
            messages: 5,
            events: 1
        }
    );
    let left: Vec<String> = db
        .client
        .query("SELECT event_id FROM outbox.messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["m5", "m6", "m7", "m8", "m10", "m11", "m12"]);
    let attempts: i64 = count(&db.client, "SELECT count(*) FROM outbox.attempts").await;
    assert_eq!(attempts, 6, "attempts of purged deliveries went with them");
    let again =
        maintenance::purge_once(&pooled, &mut sidecar, &retention, &CancellationToken::new())
            .await
            .unwrap();
    assert_eq!(again, Purged::default(), "a second round finds nothing");
}

#[tokio::test]
async fn deleting_deliveries_or_messages_deletes_their_attempts() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "a").await;
    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'm' || g, 't', '{}' FROM generate_series(1, 4) g;
             SELECT outbox.route(100);
             INSERT INTO outbox.attempts (delivery_id, attempt, started_at, duration_ms)
             SELECT d.id, a, now(), 1 FROM outbox.deliveries d, generate_series(1, 3) a;",
        )
        .await
        .unwrap();
    let attempts_of = |events: &'static [&'static str]| {
        let client = &db.client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM outbox.attempts a
                     JOIN outbox.deliveries d ON d.id = a.delivery_id
                     JOIN outbox.messages m ON m.id = d.message_id
                     WHERE m.event_id = ANY ($1)",
                    &[&events],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(attempts_of(&["m1", "m2", "m3", "m4"]).await, 12);
    db.client
        .batch_execute(
            "DELETE FROM outbox.deliveries d USING outbox.messages m
              WHERE m.id = d.message_id AND m.event_id = 'm1';
             DELETE FROM outbox.messages WHERE event_id IN ('m2', 'm3');",
        )
        .await
        .unwrap();
    let left: i64 = count(&db.client, "SELECT count(*) FROM outbox.attempts").await;
    assert_eq!(left, 3, "only m4's attempts are left");
    assert_eq!(attempts_of(&["m4"]).await, 3);
}

#[tokio::test]
async fn every_select_in_docs_sql_md_runs() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "Y").await;
    // The tables that the adoption examples name.
    db.client
        .batch_execute(
            "CREATE TABLE outboxevent (id uuid PRIMARY KEY, aggregatetype text, aggregateid text,
                                       type text, payload jsonb, created_at timestamptz);
             CREATE SCHEMA app;
             CREATE TABLE app.events (id bigint, type text, body jsonb);",
        )
        .await
        .unwrap();
    let doc = include_str!("../../docs/sql.md");
    let mut checked = 0;
    for block in doc.split("```sql").skip(1) {
        let block = block.split("```").next().unwrap();
        for statement in block.split(';').map(str::trim) {
            let code: String = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            if code.trim_start().starts_with("SELECT") {
                db.client
                    .query(code.as_str(), &[])
                    .await
                    .unwrap_or_else(|e| panic!("docs/sql.md: {code}\n{e}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} statements found");
}

#[tokio::test]
async fn an_endpoint_with_deliveries_can_be_disabled_but_not_deleted_or_renamed() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "kept").await;
    insert_message(&db.client, "m", "t", "{}").await;
    route(&db.client).await;
    for sql in [
        "DELETE FROM outbox.endpoints WHERE id = 'kept'",
        "UPDATE outbox.endpoints SET id = 'renamed' WHERE id = 'kept'",
    ] {
        let error = db.client.batch_execute(sql).await.unwrap_err();
        let error = error.as_db_error().unwrap();
        assert_eq!(error.code().code(), "23503", "{sql}");
        assert!(
            error.message().contains("has deliveries"),
            "{}",
            error.message()
        );
    }
    db.client
        .batch_execute("UPDATE outbox.endpoints SET enabled = false WHERE id = 'kept'")
        .await
        .unwrap();
    // Once its deliveries are gone (with their messages), it may go too.
    db.client
        .batch_execute(
            "DELETE FROM outbox.messages;
             DELETE FROM outbox.endpoints WHERE id = 'kept';",
        )
        .await
        .unwrap();
    assert_eq!(count_status(&db.client, "pending").await, 0);
}
