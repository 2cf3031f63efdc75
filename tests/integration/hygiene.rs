//! Secret hygiene: a full delivery cycle with every kind of failure, run by
//! the real binary at `debug` log level (outboxd's and its libraries'
//! logs), must not print a single secret.

use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use outboxd::signature::{Secret, ed25519};

use crate::common::tls::TestCa;
use crate::common::*;

const BIN: &str = env!("CARGO_BIN_EXE_outboxd");

/// Stops the child with SIGTERM (a graceful shutdown that flushes logs) and
/// returns everything it printed.
fn stop(child: Child) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "outboxd exits 0 on SIGTERM");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn no_secret_appears_in_debug_logs_of_a_failing_delivery_cycle() {
    let db = fresh_db().await;
    let hmac = Secret::generate();
    let key_pair = ed25519::SecretKey::generate().unwrap();
    let bearer = format!(
        "Bearer tok-{}",
        BASE64.encode(Secret::generate().to_whsec())
    );
    let url_token = format!("urltoken{}", std::process::id());
    let client = TestCa::new("client CA").issue(&["outboxd.test"]);
    let db_password = format!("pw-{}", BASE64.encode(Secret::generate().to_whsec()));

    let flaky = Receiver::start(None, |r| {
        if r.nth == 1 {
            Reply::status(500).body("no")
        } else {
            Reply::ok()
        }
    })
    .await
    .unwrap();
    let gone = Receiver::start(None, |_| Reply::status(410)).await.unwrap();
    let insert = "INSERT INTO outbox.endpoints
                  (id, url, secrets, headers, ca_pem, client_cert_pem, client_key_pem)
                  VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7)";
    let secrets = vec![hmac.to_whsec(), key_pair.to_whsk()];
    let headers = serde_json::json!({ "authorization": bearer }).to_string();
    let none: Option<&str> = None;
    let flaky_url = format!("{}?token={url_token}", flaky.url());
    for (id, url, tls) in [
        ("flaky", flaky_url.as_str(), false),
        ("gone", &gone.url(), false),
        ("refused-port", "http://127.0.0.1:9/hook", false),
        ("ssrf", "http://127.0.0.2:9/hook", false),
        ("tls", "https://localhost:9/hook", true),
    ] {
        let (ca, cert, key) = if tls {
            (
                Some(client.cert_pem.as_str()),
                Some(client.cert_pem.as_str()),
                Some(client.key_pem.as_str()),
            )
        } else {
            (none, none, none)
        };
        db.client
            .execute(insert, &[&id, &url, &secrets, &headers, &ca, &cert, &key])
            .await
            .unwrap();
    }
    // The sidecar logs in with a password.
    let role = format!("hygiene_{}", std::process::id());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD '{db_password}' IN ROLE outbox_sidecar"
        ))
        .await
        .unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&db_password)).unwrap();

    let child = Command::new(BIN)
        .args(["run", "--allow-network", "127.0.0.1/32"])
        .args(["--poll-interval", "200ms", "--retry-schedule", "0s,50ms"])
        .env("DATABASE_URL", url.as_str())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    insert_message(&db.client, "m", "t", r#"{"order": 1}"#).await;
    let settled = eventually(WAIT, || async {
        let open: i64 = db
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM outbox.deliveries d JOIN outbox.endpoints e ON e.id = d.endpoint_id
                         WHERE d.status IN ('pending', 'in_flight') AND e.enabled)
                      + (SELECT count(*) FROM outbox.messages WHERE NOT routed)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        open == 0
    })
    .await;
    let logs = stop(child);
    assert!(settled, "every delivery reached an outcome:\n{logs}");

    let outcomes: Vec<(String, String)> = db
        .client
        .query(
            "SELECT endpoint_id, status FROM outbox.deliveries ORDER BY endpoint_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected = [
        ("flaky", "delivered"),
        ("gone", "pending"),
        ("refused-port", "dead"),
        ("ssrf", "dead"),
        ("tls", "dead"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(outcomes, expected);
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(
        logs.contains("delivery attempt failed"),
        "failures were logged"
    );

    let whsec = hmac.to_whsec();
    let whsk = key_pair.to_whsk();
    let key_body: String = client
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut needles = vec![
        ("HMAC secret", whsec["whsec_".len()..].to_owned()),
        ("ed25519 secret key", whsk["whsk_".len()..].to_owned()),
        (
            "ed25519 seed",
            BASE64.encode(&BASE64.decode(&whsk[5..]).unwrap()[..32]),
        ),
        ("authorization header", bearer.clone()),
        ("database password", db_password.clone()),
        ("URL query token", url_token.clone()),
    ];
    // Every 40-character slice of the client key, in case a line is printed.
    for chunk in key_body.as_bytes().chunks(40) {
        needles.push(("client key", String::from_utf8_lossy(chunk).into_owned()));
    }
    for (what, needle) in needles {
        assert!(!logs.contains(&needle), "the {what} appears in the logs");
    }
    assert!(
        !logs.contains("with parameters"),
        "statement parameters (secrets, for admin commands) are not logged at debug"
    );
}
