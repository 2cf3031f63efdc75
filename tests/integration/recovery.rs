//! The recovery tools of 0015: resend, recover, a retry schedule per
//! endpoint and recorded replays, in SQL and through the CLI, with
//! ordering keys, tenants and roles.

use std::process::Output;

use outboxd::signature::Secret;

use crate::common::*;

async fn outboxd(db: &TestDb, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("USER", "oncall")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("running outboxd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn delivery_of(db: &TestDb, event_id: &str, endpoint: &str) -> (i64, String, String) {
    let row = db
        .client
        .query_one(
            "SELECT d.id, d.status, d.next_attempt_at::text
             FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
             WHERE m.event_id = $1 AND d.endpoint_id = $2",
            &[&event_id, &endpoint],
        )
        .await
        .unwrap();
    (
        row.get(0),
        row.get(1),
        row.get::<_, Option<String>>(2).unwrap_or_default(),
    )
}

/// (kind, endpoint, delivery, detail) of the recorded events, oldest first.
async fn events(db: &TestDb) -> Vec<(String, Option<String>, serde_json::Value)> {
    db.client
        .query(
            "SELECT kind, endpoint_id, detail::text FROM outbox.events ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let detail: String = r.get(2);
            (r.get(0), r.get(1), serde_json::from_str(&detail).unwrap())
        })
        .collect()
}

async fn insert(
    db: &TestDb,
    event_id: &str,
    event_type: &str,
    tenant: Option<&str>,
    key: Option<&str>,
) {
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload, tenant_id, ordering_key)
             VALUES ($1, $2, '{}', $3, $4)",
            &[&event_id, &event_type, &tenant, &key],
        )
        .await
        .unwrap();
}

async fn endpoint(db: &TestDb, id: &str, url: &str, tenant: Option<&str>, types: Option<&[&str]>) {
    let types: Option<Vec<String>> = types.map(|t| t.iter().map(|s| s.to_string()).collect());
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets, tenant_id, event_types)
             VALUES ($1, $2, ARRAY[$3], $4, $5)",
            &[&id, &url, &Secret::generate().to_whsec(), &tenant, &types],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn resend_sends_a_delivered_message_again_and_records_who_asked() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    endpoint(&db, "shop", &receiver.url(), None, None).await;
    insert(&db, "order-1", "order.paid", None, None).await;
    let sidecar = spawn(config(&db));
    assert!(wait_settled(&db.client, WAIT).await);
    let (id, status, _) = delivery_of(&db, "order-1", "shop").await;
    assert_eq!(status, "delivered");

    let resent: bool = db
        .client
        .query_one("SELECT outbox.resend($1, 'ticket 42')", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(resent);
    assert!(eventually(WAIT, || async { receiver.count() == 2 }).await);
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    let received = receiver.received();
    assert_eq!(
        received[0].webhook_id, received[1].webhook_id,
        "the same webhook-id"
    );
    let attempts: Vec<i32> = db
        .client
        .query(
            "SELECT attempt FROM outbox.attempts WHERE delivery_id = $1 ORDER BY 1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(attempts, [1, 2], "attempt numbers are not reused");
    let resent = events(&db)
        .await
        .into_iter()
        .find(|(kind, _, _)| kind == "delivery.resent")
        .expect("a delivery.resent event");
    assert_eq!(resent.1.as_deref(), Some("shop"));
    assert_eq!(resent.2["triggered_by"], "ticket 42");
    assert_eq!(resent.2["previous_status"], "delivered");
    assert!(resent.2["role"].is_string());
}

#[tokio::test]
async fn resend_leaves_pending_and_in_flight_deliveries_alone() {
    let db = fresh_db().await;
    endpoint(&db, "shop", "http://127.0.0.1:9/", None, None).await;
    insert(&db, "a", "t", None, None).await;
    insert(&db, "b", "t", None, None).await;
    route(&db.client).await;
    let (a, _, _) = delivery_of(&db, "a", "shop").await;
    let (b, _, _) = delivery_of(&db, "b", "shop").await;
    // b is claimed by a worker: its outcome must still land, fenced.
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'in_flight', attempts = 1, lease_owner = 'w',
                    next_attempt_at = now() + interval '1 minute' WHERE id = $1",
            &[&b],
        )
        .await
        .unwrap();
    for id in [a, b, 999_999] {
        let resent: bool = db
            .client
            .query_one("SELECT outbox.resend($1)", &[&id])
            .await
            .unwrap()
            .get(0);
        assert!(!resent, "delivery {id}");
    }
    assert_eq!(delivery_of(&db, "b", "shop").await.1, "in_flight");
    assert!(
        events(&db).await.is_empty(),
        "nothing happened, nothing recorded"
    );
}

