//! The real `outboxd` binary: `verify` for receivers, `keygen`, and how
//! security settings are parsed from the environment.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use outboxd::signature::{Secret, SigningKey, sign, sign_with};

const BIN: &str = env!("CARGO_BIN_EXE_outboxd");

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs `outboxd verify` with `body` on stdin.
fn verify(keys: &[&str], ts: i64, signature: &str, body: &[u8], extra: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.arg("verify").env_remove("OUTBOXD_VERIFY_SECRETS");
    for key in keys {
        command.args(["--secret", key]);
    }
    command
        .args(["--id", "msg_1", "--timestamp", &ts.to_string()])
        .args(["--signature", signature])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_valid(output: &Output) {
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).trim(), "valid");
}

fn assert_invalid(output: &Output, reason: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(reason), "{stderr:?} should say {reason:?}");
}

fn assert_usage(output: &Output, reason: &str) {
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(reason), "{stderr:?} should say {reason:?}");
}

#[test]
fn verify_accepts_good_webhooks_and_rejects_bad_ones() {
    let (old, new) = (Secret::generate(), Secret::generate());
    let (old_text, new_text) = (old.to_whsec(), new.to_whsec());
    let ts = now();
    let body = br#"{"amount": 42}"#;
    let header = sign(std::slice::from_ref(&new), "msg_1", ts, body);

    assert_valid(&verify(&[&new_text], ts, &header, body, &[]));
    // Rotation: the receiver holds both; the sender signed with both.
    assert_valid(&verify(&[&old_text, &new_text], ts, &header, body, &[]));
    let both = sign(&[old.clone(), new.clone()], "msg_1", ts, body);
    assert_valid(&verify(&[&old_text], ts, &both, body, &[]));

    let mismatch = "no signature matches";
    assert_invalid(&verify(&[&old_text], ts, &header, body, &[]), mismatch);
    assert_invalid(
        &verify(&[&new_text], ts, &header, br#"{"amount": 43}"#, &[]),
        mismatch,
    );

    let stale = ts - 600;
    let stale_header = sign(std::slice::from_ref(&new), "msg_1", stale, body);
    assert_invalid(
        &verify(&[&new_text], stale, &stale_header, body, &[]),
        "in the past",
    );
    assert_valid(&verify(
        &[&new_text],
        stale,
        &stale_header,
        body,
        &["--tolerance", "15m"],
    ));
    let future = ts + 600;
    let future_header = sign(std::slice::from_ref(&new), "msg_1", future, body);
    assert_invalid(
        &verify(&[&new_text], future, &future_header, body, &[]),
        "in the future",
    );

    assert_invalid(
        &verify(&[&new_text], ts, "v1,not*base64", body, &[]),
        "has no v1 or v1a signature",
    );
    assert_invalid(
        &verify(&[&new_text], ts, "sha256=abcdef", body, &[]),
        "has no v1 or v1a signature",
    );
}

#[test]
fn verify_reads_the_body_from_a_file_and_checks_its_timestamp_format() {
    let secret = Secret::generate();
    let dir = std::env::temp_dir().join(format!("outboxd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("body.json");
    std::fs::write(&path, b"{}").unwrap();
    let ts = now();
    let header = sign(std::slice::from_ref(&secret), "msg_1", ts, b"{}");
    let output = Command::new(BIN)
        .args(["verify", "--secret", &secret.to_whsec(), "--id", "msg_1"])
        .args(["--timestamp", &ts.to_string(), "--signature", &header])
        .arg("--body")
        .arg(&path)
        .output()
        .unwrap();
    assert_valid(&output);
    let output = Command::new(BIN)
        .args(["verify", "--secret", &secret.to_whsec(), "--id", "msg_1"])
        .args(["--timestamp", "yesterday", "--signature", &header])
        .arg("--body")
        .arg(&path)
        .output()
        .unwrap();
    assert_invalid(&output, "not a unix timestamp");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_key_is_refused_without_echoing_it() {
    // A key that cannot be used is a usage error (2), not a verdict (1).
    let output = verify(&["whsec_hunter2!!"], now(), "v1,AAAA", b"", &[]);
    assert_usage(&output, "--secret #1");
    assert!(!text(&output.stderr).contains("hunter2"));
    let output = verify(&["whpk_aHVudGVyMg=="], now(), "v1a,AAAA", b"", &[]);
    assert_usage(&output, "public key is not whpk_");
    assert!(!text(&output.stderr).contains("aHVudGVyMg"));
}

#[test]
fn keygen_makes_a_pair_whose_public_key_verifies_with_verify() {
    let output = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(output.status.success());
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (secret_key, public_key) = (lines[0], lines[1]);
    assert!(secret_key.starts_with("whsk_") && public_key.starts_with("whpk_"));

    let ts = now();
    let key = SigningKey::parse(secret_key).unwrap();
    let header = sign_with(&[key], "msg_1", ts, b"{}");
    assert!(header.starts_with("v1a,"));
    assert_valid(&verify(&[public_key], ts, &header, b"{}", &[]));
    assert_invalid(
        &verify(&[public_key], ts, &header, b"{ }", &[]),
        "no signature matches",
    );

    // Two runs never give the same key.
    let again = Command::new(BIN).arg("keygen").output().unwrap();
    assert_ne!(text(&again.stdout), stdout);
}

#[test]
fn keygen_hmac_prints_a_32_byte_whsec_secret() {
    let output = Command::new(BIN)
        .args(["keygen", "--hmac"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let secret = text(&output.stdout).trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    Secret::parse(&secret).expect("parses as a secret");
    assert_eq!(secret.len(), "whsec_".len() + 44, "base64 of 32 bytes");
}

#[test]
fn allow_networks_come_comma_separated_from_the_environment() {
    // An invalid entry fails parsing before anything connects, naming it.
    let output = Command::new(BIN)
        .args([
            "run",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .env("OUTBOXD_ALLOW_NETWORKS", "10.0.0.0/8,intranet")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("\"intranet\" is not a CIDR"), "{stderr}");
    let output = Command::new(BIN)
        .args([
            "run",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .args(["--allow-network", "10.0.0.0/33"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
