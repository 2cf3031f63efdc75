//! Behind PgBouncer in transaction mode (`--pooler transaction`): no
//! startup options, no session state, no named statement across
//! transactions; wake-ups through `--listen-database-url` only; `migrate`
//! through the pooler.

use std::collections::HashSet;
use std::time::Duration;

use outboxd::config::{DatabaseUrl, Pooler, Wakeup};
use outboxd::db::Db;
use outboxd::signature::Secret;

use crate::common::pgbouncer::pgbouncer;
use crate::common::*;

async fn rollbacks(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn through_pgbouncer_in_transaction_mode_every_message_is_delivered_once() {
    let Some(pooler) = pgbouncer() else { return };
    let db = fresh_db().await;
    let pooled = pooler.url(&db);

    // The pooler is strict: a direct session's setup (startup options) is
    // refused, as in production.
    let direct_setup = Db::new(&DatabaseUrl::new(pooled.clone()))
        .unwrap()
        .with_pinned_search_path();
    let refused = direct_setup.connect().await.unwrap_err().to_string();
    assert!(
        refused.contains("unsupported startup parameter"),
        "{refused}"
    );

    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "ep", &receiver.url(), None, &secret).await;
    for i in 0..300 {
        // A third keyed: their outcomes take the ordering keys' locks in
        // an explicit transaction.
        let key = (i % 3 == 0).then(|| format!("k{}", i % 7));
        db.client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload, ordering_key)
                 VALUES ($1, 't', '{}', $2)",
                &[&format!("m{i}"), &key],
            )
            .await
            .unwrap();
    }
    let mut cfg = config(&db);
    cfg.database_url = DatabaseUrl::new(pooled);
    cfg.pooler = Pooler::Transaction;
    cfg.async_commit = true;
    assert_eq!(cfg.wakeup, Wakeup::Notify);
    assert_eq!(
        cfg.effective_wakeup(),
        Wakeup::Poll,
        "never LISTEN on a pooled session"
    );
    let sidecar = spawn(cfg);
    assert!(
        wait_settled(&db.client, WAIT * 2).await,
        "everything delivered through the pooler; pgbouncer log:\n{}",
        pooler.log()
    );
    let ids: HashSet<String> = receiver
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 300);
    assert_eq!(count_status(&db.client, "delivered").await, 300);
    assert_eq!(
        count(
            &db.client,
            "SELECT max(attempts)::bigint FROM outbox.deliveries"
        )
        .await,
        1,
        "no attempt failed"
    );
    sidecar.stop().await;

    // Not one statement of the sidecar failed: a named statement missing
    // on another server connection, or a setting that did not hold, would
    // have rolled a transaction back. (Ended backends flush their
    // statistics.)
    db.client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    // A backend leaves pg_stat_activity after flushing its statistics.
    assert!(
        eventually(WAIT, || async {
            count(
                &db.client,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .await
                == 0
        })
        .await
    );
    db.client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let last = rollbacks(&db.client).await;
    assert_eq!(last, 0, "no transaction of the sidecar rolled back");
}

#[tokio::test]
async fn behind_a_pooler_wakeups_come_through_the_direct_listen_url() {
    let Some(pooler) = pgbouncer() else { return };
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "ep", &receiver.url(), None, &secret).await;
    let mut cfg = config(&db);
    cfg.database_url = DatabaseUrl::new(pooler.url(&db));
    cfg.pooler = Pooler::Transaction;
    cfg.listen_database_url = Some(DatabaseUrl::new(db.url.clone()));
    // Only a wake-up can deliver within the test's wait.
    cfg.poll_interval = Duration::from_secs(600);
    assert_eq!(cfg.effective_wakeup(), Wakeup::Notify);
    let sidecar = spawn(cfg);
    // Idle and waiting for NOTIFY (the row producers' trigger looks for).
    assert!(
        eventually(WAIT, || async {
            count(&db.client, "SELECT count(*) FROM outbox.waiting").await == 1
        })
        .await
    );
    insert_message(&db.client, "woken", "t", "{}").await;
    assert!(
        receiver
            .wait_until(Duration::from_secs(10), |r| r.len() == 1)
            .await,
        "delivered on the wake-up, long before the 10-minute poll"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn migrate_works_through_the_pooler() {
    let Some(pooler) = pgbouncer() else { return };
    let db = empty_db().await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("migrate")
            .env("DATABASE_URL", pooler.url(&db))
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied 0001_schema.sql"));
    let again = run();
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout).trim(),
        "outbox schema is up to date"
    );
    let newest = outboxd::db::migrate::MIGRATIONS.last().unwrap().version;
    assert_eq!(
        outboxd::db::migrate::schema_version(&db.client)
            .await
            .unwrap(),
        newest
    );
}

#[tokio::test]
async fn without_pooler_transaction_the_sidecar_stops_at_start_saying_what_to_set() {
    let Some(pooler) = pgbouncer() else { return };
    let db = fresh_db().await;
    let mut cfg = config(&db);
    cfg.database_url = DatabaseUrl::new(pooler.url(&db));
    let ran = tokio::time::timeout(
        Duration::from_secs(20),
        outboxd::sidecar::run(cfg, false, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("fails at once instead of retrying forever");
    let error = ran.unwrap_err().to_string();
    assert!(error.contains("--pooler transaction"), "{error}");
}