#[tokio::test]
async fn recover_gives_an_endpoint_what_it_missed_of_its_tenant_including_older_messages() {
    let db = fresh_db().await;
    endpoint(&db, "acme-old", "http://127.0.0.1:9/", Some("acme"), None).await;
    insert(&db, "acme-paid", "order.paid", Some("acme"), None).await;
    insert(&db, "acme-shipped", "order.shipped", Some("acme"), None).await;
    insert(&db, "globex-paid", "order.paid", Some("globex"), None).await;
    insert(&db, "nobody-paid", "order.paid", None, None).await;
    route(&db.client).await;
    // Created after every message: routing gives it none of them.
    endpoint(
        &db,
        "acme-new",
        "http://127.0.0.1:9/",
        Some("acme"),
        Some(&["order.paid"]),
    )
    .await;
    insert(&db, "acme-paid-later", "order.paid", Some("acme"), None).await;
    route(&db.client).await;

    let recover =
        "SELECT outbox.recover('acme-new', now() - interval '1 hour', NULL, $1, 'sql test')";
    let made: i32 = db
        .client
        .query_one(recover, &[&None::<Vec<String>>])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        made, 1,
        "its own subscription, its own tenant, not what it has"
    );
    let (_, status, due) = delivery_of(&db, "acme-paid", "acme-new").await;
    assert_eq!(status, "pending");
    assert_ne!(due, "infinity");
    let again: i32 = db
        .client
        .query_one(recover, &[&None::<Vec<String>>])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 0, "recovering twice sends nothing twice");
    let shipped: i32 = db
        .client
        .query_one(recover, &[&Some(vec!["order.shipped".to_owned()])])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shipped, 1, "other event types when asked");
    let tenant_rows: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM outbox.deliveries WHERE endpoint_id = 'acme-new' AND tenant_id IS DISTINCT FROM 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tenant_rows, 0, "never another tenant's message");
    let future: i32 = db
        .client
        .query_one(
            "SELECT outbox.recover('acme-old', now() - interval '1 hour', now() - interval '30 minutes')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(future, 0, "until bounds the range");
    let recorded: Vec<_> = events(&db)
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "endpoint.recovered")
        .collect();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].2["deliveries"], 1);
    assert_eq!(recorded[0].2["triggered_by"], "sql test");
    assert_eq!(recorded[3].2["triggered_by"], "sql", "no one named: sql");

    let unknown = db
        .client
        .query_one("SELECT outbox.recover('nope', now())", &[])
        .await
        .unwrap_err();
    let message = unknown.as_db_error().unwrap().message();
    assert!(message.contains("unknown endpoint"), "{message}");
}

