//! The SSRF guard end to end: refused targets are recorded on the delivery,
//! never attempted on the wire, and never hold up other endpoints.
//!
//! Every address here is on loopback: the guard is what is under test, so a
//! target it wrongly let through must still not leave the machine.

use outboxd::config::EgressProxy;
use outboxd::signature::Secret;

use crate::common::*;

async fn delivery(db: &TestDb, endpoint: &str) -> (String, i32, Option<String>) {
    let row = db
        .client
        .query_one(
            "SELECT status, attempts, last_error FROM outbox.deliveries WHERE endpoint_id = $1",
            &[&endpoint],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn default_config_refuses_loopback_and_records_why() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(None).await;
    let literal = receiver.url();
    let named = literal.replace("127.0.0.1", "localhost");
    add_endpoint(&db.client, "literal", &literal, None, &secret).await;
    add_endpoint(&db.client, "named", &named, None, &secret).await;
    let mut config = config(&db);
    config.allow_networks = Vec::new();
    let sidecar = spawn(config);

    insert_message(&db.client, "evt", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    let (status, attempts, error) = delivery(&db, "literal").await;
    assert_eq!((status.as_str(), attempts), ("dead", 1), "not retried");
    assert_eq!(
        error.as_deref(),
        Some("refused: 127.0.0.1 is a loopback address (open it with --allow-network)")
    );
    let (status, attempts, error) = delivery(&db, "named").await;
    assert_eq!((status.as_str(), attempts), ("dead", 1));
    let error = error.unwrap();
    assert!(
        error.starts_with("refused: ") && error.contains("is a loopback address"),
        "checked after resolving localhost: {error}"
    );
    let logged: i64 = count(&db.client, "SELECT count(*) FROM outbox.attempts WHERE status_code IS NULL AND error LIKE 'refused: %'").await;
    assert_eq!(logged, 2, "each refusal is an attempt row");
}

#[tokio::test]
async fn refused_endpoints_do_not_hold_up_the_others() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    let receiver = ok_receiver(None).await;
    add_endpoint(&db.client, "open", &receiver.url(), None, &secret).await;
    // Loopback addresses outside the one opened /32, in two spellings.
    add_endpoint(
        &db.client,
        "closed",
        "http://127.0.0.2:9/hook",
        None,
        &secret,
    )
    .await;
    add_endpoint(
        &db.client,
        "mapped",
        "http://[::ffff:127.0.0.3]:9/",
        None,
        &secret,
    )
    .await;
    let mut config = config(&db);
    config.allow_networks = vec!["127.0.0.1/32".parse().unwrap()];
    let sidecar = spawn(config);

    for i in 0..5 {
        insert_message(&db.client, &format!("m{i}"), "t", "{}").await;
    }
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    assert_eq!(receiver.count(), 5);
    let by_status = db
        .client
        .query(
            "SELECT endpoint_id, status, count(*), min(last_error), max(attempts)
             FROM outbox.deliveries GROUP BY 1, 2 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let rows: Vec<(String, String, i64, Option<String>, i32)> = by_status
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let refused = |addr: &str| {
        Some(format!(
            "refused: {addr} is a loopback address (open it with --allow-network)"
        ))
    };
    assert_eq!(
        rows,
        [
            ("closed".into(), "dead".into(), 5, refused("127.0.0.2"), 1),
            (
                "mapped".into(),
                "dead".into(),
                5,
                refused("::ffff:127.0.0.3"),
                1
            ),
            ("open".into(), "delivered".into(), 5, None, 1),
        ]
    );
}

#[tokio::test]
async fn an_egress_proxy_carries_requests_and_targets_are_still_checked() {
    let db = fresh_db().await;
    let secret = Secret::generate();
    // A plain HTTP receiver stands in for the forward proxy: it answers
    // every request it is handed, which is what the test needs to see.
    let proxy = ok_receiver(None).await;
    let proxy_url = proxy.url().replace("/webhook", "");
    add_endpoint(&db.client, "via", "http://127.0.0.2:9/hook", None, &secret).await;
    add_endpoint(&db.client, "literal", "http://127.0.0.3:9/", None, &secret).await;
    add_endpoint(&db.client, "named", "http://localhost:9/", None, &secret).await;
    let mut config = config(&db);
    config.allow_networks = vec!["127.0.0.2/32".parse().unwrap()];
    config.egress_proxy = Some(EgressProxy::parse(&proxy_url).unwrap());
    let sidecar = spawn(config);

    insert_message(&db.client, "m", "t", "{}").await;
    assert!(wait_settled(&db.client, WAIT).await);
    sidecar.stop().await;

    let got = proxy.received();
    assert_eq!(got.len(), 1, "only the permitted target went to the proxy");
    assert_eq!(got[0].header("host"), Some("127.0.0.2:9"));
    assert_eq!(got[0].webhook_id, "m");
    assert_eq!(delivery(&db, "via").await.0, "delivered");
    let (status, _, error) = delivery(&db, "literal").await;
    assert_eq!(status, "dead");
    assert_eq!(
        error.as_deref(),
        Some("refused: 127.0.0.3 is a loopback address (open it with --allow-network)")
    );
    let (status, _, error) = delivery(&db, "named").await;
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("is a loopback address"));
}
