//! TLS to PostgreSQL: libpq's sslmode, sslrootcert, sslcert and sslkey,
//! against a real TLS-only cluster (see `common::tls_postgres`) and the
//! plain test cluster.

use outboxd::config::Wakeup;
use outboxd::signature::Secret;

use crate::common::tls_postgres::{SCRAM_PASSWORD, connect, encrypted, tls_cluster};
use crate::common::*;

/// The error `url` fails with.
async fn refusal(url: &str) -> String {
    match connect(url).await {
        Ok(_) => panic!("connected with {url}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_without_checking_the_certificate() {
    let cluster = tls_cluster();
    // Neither the CA nor the name (127.0.0.1) would pass a check.
    let url = cluster.url_for_host("postgres", "127.0.0.1", "sslmode=require");
    let client = connect(&url).await.unwrap();
    assert!(encrypted(&client).await);
}

#[tokio::test]
async fn without_sslmode_tls_is_used_when_the_server_offers_it() {
    let cluster = tls_cluster();
    let client = connect(&cluster.url("postgres", "")).await.unwrap();
    assert!(encrypted(&client).await, "libpq's default, prefer");
    let refused = refusal(&cluster.url("postgres", "sslmode=disable")).await;
    assert!(
        refused.starts_with("connecting to PostgreSQL with sslmode=disable: ")
            && refused.contains("pg_hba.conf rejects connection")
            // "SSL off" before PostgreSQL 14.
            && (refused.contains("no encryption") || refused.contains("SSL off")),
        "{refused}"
    );
}

#[tokio::test]
async fn verify_full_trusts_sslrootcert_and_checks_the_host_name_that_verify_ca_ignores() {
    let cluster = tls_cluster();
    let ca = format!("sslrootcert={}", cluster.file("ca.pem"));
    let full = connect(&cluster.url("postgres", &format!("sslmode=verify-full&{ca}")))
        .await
        .unwrap();
    assert!(encrypted(&full).await);

    let wrong_name = |mode| cluster.url_for_host("postgres", "127.0.0.1", &format!("{mode}&{ca}"));
    let refused = refusal(&wrong_name("sslmode=verify-full")).await;
    assert!(
        refused.starts_with(
            "connecting to PostgreSQL with sslmode=verify-full: error performing TLS handshake: \
             invalid peer certificate: certificate not valid for name"
        ),
        "{refused}"
    );
    let chain_only = connect(&wrong_name("sslmode=verify-ca")).await.unwrap();
    assert!(encrypted(&chain_only).await);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_is_refused_naming_the_mode() {
    let cluster = tls_cluster();
    let other_ca = format!("sslrootcert={}", cluster.file("other-ca.pem"));
    for mode in ["verify-full", "verify-ca", "require"] {
        // With a root certificate file, require checks the chain too (libpq).
        let refused =
            refusal(&cluster.url("postgres", &format!("sslmode={mode}&{other_ca}"))).await;
        assert_eq!(
            refused,
            format!(
                "connecting to PostgreSQL with sslmode={mode}: error performing TLS handshake: \
                 invalid peer certificate: UnknownIssuer"
            )
        );
    }
    // The system's CAs did not issue the test CA's certificate either.
    let refused = refusal(&cluster.url("postgres", "sslrootcert=system")).await;
    assert!(refused.ends_with("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_says_so() {
    let plain = empty_db().await;
    let ssl: String = plain
        .client
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    if ssl == "on" {
        // Only with OUTBOXD_TEST_DATABASE_URL: the throwaway cluster is plain.
        eprintln!("not checked: the test server has ssl = on");
        return;
    }
    let refused = refusal(&format!("{}?sslmode=require", plain.url)).await;
    assert_eq!(
        refused,
        "connecting to PostgreSQL with sslmode=require: error performing TLS handshake: \
         server does not support TLS"
    );
    // The plain cluster still serves the default (prefer) and disable.
    for url in [plain.url.clone(), format!("{}?sslmode=disable", plain.url)] {
        assert!(!encrypted(&connect(&url).await.unwrap()).await);
    }
}

#[tokio::test]
async fn a_client_certificate_is_shown_from_sslcert_and_sslkey() {
    let cluster = tls_cluster();
    let refused = refusal(&cluster.url("certuser", "sslmode=require")).await;
    assert!(
        refused.contains("connection requires a valid client certificate"),
        "{refused}"
    );
    let identity = format!(
        "sslmode=require&sslcert={}&sslkey={}",
        cluster.file("client.crt"),
        cluster.file("client.key")
    );
    let client = connect(&cluster.url("certuser", &identity)).await.unwrap();
    assert!(encrypted(&client).await);
}

#[tokio::test]
async fn channel_binding_can_be_required_over_tls() {
    let cluster = tls_cluster();
    let url = cluster
        .url("scramuser", "sslmode=require&channel_binding=require")
        .replacen("scramuser@", &format!("scramuser:{SCRAM_PASSWORD}@"), 1);
    // SCRAM-SHA-256-PLUS, bound to the server's certificate.
    connect(&url).await.unwrap();
}

#[tokio::test]
async fn the_sidecar_delivers_with_every_connection_verified() {
    let cluster = tls_cluster();
    let verified = format!("sslmode=verify-full&sslrootcert={}", cluster.file("ca.pem"));
    let admin = connect(&cluster.url("postgres", &verified)).await.unwrap();
    admin
        .batch_execute("CREATE DATABASE sidecar_over_tls")
        .await
        .unwrap();
    let url = cluster
        .url("postgres", &verified)
        .replace("/postgres?", "/sidecar_over_tls?");
    let mut client = connect(&url).await.unwrap();
    outboxd::db::migrate::run(&mut client).await.unwrap();
    let db = TestDb { url, client };

    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "billing", &receiver.url(), None, &secret).await;
    let mut config = config(&db);
    config.wakeup = Wakeup::Notify;
    let sidecar = spawn(config);
    insert_message(&db.client, "evt_tls", "invoice.paid", r#"{"n":1}"#).await;
    assert!(
        eventually(WAIT, || async {
            count_status(&db.client, "delivered").await == 1
        })
        .await,
        "delivered over a verify-full connection"
    );
    let sessions = db
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE ssl), count(*) FILTER (WHERE NOT ssl)
             FROM pg_stat_activity JOIN pg_stat_ssl USING (pid)
             WHERE datname = 'sidecar_over_tls'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, plain): (i64, i64) = (sessions.get(0), sessions.get(1));
    assert!(encrypted > 1, "the test's and the sidecar's: {encrypted}");
    assert_eq!(plain, 0);
    sidecar.stop().await;
}
