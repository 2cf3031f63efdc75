//! TLS: certificates are verified; an endpoint may trust its own CA and
//! present a client certificate; the default client uses the system roots.

use std::process::{Command, Stdio};

use outboxd::signature::Secret;

use crate::common::tls::{TestCa, TlsReceiver};
use crate::common::*;

async fn add_tls_endpoint(
    db: &TestDb,
    id: &str,
    url: &str,
    ca: Option<&str>,
    client: Option<(&str, &str)>,
) {
    db.client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets, ca_pem, client_cert_pem, client_key_pem)
             VALUES ($1, $2, ARRAY[$3], $4, $5, $6)",
            &[
                &id,
                &url,
                &Secret::generate().to_whsec(),
                &ca,
                &client.map(|c| c.0),
                &client.map(|c| c.1),
            ],
        )
        .await
        .unwrap();
}

async fn outcome(db: &TestDb, endpoint: &str) -> (String, Option<String>) {
    let row = db
        .client
        .query_one(
            "SELECT status, last_error FROM outbox.deliveries WHERE endpoint_id = $1",
            &[&endpoint],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn untrusted_certificates_fail_clearly_unless_the_endpoint_trusts_its_ca() {
    let db = fresh_db().await;
    let ca = TestCa::new("private CA");
    let server = TlsReceiver::start(&ca.issue(&["localhost", "127.0.0.1"]), None).await;
    add_tls_endpoint(&db, "plain", &server.url("localhost"), None, None).await;
    add_tls_endpoint(
        &db,
        "pinned",
        &server.url("127.0.0.1"),
        Some(&ca.cert_pem()),
        None,
    )
    .await;
    // Trusting another CA does not help.
    let other = TestCa::new("unrelated CA");
    add_tls_endpoint(
        &db,
        "wrong-ca",
        &server.url("localhost"),
        Some(&other.cert_pem()),
        None,
    )
    .await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "m", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(outcome(&db, "pinned").await, ("delivered".into(), None));
    assert_eq!(server.requests(), 1, "only the pinned endpoint got through");
    for endpoint in ["plain", "wrong-ca"] {
        let (status, error) = outcome(&db, endpoint).await;
        assert_eq!(status, "dead", "retried, then dead");
        let error = error.unwrap();
        assert_eq!(
            error,
            "TLS: the server's certificate is not trusted (UnknownIssuer); \
             for a private CA set the endpoint's ca_pem",
            "{endpoint}"
        );
    }
}

#[tokio::test]
async fn mutual_tls_presents_the_endpoints_client_certificate() {
    let db = fresh_db().await;
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let server = TlsReceiver::start(&server_ca.issue(&["localhost"]), Some(&client_ca)).await;
    let identity = client_ca.issue(&["outboxd.test"]);
    let url = server.url("localhost");
    let ca = server_ca.cert_pem();
    add_tls_endpoint(
        &db,
        "mtls",
        &url,
        Some(&ca),
        Some((&identity.cert_pem, &identity.key_pem)),
    )
    .await;
    add_tls_endpoint(&db, "anonymous", &url, Some(&ca), None).await;
    let stranger = TestCa::new("stranger CA").issue(&["outboxd.test"]);
    add_tls_endpoint(
        &db,
        "stranger",
        &url,
        Some(&ca),
        Some((&stranger.cert_pem, &stranger.key_pem)),
    )
    .await;
    let sidecar = spawn(config(&db));
    insert_message(&db.client, "m", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(outcome(&db, "mtls").await, ("delivered".into(), None));
    assert_eq!(server.requests(), 1);
    assert_eq!(
        server.client_certs(),
        [true],
        "the one completed handshake had a client certificate"
    );
    for (endpoint, expected) in [
        (
            "anonymous",
            "TLS: the server requires a client certificate \
             (set the endpoint's client_cert_pem and client_key_pem)",
        ),
        (
            "stranger",
            "TLS: the server refused the handshake (alert UnknownCA)",
        ),
    ] {
        let (status, error) = outcome(&db, endpoint).await;
        assert_eq!(status, "dead", "{endpoint}: {error:?}");
        assert_eq!(error.as_deref(), Some(expected), "{endpoint}");
    }
}

/// The real binary, with the system trust store pointed at a test CA the
/// standard way (SSL_CERT_FILE), delivers to an endpoint without `ca_pem`.
#[tokio::test]
async fn the_default_client_trusts_the_system_roots() {
    let db = fresh_db().await;
    let ca = TestCa::new("system CA");
    let server = TlsReceiver::start(&ca.issue(&["localhost"]), None).await;
    add_tls_endpoint(&db, "e", &server.url("localhost"), None, None).await;
    let dir = std::env::temp_dir().join(format!("outboxd-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let roots = dir.join("roots.pem");
    std::fs::write(&roots, ca.cert_pem()).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args([
            "run",
            "--database-url",
            &db.url,
            "--allow-network",
            "127.0.0.0/8",
        ])
        .args([
            "--poll-interval",
            "200ms",
            "--retry-schedule",
            "0s,100ms,100ms",
        ])
        .env("SSL_CERT_FILE", &roots)
        .env_remove("SSL_CERT_DIR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    insert_message(&db.client, "m", "t", "{}").await;
    let settled = wait_settled(&db.client, WAIT).await;
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(settled);
    assert_eq!(outcome(&db, "e").await, ("delivered".into(), None));
    assert_eq!(server.requests(), 1);
}
