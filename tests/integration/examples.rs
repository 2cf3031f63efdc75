//! The examples under `examples/` do what they say, against a real
//! database and the real sidecar: the Rust application and receiver are
//! compiled into this test binary (`#[path]` modules, so `cargo test`
//! alone runs them, whichever targets it built), the SQL snippets run
//! through `psql` exactly as their headers show, and the client snippets in
//! docs/clients.md prepare against the real schema (client_examples.rs
//! runs them).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use outboxd::signature::Secret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[allow(dead_code)]
#[path = "../../examples/app.rs"]
mod app;
#[allow(dead_code)]
#[path = "../../examples/receiver.rs"]
mod receiver;

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `psql` on PATH or beside Debian's server binaries (the package that
/// .ci/install-postgres installs brings it).
fn psql_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("psql"))
            .find(|p| p.is_file())
    });
    let debian = || {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin/psql")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    };
    on_path
        .or_else(debian)
        .expect("psql not found (Debian: apt-get install postgresql-client)")
}

/// Runs `examples/sql/<file>` as its header says; returns stdout.
async fn psql(db: &TestDb, file: &str, vars: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(psql_binary());
    command
        .arg(&db.url)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(repo_path(&format!("examples/sql/{file}")));
    for (name, value) in vars {
        command.arg("-v").arg(format!("{name}={value}"));
    }
    let output = command.output().await.expect("running psql");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "psql -f {file}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The example receiver on 127.0.0.1, with the webhooks it processed.
async fn start_receiver(
    secret: &Secret,
) -> (
    String,
    mpsc::UnboundedReceiver<receiver::Webhook>,
    CancellationToken,
) {
    let (events, processed) = mpsc::unbounded_channel();
    let state = Arc::new(receiver::Receiver::new(vec![secret.clone()], events));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(receiver::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    (url, processed, stop)
}

#[tokio::test]
async fn examples_carry_orders_from_app_and_sql_to_the_receiver_once_each() {
    let mut db = fresh_db().await;
    psql(&db, "orders.sql", &[]).await;
    let secret = Secret::generate();
    let (url, mut processed, stop_receiver) = start_receiver(&secret).await;
    // Two endpoints at the same receiver: every event arrives twice with
    // the same webhook-id, as a retry after a lost answer would.
    for id in ["shop", "shop-copy"] {
        let out = psql(
            &db,
            "register_endpoint.sql",
            &[
                ("endpoint_id", id),
                ("url", &url),
                ("secret", &secret.to_whsec()),
            ],
        )
        .await;
        assert!(out.contains(id), "{out}");
    }
    // And one that signs with a secret the receiver does not know.
    let stranger = Secret::generate().to_whsec();
    psql(
        &db,
        "register_endpoint.sql",
        &[
            ("endpoint_id", "impostor"),
            ("url", &url),
            ("secret", &stranger),
        ],
    )
    .await;
    let sidecar = spawn(config(&db));

    let placed = app::place_order(&mut db.client, "checkout-alice", "alice", 1999)
        .await
        .unwrap();
    assert_eq!(
        placed.event_id,
        format!("order-{}-created", placed.order_id)
    );
    let bob = [
        ("idempotency_key", "checkout-bob"),
        ("customer", "bob"),
        ("total_cents", "4200"),
    ];
    let out = psql(&db, "publish_order.sql", &bob).await;
    let second = format!("order-{}-created", placed.order_id + 1);
    assert!(out.contains(&second), "{out}");
    // The same request again (a retry): no order, no event.
    let again = psql(&db, "publish_order.sql", &bob).await;
    assert!(again.contains("(0 rows)"), "{again}");

    assert!(wait_settled(&db.client, WAIT).await, "deliveries settle");
    let statuses = app::delivery_status(&db.client, &placed.event_id)
        .await
        .unwrap();
    let summary: Vec<(&str, &str, Option<i32>)> = statuses
        .iter()
        .map(|d| {
            (
                d.endpoint_id.as_str(),
                d.status.as_str(),
                d.last_status_code,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("impostor", "dead", Some(400)),
            ("shop", "delivered", Some(200)),
            ("shop-copy", "delivered", Some(200)),
        ]
    );
    assert!(statuses.iter().all(app::DeliveryStatus::is_final));
    sidecar.stop().await;
    stop_receiver.cancel();

    // Four signed deliveries and six forged attempts: two events processed.
    // The receiver hands an event over before it answers, and every
    // answer is recorded: whatever was processed is in the channel now.
    let mut got = Vec::new();
    while let Ok(webhook) = processed.try_recv() {
        got.push(webhook);
    }
    got.sort_by_key(|w| w.payload["data"]["order_id"].as_i64());
    let ids: Vec<&str> = got.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, [placed.event_id.as_str(), second.as_str()]);
    assert!(
        got.iter()
            .all(|w| w.event_type.as_deref() == Some("order.created"))
    );
    assert_eq!(got[0].payload["data"]["customer"], "alice");
    assert_eq!(got[1].payload["data"]["customer"], "bob");
    assert_eq!(got[1].payload["data"]["total_cents"], 4200);

    let status = psql(&db, "delivery_status.sql", &[]).await;
    for expected in [
        placed.event_id.as_str(),
        &second,
        "delivered",
        "dead",
        "impostor",
    ] {
        assert!(status.contains(expected), "{expected} in:\n{status}");
    }
    let replayed = psql(&db, "replay_dead.sql", &[("endpoint_id", "impostor")]).await;
    assert!(replayed.lines().any(|l| l.trim() == "2"), "{replayed}");
    assert_eq!(count_status(&db.client, "pending").await, 2);
}

#[tokio::test]
async fn an_order_whose_event_cannot_be_written_is_not_written_either() {
    let mut db = fresh_db().await;
    db.client.batch_execute(app::ORDERS_TABLE).await.unwrap();
    // The next order will be number 1; its event id is taken already.
    insert_message(&db.client, "order-1-created", "order.created", "{}").await;
    let error = app::place_order(&mut db.client, "checkout-carol", "carol", 500)
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    let orders: i64 = count(&db.client, "SELECT count(*) FROM orders").await;
    assert_eq!(orders, 0, "the order was rolled back with its event");
    let placed = app::place_order(&mut db.client, "checkout-carol", "carol", 500)
        .await
        .unwrap();
    assert_eq!(placed.event_id, "order-2-created");
    assert!(placed.new);
}

/// The retry a producer makes when it cannot tell whether its COMMIT
/// landed (a timeout, a lost connection): with the request's idempotency
/// key it places nothing twice and so sends nothing twice, even when the
/// tries run at once.
#[tokio::test]
async fn a_retried_order_with_the_same_idempotency_key_sends_one_event() {
    let mut db = fresh_db().await;
    db.client.batch_execute(app::ORDERS_TABLE).await.unwrap();
    let first = app::place_order(&mut db.client, "checkout-dave", "dave", 700)
        .await
        .unwrap();
    let retry = app::place_order(&mut db.client, "checkout-dave", "dave", 700)
        .await
        .unwrap();
    assert!(first.new && !retry.new);
    assert_eq!(
        (retry.order_id, &retry.event_id),
        (first.order_id, &first.event_id)
    );

    // Concurrent tries of one new request: one order, one event.
    let tries = (0..4).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            app::place_order(&mut client, "checkout-erin", "erin", 900)
                .await
                .unwrap()
        })
    });
    let placed: Vec<app::Placed> = joined(tries).await;
    assert_eq!(placed.iter().filter(|p| p.new).count(), 1, "{placed:?}");
    assert!(placed.iter().all(|p| p.order_id == placed[0].order_id));

    let orders = count(&db.client, "SELECT count(*) FROM orders").await;
    let events = count(&db.client, "SELECT count(*) FROM outbox.messages").await;
    assert_eq!((orders, events), (2, 2), "one order and one event per key");
}

