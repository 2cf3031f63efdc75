//! `outboxd adopt` and `outboxd unadopt`, run as a user would.

use std::process::Output;

use outboxd::signature::Secret;

use super::*;

async fn outboxd(db: &TestDb, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("running outboxd")
}

/// `outboxd adopt events` with the table's columns, and `extra`.
async fn adopt_command(db: &TestDb, extra: &[&str]) -> Output {
    let columns = [
        "--event-id",
        "uid",
        "--event-type",
        "kind",
        "--payload",
        "body",
    ];
    let args: Vec<&str> = ["adopt", "events"]
        .iter()
        .chain(&columns)
        .chain(extra)
        .copied()
        .collect();
    outboxd(db, &args).await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn adopt_command_adopts_backfills_once_and_unadopts() {
    let db = fresh_db().await;
    db.client
        .batch_execute(
            "CREATE TABLE events (uid uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                                  kind text NOT NULL, body jsonb NOT NULL, at timestamptz NOT NULL);
             INSERT INTO events (kind, body, at)
             SELECT 'old.event', jsonb_build_object('i', i), now() - interval '1 minute' * i
             FROM generate_series(1, 3) i;",
        )
        .await
        .unwrap();
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "e", &receiver.url(), None, &secret).await;

    let no_timestamp = adopt_command(&db, &["--backfill-since", "2h"]).await;
    assert!(!no_timestamp.status.success());
    assert_eq!(
        text(&no_timestamp.stderr).trim(),
        "error: --backfill-since needs the column that says when a row was written: add --timestamp COLUMN"
    );
    let backfill = [
        "--timestamp",
        "at",
        "--backfill-since",
        "2h",
        "--batch-size",
        "2",
    ];
    let first = adopt_command(&db, &backfill).await;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let out = text(&first.stdout);
    assert!(
        out.starts_with("adopted events: event_id <- uid, event_type <- kind, payload <- body, timestamp <- at\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "backfill: 3 rows of events written before the adoption, 3 sent now, 0 sent before"
        ),
        "{out}"
    );
    let again = adopt_command(&db, &backfill).await;
    assert!(
        text(&again.stdout).contains(
            "backfill: 3 rows of events written before the adoption, 0 sent now, 3 sent before"
        ),
        "{}",
        text(&again.stdout)
    );

    let sidecar = spawn(config(&db));
    db.client
        .execute(
            "INSERT INTO events (kind, body, at) VALUES ('new.event', '{}', now())",
            &[],
        )
        .await
        .unwrap();
    assert!(receiver.wait_until(WAIT, |r| r.len() == 4).await);
    sidecar.stop().await;
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.verified == Some(Ok(())))
    );

    let defaults = outboxd(&db, &["adopt", "events"]).await;
    assert!(!defaults.status.success());
    let error = text(&defaults.stderr);
    assert_eq!(error.lines().count(), 1, "one clear line: {error}");
    assert!(
        error.starts_with(
            r#"error: outbox.adopt: public.events has no column "id" (mapping key "event_id")"#
        ),
        "{error}"
    );
    let removed = outboxd(&db, &["unadopt", "events"]).await;
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(text(&removed.stdout).starts_with("events is no longer adopted"));
    let twice = outboxd(&db, &["unadopt", "events"]).await;
    assert_eq!(text(&twice.stderr).trim(), "error: events is not adopted");
    let missing = outboxd(&db, &["unadopt", "nope"]).await;
    assert_eq!(
        text(&missing.stderr).trim(),
        r#"error: relation "nope" does not exist"#
    );
}
