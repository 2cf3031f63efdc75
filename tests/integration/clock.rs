//! `webhook-timestamp` follows the database's clock, not the sidecar's: the
//! real `outboxd` binary runs with its clock set three hours back
//! (libfaketime), and a receiver with the default five-minute tolerance
//! still accepts every webhook.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use outboxd::signature::{Secret, Verifier};

use crate::common::*;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

#[tokio::test]
async fn a_sidecar_whose_clock_is_hours_off_signs_timestamps_receivers_accept() {
    if !std::path::Path::new(LIBFAKETIME).is_file() {
        eprintln!("SKIPPED: no libfaketime at {LIBFAKETIME} (Debian: apt-get install faketime)");
        return;
    }
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), |_| Reply::ok())
        .await
        .unwrap();
    add_endpoint(&db.client, "ep", &receiver.url(), None, &secret).await;
    insert_message(&db.client, "m1", "t", "{}").await;

    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("OUTBOXD_ALLOW_NETWORKS", "127.0.0.1")
        .env("OUTBOXD_NO_ADMIN", "true")
        .env("OUTBOXD_LOG_FORMAT", "json")
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", "-3h")
        // Timers (the monotonic clock) run true; only the wall clock is off.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let delivered = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    let _ = sidecar.kill();
    let output = sidecar.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(delivered, "{logs}");
    assert!(
        logs.contains("clock"),
        "the skew is still reported at start: {logs}"
    );
    let received = &receiver.received()[0];
    assert!(
        matches!(received.verified, Some(Ok(()))),
        "accepted by a receiver with the default tolerance: {:?}",
        received.verified
    );
    let stamp: u64 = received
        .header("webhook-timestamp")
        .unwrap()
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(stamp) < Duration::from_secs(60).as_secs(),
        "webhook-timestamp {stamp} is the database's now ({now}), not the sidecar's (3 h earlier)"
    );
}
