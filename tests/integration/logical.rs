//! Logical wake-up: a temporary replication slot per sidecar, polled, so
//! producers need no NOTIFY.

use std::time::{Duration, Instant};

use outboxd::config::Wakeup;
use outboxd::sidecar::{self, SidecarError};
use outboxd::signature::Secret;
use outboxd::wakeup::logical::{self, LogicalError};
use tokio_util::sync::CancellationToken;

use crate::common::*;

fn logical_config(db: &TestDb, worker: &str) -> outboxd::config::Config {
    let mut cfg = config(db);
    cfg.wakeup = Wakeup::Logical;
    cfg.poll_interval = Duration::from_secs(30);
    cfg.worker_id = worker.to_owned();
    cfg
}

async fn slots(db: &TestDb) -> Vec<(String, bool, bool)> {
    db.client
        .query(
            "SELECT slot_name::text, temporary, active FROM pg_replication_slots
             WHERE database = current_database() ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn logical_wakeup_delivers_in_milliseconds_without_notify() {
    let db = fresh_logical_db().await;
    let enabled: bool = db
        .client
        .query_one("SELECT outbox.set_notify(false)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!enabled);
    let trigger_state: i8 = db
        .client
        .query_one(
            "SELECT tgenabled::\"char\" FROM pg_trigger WHERE tgname = 'messages_notify'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(trigger_state as u8, b'D', "the NOTIFY trigger is off");
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(logical_config(&db, "latency"));
    insert_message(&db.client, "warm-up", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == 1).await);
    for i in 0..5 {
        let started = Instant::now();
        insert_message(&db.client, &format!("fast-{i}"), "t", "{}").await;
        assert!(receiver.wait_until(WAIT, |r| r.len() == i + 2).await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "took {took:?} with a 30 s poll and no NOTIFY"
        );
    }
    sidecar.stop().await;
    db.client
        .query_one("SELECT outbox.set_notify(true)", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn replicas_hold_their_own_temporary_slots_which_vanish_on_exit() {
    let db = fresh_logical_db().await;
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecars = [
        spawn(logical_config(&db, "Replica-1")),
        spawn(logical_config(&db, "replica.2")),
    ];
    assert!(
        eventually(WAIT, || async {
            slots(&db).await.iter().filter(|s| s.2).count() == 2
        })
        .await
    );
    assert_eq!(
        slots(&db).await,
        [
            ("outboxd_replica_1".to_owned(), true, true),
            ("outboxd_replica_2".to_owned(), true, true)
        ]
    );
    db.client
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload)
             SELECT 'm' || g, 't', '{}' FROM generate_series(1, 300) g",
            &[],
        )
        .await
        .unwrap();
    assert!(wait_settled(&db.client, WAIT).await);
    for sidecar in sidecars {
        sidecar.stop().await;
    }
    assert_eq!(receiver.count(), 300, "each message once");
    assert!(
        eventually(WAIT, || async { slots(&db).await.is_empty() }).await,
        "temporary slots are gone: {:?}",
        slots(&db).await
    );
}

#[tokio::test]
async fn losing_the_slot_connection_loses_nothing() {
    let db = fresh_logical_db().await;
    db.client
        .query_one("SELECT outbox.set_notify(false)", &[])
        .await
        .unwrap();
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &Secret::generate()).await;
    let sidecar = spawn(logical_config(&db, "victim"));
    let active_pid = || async {
        db.client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'outboxd_victim' AND active",
                &[],
            )
            .await
            .unwrap()
            .and_then(|r| r.get::<_, Option<i32>>(0))
    };
    for round in 0..3 {
        assert!(
            eventually(WAIT, || async { active_pid().await.is_some() }).await,
            "slot held"
        );
        let pid = active_pid().await.unwrap();
        db.client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload)
                 SELECT 'r' || $1::int || '-' || g, 't', '{}' FROM generate_series(1, 50) g",
                &[&round],
            )
            .await
            .unwrap();
        db.client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        db.client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload)
                 SELECT 's' || $1::int || '-' || g, 't', '{}' FROM generate_series(1, 50) g",
                &[&round],
            )
            .await
            .unwrap();
        // Delivered by the recreated slot's first nudge, not the 30 s poll.
        assert!(
            receiver
                .wait_until(WAIT, |r| r.len() == 100 * (round as usize + 1))
                .await
        );
    }
    sidecar.stop().await;
    assert_eq!(count_status(&db.client, "delivered").await, 300);
    db.client
        .query_one("SELECT outbox.set_notify(true)", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn wal_level_replica_is_refused_with_a_clear_error() {
    let db = fresh_db().await;
    let mut cfg = config(&db);
    cfg.wakeup = Wakeup::Logical;
    let error = sidecar::run(cfg, false, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SidecarError::Logical(LogicalError::WalLevel(level)) if level == "replica"),
        "{error}"
    );
    assert!(error.to_string().contains("wal_level = logical"), "{error}");
}

#[tokio::test]
async fn missing_privilege_and_publication_are_named() {
    let db = fresh_logical_db().await;
    let role = format!("plain_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))
        .await
        .unwrap();
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let plain = connect(&url).await;
    let error = logical::check(&plain).await.unwrap_err();
    assert!(
        matches!(&error, LogicalError::Privilege(r) if *r == role),
        "{error}"
    );
    assert!(error.to_string().contains("REPLICATION"), "{error}");
    drop(plain);

    db.client
        .batch_execute("DROP PUBLICATION outboxd_messages")
        .await
        .unwrap();
    let error = logical::check(&db.client).await.unwrap_err();
    assert!(matches!(error, LogicalError::NoPublication), "{error}");
    db.client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}
