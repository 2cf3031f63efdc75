//! `outboxd migrate`: idempotent, safe concurrently; `run` refuses an
//! unmigrated database with a clear message.

use outboxd::db::migrate::{self, MIGRATIONS};
use outboxd::sidecar::{self, SidecarError};
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test]
async fn migrating_twice_changes_nothing_the_second_time() {
    let mut db = empty_db().await;
    let first = migrate::run(&mut db.client).await.unwrap();
    assert_eq!(first.len(), MIGRATIONS.len());
    let second = migrate::run(&mut db.client).await.unwrap();
    assert!(second.is_empty());
}

#[tokio::test]
async fn concurrent_migrations_apply_each_file_once() {
    let db = empty_db().await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut client = db.connect().await;
        runs.push(tokio::spawn(async move {
            migrate::run(&mut client).await.unwrap()
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap());
    }
    assert_eq!(applied.len(), MIGRATIONS.len(), "{applied:?}");
    let recorded: i64 = count(&db.client, "SELECT count(*) FROM outbox.schema_migrations").await;
    assert_eq!(recorded as usize, MIGRATIONS.len());
}

#[tokio::test]
async fn run_refuses_an_unmigrated_database_and_can_migrate_it() {
    let db = empty_db().await;
    let shutdown = CancellationToken::new();
    let error = sidecar::run(config(&db), false, shutdown.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(error, SidecarError::NotMigrated { found: 0, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("outboxd migrate"));

    shutdown.cancel();
    sidecar::run(config(&db), true, shutdown).await.unwrap();
    assert_eq!(
        migrate::schema_version(&db.client).await.unwrap(),
        MIGRATIONS.last().unwrap().version
    );
}
