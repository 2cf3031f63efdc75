//! The `outboxd` binary's operator commands, run as a user would.

use std::process::Output;

use outboxd::signature::{self, Secret};

use crate::common::*;

async fn outboxd(db: &TestDb, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("running outboxd")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn endpoint_commands_manage_endpoints_without_showing_secrets() {
    let db = fresh_db().await;
    let added = outboxd(
        &db,
        &[
            "endpoint",
            "add",
            "billing",
            "http://127.0.0.1:9/hook",
            "--event-type",
            "order.paid",
        ],
    )
    .await;
    assert!(added.status.success(), "{}", stderr(&added));
    let secret = stdout(&added)
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_owned();
    Secret::parse(&secret).expect("a valid generated secret");
    let stored: Vec<String> = db
        .client
        .query_one("SELECT secrets FROM outbox.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, std::slice::from_ref(&secret));

    let list = outboxd(&db, &["endpoint", "list"]).await;
    assert!(list.status.success());
    assert!(
        stdout(&list).contains("billing") && stdout(&list).contains("order.paid"),
        "{}",
        stdout(&list)
    );
    assert!(
        !stdout(&list).contains(&secret[6..]),
        "list never shows secrets"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(
        &outboxd(&db, &["endpoint", "list", "--json"]).await,
    ))
    .unwrap();
    assert_eq!(json[0]["id"], "billing");
    assert_eq!(json[0]["secrets"], 1);

    let duplicate = outboxd(&db, &["endpoint", "add", "billing", NOWHERE]).await;
    assert!(!duplicate.status.success());
    assert_eq!(
        stderr(&duplicate).trim(),
        "error: an endpoint with this id already exists"
    );

    let bad_url = outboxd(&db, &["endpoint", "add", "x", "ftp://example.com/"]).await;
    assert!(!bad_url.status.success());
    assert!(
        stderr(&bad_url).contains("only http and https are allowed"),
        "{}",
        stderr(&bad_url)
    );
    assert_eq!(
        stderr(&bad_url).lines().count(),
        1,
        "one clear line: {}",
        stderr(&bad_url)
    );

    let disabled = outboxd(
        &db,
        &[
            "endpoint",
            "disable",
            "billing",
            "--reason",
            "receiver migration",
        ],
    )
    .await;
    assert!(disabled.status.success());
    let status: serde_json::Value =
        serde_json::from_str(&stdout(&outboxd(&db, &["status", "--json"]).await)).unwrap();
    assert_eq!(status[0]["enabled"], false);
    assert_eq!(status[0]["disabled_reason"], "receiver migration");
    let table = stdout(&outboxd(&db, &["status"]).await);
    assert!(table.contains("DISABLED: receiver migration"), "{table}");
    assert!(
        outboxd(&db, &["endpoint", "enable", "billing"])
            .await
            .status
            .success()
    );
    let missing = outboxd(&db, &["endpoint", "enable", "nope"]).await;
    assert_eq!(stderr(&missing).trim(), "error: no endpoint \"nope\"");

    let rotated = outboxd(&db, &["endpoint", "rotate-secret", "billing"]).await;
    assert!(rotated.status.success());
    let new_secret = stdout(&rotated)
        .lines()
        .find(|l| l.starts_with("whsec_"))
        .unwrap()
        .to_owned();
    let stored: Vec<String> = db
        .client
        .query_one("SELECT secrets FROM outbox.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, [new_secret.clone(), secret], "new first, old kept");
    assert!(
        outboxd(&db, &["endpoint", "rotate-secret", "billing", "--drop-old"])
            .await
            .status
            .success()
    );
    let stored: Vec<String> = db
        .client
        .query_one("SELECT secrets FROM outbox.endpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, [new_secret]);
}

#[tokio::test]
async fn endpoint_list_hides_url_credentials_and_query_tokens() {
    let db = fresh_db().await;
    let added = outboxd(
        &db,
        &[
            "endpoint",
            "add",
            "crm",
            "https://hook-user:pa55-word@hooks.example.com:8443/in/crm?token=tok-9f8e7d&v=2#frag-x",
        ],
    )
    .await;
    assert!(added.status.success(), "{}", stderr(&added));
    add_endpoint(
        &db.client,
        "plain",
        "http://[2606:4700::1111]/hook",
        None,
        &Secret::generate(),
    )
    .await;
    let shown = "https://***@hooks.example.com:8443/in/crm?***";

    let table = stdout(&outboxd(&db, &["endpoint", "list"]).await);
    let json = stdout(&outboxd(&db, &["endpoint", "list", "--json"]).await);
    for (what, text) in [
        ("add", stdout(&added)),
        ("list", table.clone()),
        ("list --json", json.clone()),
    ] {
        for secret in ["hook-user", "pa55-word", "tok-9f8e7d", "v=2", "frag-x"] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    }
    assert!(table.contains(shown), "{table}");
    assert!(table.contains("http://[2606:4700::1111]/hook"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["id"], "crm");
    assert_eq!(json[0]["url"], shown);
    assert_eq!(json[1]["url"], "http://[2606:4700::1111]/hook");
}

#[tokio::test]
async fn endpoint_test_goes_through_the_running_sidecar() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "t", &receiver.url(), None, &secret).await;
    let sidecar = spawn(config(&db));
    let output = outboxd(&db, &["endpoint", "test", "t", "--wait", "20s"]).await;
    sidecar.stop().await;
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("HTTP 200 in"),
        "{}",
        stdout(&output)
    );
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].verified, Some(Ok(())));
    assert_eq!(got[0].json().unwrap()["type"], "outboxd.test");
}