async fn joined<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

/// The SQL string literals of docs/clients.md's `lang` blocks, with
/// psycopg's `%s` placeholders numbered as PostgreSQL's `$n`.
fn client_statements(lang: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(repo_path("docs/clients.md")).unwrap();
    let mut statements = Vec::new();
    for block in doc.split(&format!("```{lang}\n")).skip(1) {
        let code = block.split("```").next().unwrap();
        for literal in code.split('"').skip(1).step_by(2) {
            if literal.starts_with("INSERT INTO") || literal.starts_with("SELECT") {
                let mut numbered = String::new();
                for (n, part) in literal.split("%s").enumerate() {
                    if n > 0 {
                        numbered.push_str(&format!("${n}"));
                    }
                    numbered.push_str(part);
                }
                statements.push(numbered);
            }
        }
    }
    statements
}

#[tokio::test]
async fn client_snippets_in_the_docs_fit_the_schema() {
    let db = fresh_db().await;
    db.client.batch_execute(app::ORDERS_TABLE).await.unwrap();
    let python = client_statements("python");
    let node = client_statements("js");
    assert_eq!(python.len(), 2, "{python:?}");
    assert_eq!(
        python, node,
        "the Python and Node snippets send the same SQL"
    );
    for statement in &python {
        let prepared = db
            .client
            .prepare(statement)
            .await
            .unwrap_or_else(|e| panic!("docs/clients.md: {statement}\n{e}"));
        let placeholders = statement.matches('$').count();
        assert_eq!(prepared.params().len(), placeholders, "{statement}");
    }
    let doc = std::fs::read_to_string(repo_path("docs/clients.md")).unwrap();
    for block in doc.split("```sql\n").skip(1) {
        let query = block.split("```").next().unwrap();
        db.client
            .query(query.trim().trim_end_matches(';'), &[])
            .await
            .unwrap_or_else(|e| panic!("docs/clients.md: {query}\n{e}"));
    }
}