#[tokio::test]
async fn recovered_keyed_messages_go_out_in_key_order() {
    let db = fresh_db().await;
    let receiver = ok_receiver(None).await;
    endpoint(&db, "first", &receiver.url(), None, None).await;
    for n in 1..=4 {
        insert(&db, &format!("k-{n}"), "t", None, Some("customer-7")).await;
    }
    insert(&db, "unkeyed", "t", None, None).await;
    let sidecar = spawn(config(&db));
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    let late = ok_receiver(None).await;
    endpoint(&db, "late", &late.url(), None, None).await;

    let made: i32 = db
        .client
        .query_one(
            "SELECT outbox.recover('late', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 5);
    let waiting: Vec<String> = db
        .client
        .query(
            "SELECT m.event_id FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id
             WHERE d.endpoint_id = 'late' AND d.next_attempt_at = 'infinity' ORDER BY m.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        waiting,
        ["k-2", "k-3", "k-4"],
        "one at a time behind the key's first"
    );

    let sidecar = spawn(config(&db));
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    let keyed: Vec<String> = late
        .received()
        .into_iter()
        .map(|r| r.webhook_id)
        .filter(|id| id.starts_with("k-"))
        .collect();
    assert_eq!(keyed, ["k-1", "k-2", "k-3", "k-4"]);
    assert_eq!(late.count(), 5);
}

#[tokio::test]
async fn a_resent_keyed_message_goes_before_the_later_ones_of_its_key() {
    let db = fresh_db().await;
    endpoint(&db, "shop", "http://127.0.0.1:9/", None, None).await;
    insert(&db, "k-1", "t", None, Some("k")).await;
    insert(&db, "k-2", "t", None, Some("k")).await;
    route(&db.client).await;
    let (first, _, _) = delivery_of(&db, "k-1", "shop").await;
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'delivered', next_attempt_at = NULL WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap();
    assert_ne!(
        delivery_of(&db, "k-2", "shop").await.2,
        "infinity",
        "promoted"
    );
    let resent: bool = db
        .client
        .query_one("SELECT outbox.resend($1)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(resent);
    // Claim as a sidecar would: only k-1, the key's earliest open delivery.
    let claimed: Vec<i64> = db
        .client
        .query("SELECT id FROM outbox.claim('w', 10, 30, '')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(claimed, [first]);
}

#[tokio::test]
async fn an_endpoint_retry_schedule_overrides_the_sidecars() {
    let db = fresh_db().await;
    let failing = Receiver::start(None, |_| Reply::status(500)).await.unwrap();
    endpoint(&db, "own", &failing.url(), None, Some(&["a"])).await;
    endpoint(&db, "default", &failing.url(), None, Some(&["b"])).await;
    db.client
        .execute(
            "SELECT outbox.set_retry_schedule('own', ARRAY['0s', '10ms', '10ms', '10ms', '10ms']::interval[], 'test')",
            &[],
        )
        .await
        .unwrap();
    insert(&db, "a-1", "a", None, None).await;
    insert(&db, "b-1", "b", None, None).await;
    let sidecar = spawn(config(&db)); // the sidecar's schedule: 3 attempts
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;
    let attempts = |event: &'static str| {
        let db = &db;
        async move {
            let row = db
                .client
                .query_one(
                    "SELECT d.status, d.attempts FROM outbox.deliveries d
                     JOIN outbox.messages m ON m.id = d.message_id WHERE m.event_id = $1",
                    &[&event],
                )
                .await
                .unwrap();
            (row.get::<_, String>(0), row.get::<_, i32>(1))
        }
    };
    assert_eq!(attempts("a-1").await, ("dead".to_owned(), 5));
    assert_eq!(attempts("b-1").await, ("dead".to_owned(), 3));

    let bad = db
        .client
        .execute(
            "SELECT outbox.set_retry_schedule('own', ARRAY['-1s']::interval[])",
            &[],
        )
        .await
        .unwrap_err();
    let message = bad.as_db_error().unwrap().message();
    assert!(message.contains("1 to 50 delays"), "{message}");
    let set = events(&db)
        .await
        .into_iter()
        .find(|(kind, _, _)| kind == "endpoint.retry_schedule_set")
        .unwrap();
    assert_eq!(set.2["schedule"][1], "00:00:00.01");
    assert_eq!(set.2["previous"], serde_json::Value::Null);
}

#[tokio::test]
async fn recorded_replays_say_who_asked() {
    let db = fresh_db().await;
    endpoint(&db, "shop", "http://127.0.0.1:9/", None, None).await;
    insert(&db, "a", "t", None, None).await;
    insert(&db, "b", "t", None, None).await;
    route(&db.client).await;
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'dead', next_attempt_at = NULL",
            &[],
        )
        .await
        .unwrap();
    let (a, _, _) = delivery_of(&db, "a", "shop").await;
    let one: bool = db
        .client
        .query_one("SELECT outbox.replay($1, 'console')", &[&a])
        .await
        .unwrap()
        .get(0);
    let rest: i32 = db
        .client
        .query_one(
            "SELECT outbox.replay_dead('shop', now() - interval '1 hour', 'console')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(one);
    assert_eq!(rest, 1);
    let kinds: Vec<String> = events(&db)
        .await
        .into_iter()
        .filter(|(_, _, detail)| detail["triggered_by"] == "console")
        .map(|(kind, _, _)| kind)
        .collect();
    assert!(
        kinds.ends_with(&[
            "delivery.replayed".to_owned(),
            "endpoint.dead_replayed".to_owned()
        ]),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn only_the_sidecar_and_the_owner_may_use_the_recovery_tools() {
    let db = fresh_db().await;
    endpoint(&db, "shop", "http://127.0.0.1:9/", Some("acme"), None).await;
    insert(&db, "a", "t", Some("acme"), None).await;
    route(&db.client).await;
    let (id, _, _) = delivery_of(&db, "a", "shop").await;
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'delivered', next_attempt_at = NULL",
            &[],
        )
        .await
        .unwrap();
    for group in ["outbox_writer", "outbox_tenant_reader"] {
        let (_, client) = login_as(&db, group).await;
        client
            .batch_execute("SET outbox.tenant_id = 'acme'")
            .await
            .unwrap();
        for sql in [
            format!("SELECT outbox.resend({id})"),
            "SELECT outbox.recover('shop', now() - interval '1 day')".to_owned(),
            "SELECT outbox.set_retry_schedule('shop', NULL)".to_owned(),
            format!("SELECT outbox.replay({id}, 'x')"),
        ] {
            let refused = client.batch_execute(&sql).await.unwrap_err();
            assert_eq!(
                refused.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{group}: {sql}"
            );
        }
    }
    let (_, sidecar) = login_as(&db, "outbox_sidecar").await;
    let resent: bool = sidecar
        .query_one("SELECT outbox.resend($1, 'console')", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(resent);
    let excerpt = sidecar
        .query(
            "SELECT status_code, response_excerpt FROM outbox.attempts",
            &[],
        )
        .await;
    assert!(excerpt.is_ok(), "the console reads attempts");
}

#[tokio::test]
async fn cli_resend_recover_and_retry_schedule_respect_tenants() {
    let db = fresh_db().await;
    endpoint(&db, "acme-shop", "http://127.0.0.1:9/", Some("acme"), None).await;
    insert(&db, "order-1", "order.paid", Some("acme"), None).await;
    route(&db.client).await;
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'delivered', next_attempt_at = NULL",
            &[],
        )
        .await
        .unwrap();

    let wrong = outboxd(
        &db,
        &[
            "resend",
            "--event-id",
            "order-1",
            "--endpoint",
            "acme-shop",
            "--tenant",
            "globex",
        ],
    )
    .await;
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("belongs to tenant acme, not globex"),
        "{}",
        text(&wrong.stderr)
    );
    assert_eq!(
        delivery_of(&db, "order-1", "acme-shop").await.1,
        "delivered"
    );

    let resend = outboxd(
        &db,
        &[
            "resend",
            "--event-id",
            "order-1",
            "--endpoint",
            "acme-shop",
            "--tenant",
            "acme",
            "--note",
            "INC-7",
        ],
    )
    .await;
    assert!(resend.status.success(), "{}", text(&resend.stderr));
    assert!(text(&resend.stdout).contains("(delivered) is pending again"));
    let (id, status, _) = delivery_of(&db, "order-1", "acme-shop").await;
    assert_eq!(status, "pending");
    let twice = outboxd(&db, &["resend", "--delivery", &id.to_string()]).await;
    assert!(!twice.status.success());
    assert!(text(&twice.stderr).contains("is pending: it is on its way already"));

    endpoint(&db, "acme-new", "http://127.0.0.1:9/", Some("acme"), None).await;
    let refused = outboxd(
        &db,
        &[
            "recover",
            "--endpoint",
            "acme-new",
            "--since",
            "1h",
            "--tenant",
            "globex",
        ],
    )
    .await;
    assert!(!refused.status.success());
    let recover = outboxd(
        &db,
        &[
            "recover",
            "--endpoint",
            "acme-new",
            "--since",
            "1h",
            "--event-type",
            "order.paid",
            "--tenant",
            "acme",
        ],
    )
    .await;
    assert!(recover.status.success(), "{}", text(&recover.stderr));
    assert!(
        text(&recover.stdout).starts_with("1 missed messages"),
        "{}",
        text(&recover.stdout)
    );

    let schedule = outboxd(&db, &["retry-schedule", "acme-new", "0s,30s,10m"]).await;
    assert!(schedule.status.success(), "{}", text(&schedule.stderr));
    let stored: String = db
        .client
        .query_one(
            "SELECT retry_schedule::text FROM outbox.endpoints WHERE id = 'acme-new'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, r#"{00:00:00,00:00:30,00:10:00}"#);
    let bad = outboxd(&db, &["retry-schedule", "acme-new", "soon"]).await;
    assert!(!bad.status.success());
    let reset = outboxd(&db, &["retry-schedule", "acme-new", "--reset"]).await;
    assert!(reset.status.success(), "{}", text(&reset.stderr));

    let who: Vec<String> = db
        .client
        .query(
            "SELECT detail->>'triggered_by' FROM outbox.events WHERE detail ? 'triggered_by' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        who,
        [
            "cli: outboxd resend by oncall (INC-7)",
            "cli: outboxd recover by oncall",
            "cli: outboxd retry-schedule by oncall",
            "cli: outboxd retry-schedule by oncall",
        ]
    );
}