#[tokio::test]
async fn endpoint_test_without_a_sidecar_says_so() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "t").await;
    let output = outboxd(&db, &["endpoint", "test", "t", "--wait", "300ms"]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is `outboxd run` running"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn replay_command_replays_dead_deliveries() {
    let db = fresh_db().await;
    add_unreachable_endpoint(&db.client, "r").await;
    insert_message(&db.client, "d1", "t", "{}").await;
    insert_message(&db.client, "d2", "t", "{}").await;
    route(&db.client).await;
    db.client
        .execute(
            "UPDATE outbox.deliveries SET status = 'dead', next_attempt_at = NULL, attempts = 3",
            &[],
        )
        .await
        .unwrap();
    let id: i64 = db
        .client
        .query_one("SELECT min(id) FROM outbox.deliveries", &[])
        .await
        .unwrap()
        .get(0);

    let one = outboxd(&db, &["replay", "--delivery", &id.to_string()]).await;
    assert!(one.status.success(), "{}", stderr(&one));
    let again = outboxd(&db, &["replay", "--delivery", &id.to_string()]).await;
    assert!(!again.status.success());
    assert!(stderr(&again).contains("is not dead"), "{}", stderr(&again));
    let rest = outboxd(&db, &["replay", "--endpoint", "r", "--since", "1h"]).await;
    assert_eq!(
        stdout(&rest).trim(),
        "1 dead deliveries of endpoint r are pending again"
    );
    assert_eq!(count_status(&db.client, "pending").await, 2);
    let nothing = outboxd(&db, &["replay"]).await;
    assert!(!nothing.status.success(), "a target is required");
}

#[tokio::test]
async fn verify_command_says_valid_or_why_not() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = std::env::temp_dir().join(format!("outboxd-verify-{}.json", std::process::id()));
    std::fs::write(&body, b"{\"a\":1}").unwrap();
    let header = signature::sign(std::slice::from_ref(&secret), "msg_1", now, b"{\"a\":1}");
    let (whsec, ts, path) = (
        secret.to_whsec(),
        now.to_string(),
        body.display().to_string(),
    );
    let args = |secret: &str, ts: &str| {
        [
            "verify",
            "--secret",
            secret,
            "--id",
            "msg_1",
            "--timestamp",
            ts,
            "--signature",
            &header,
            "--body",
            &path,
        ]
        .map(str::to_owned)
    };
    let run = |args: [String; 11]| {
        let db = &db;
        async move { outboxd(db, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let valid = run(args(&whsec, &ts)).await;
    assert_eq!(stdout(&valid).trim(), "valid");
    let wrong = run(args(&Secret::generate().to_whsec(), &ts)).await;
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("no signature matches"),
        "{}",
        stderr(&wrong)
    );
    let stale = run(args(&whsec, &(now - 3600).to_string())).await;
    assert!(stderr(&stale).contains("in the past"), "{}", stderr(&stale));
    std::fs::remove_file(body).unwrap();
}

#[tokio::test]
async fn print_config_shows_settings_without_the_password() {
    let db = fresh_db().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["run", "--print-config", "--retry-schedule", "1s,2s"])
        .env(
            "DATABASE_URL",
            "postgres://app:s3cr3t-pw@db.internal:5432/shop",
        )
        .output()
        .await
        .unwrap();
    drop(db);
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    assert!(
        text.contains("database_url = postgres://app@db.internal/shop"),
        "{text}"
    );
    assert!(text.contains("retry_schedule = 1s,2s"), "{text}");
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["run", "--print-config", "--lease", "5s"])
        .env("DATABASE_URL", "postgres://x@y/z")
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--lease (5s) must exceed --request-timeout"),
        "{}",
        stderr(&bad)
    );
}

#[tokio::test]
async fn tenant_flags_scope_endpoints_status_and_replay() {
    let db = fresh_db().await;
    for (id, tenant) in [("acme-hooks", "acme"), ("globex-hooks", "globex")] {
        let added = outboxd(
            &db,
            &[
                "endpoint",
                "add",
                id,
                "https://hooks.example.com/in",
                "--tenant",
                tenant,
            ],
        )
        .await;
        assert!(added.status.success(), "{}", stderr(&added));
        assert!(stdout(&added).contains(&format!("for tenant {tenant}")));
    }
    let status = outboxd(&db, &["status", "--json", "--tenant", "acme"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let shown: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ids: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme-hooks"]);
    assert_eq!(shown[0]["tenant_id"], "acme");

    db.client
        .batch_execute(
            "INSERT INTO outbox.messages (tenant_id, event_type, payload) VALUES ('acme', 't', '{}');
             SELECT outbox.route(10);
             UPDATE outbox.deliveries SET status = 'dead', next_attempt_at = NULL;",
        )
        .await
        .unwrap();
    let id: i64 = db
        .client
        .query_one("SELECT id FROM outbox.deliveries", &[])
        .await
        .unwrap()
        .get(0);
    let id = id.to_string();
    let refused = outboxd(&db, &["replay", "--delivery", &id, "--tenant", "globex"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("belongs to tenant acme, not globex"),
        "{}",
        stderr(&refused)
    );
    let refused = outboxd(
        &db,
        &[
            "replay",
            "--endpoint",
            "acme-hooks",
            "--since",
            "1h",
            "--tenant",
            "globex",
        ],
    )
    .await;
    assert!(!refused.status.success());
    assert_eq!(
        count_status(&db.client, "dead").await,
        1,
        "nothing replayed"
    );
    let replayed = outboxd(&db, &["replay", "--delivery", &id, "--tenant", "acme"]).await;
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert_eq!(count_status(&db.client, "pending").await, 1);
}
