//! Servers that are not one plain primary: a server that turns read-only
//! (a standby, or `default_transaction_read_only` during maintenance), and
//! a failover to a promoted synchronous standby found through a multi-host
//! URL with `target_session_attrs=read-write`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use outboxd::config::DatabaseUrl;
use outboxd::embedded::postgres::{Options, TempPostgres};
use outboxd::signature::Secret;

use crate::common::*;

async fn start_cluster(options: Options) -> TempPostgres {
    tokio::task::spawn_blocking(move || TempPostgres::start(&options))
        .await
        .unwrap()
        .expect("throwaway PostgreSQL")
}

/// How many times the server has refused a write as read-only so far.
fn read_only_refusals(cluster: &TempPostgres) -> usize {
    let log = cluster.data_dir().parent().unwrap().join("server.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("in a read-only transaction")
        .count()
}

#[tokio::test]
async fn a_read_only_server_pauses_claims_without_spending_attempts_until_writable() {
    // Its own cluster: the setting is server-wide.
    let cluster = start_cluster(Options {
        unsafe_fast: true,
        ..Options::default()
    })
    .await;
    let url = cluster.url("postgres");
    let mut client = connect(&url).await;
    outboxd::db::migrate::run(&mut client).await.unwrap();
    let db = TestDb { url, client };
    let secret = Secret::generate();
    let receiver = ok_receiver(Some(&secret)).await;
    add_endpoint(&db.client, "ep", &receiver.url(), None, &secret).await;
    let mut cfg = config(&db);
    cfg.reconnect_max = Duration::from_millis(500);
    let addr = free_addr();
    cfg.admin_addr = Some(addr);
    let readyz = format!("http://{addr}/readyz");
    let sidecar = spawn(cfg);
    insert_message(&db.client, "before", "t", "{}").await;
    assert!(receiver.wait_until(WAIT, |r| r.len() == 1).await);
    assert!(eventually(WAIT, || async { get(&readyz).await.0 == 200 }).await);

    // Maintenance mode: every session's new transactions are read-only
    // (this one writes anyway, overriding it for itself).
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
        "SET default_transaction_read_only = off",
    ] {
        db.client.batch_execute(sql).await.unwrap();
    }
    // The reload reaches each backend asynchronously, at its next command:
    // wait until the sidecar's own polls are refused, so no claim that began
    // before the switch can still see the next message.
    let refused_before = read_only_refusals(&cluster);
    assert!(
        eventually(WAIT, || async {
            read_only_refusals(&cluster) > refused_before
        })
        .await,
        "the sidecar's idle polls are refused once read-only"
    );
    let refused_before = read_only_refusals(&cluster);
    insert_message(&db.client, "during", "t", "{}").await;
    assert!(
        eventually(WAIT, || async {
            let (status, body) = get(&readyz).await;
            status == 503 && body.contains("read-only")
        })
        .await,
        "/readyz says read-only: {:?}",
        get(&readyz).await
    );
    // The sidecar tried, more than once, and was refused each time...
    assert!(
        eventually(WAIT, || async {
            read_only_refusals(&cluster) >= refused_before + 2
        })
        .await,
        "claims were attempted against the read-only server"
    );
    // ...without claiming or spending anything.
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        count(
            &db.client,
            "SELECT count(*) FROM outbox.deliveries WHERE attempts > 0 OR status = 'in_flight'"
        )
        .await,
        1,
        "only the delivery made before"
    );

    for sql in [
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        db.client.batch_execute(sql).await.unwrap();
    }
    assert!(
        receiver.wait_until(WAIT, |r| r.len() == 2).await,
        "resumed by itself once writable"
    );
    assert_eq!(
        count(
            &db.client,
            "SELECT max(d.attempts)::bigint FROM outbox.deliveries d
             JOIN outbox.messages m ON m.id = d.message_id WHERE m.event_id = 'during'"
        )
        .await,
        1,
        "its first attempt, not a retry"
    );
    assert!(eventually(WAIT, || async { get(&readyz).await.0 == 200 }).await);
    sidecar.stop().await;
}

#[tokio::test]
async fn after_a_failover_to_a_synchronous_standby_delivery_resumes_and_nothing_is_lost() {
    let has_basebackup = outboxd::embedded::postgres::bin_dir()
        .is_some_and(|bin| bin.join("pg_basebackup").is_file());
    if !has_basebackup {
        eprintln!(
            "SKIPPED: no pg_basebackup beside initdb (the server package has only the server)"
        );
        return;
    }
    let primary = start_cluster(Options {
        // Durable commits on the standby before they return (no
        // unsafe_fast: it turns synchronous_commit off).
        unsafe_fast: false,
        settings: vec![
            ("synchronous_standby_names".into(), "*".into()),
            ("fsync".into(), "off".into()),
        ],
    })
    .await;
    let primary_url = primary.url("postgres");
    // The standby first: until it streams, every commit waits for it.
    let standby = {
        let primary = &primary;
        std::thread::scope(|s| s.spawn(|| TempPostgres::standby_of(primary)).join())
            .unwrap()
            .expect("a standby by pg_basebackup -R")
    };
    let mut client = connect(&primary_url).await;
    assert!(
        eventually(WAIT, || async {
            count(
                &client,
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .await
                == 1
        })
        .await,
        "the standby streams synchronously"
    );
    outboxd::db::migrate::run(&mut client).await.unwrap();
    let secret = Secret::generate();
    let receiver = Receiver::start(
        Some(outboxd::signature::Verifier::new(vec![secret.clone()])),
        // Slow enough that deliveries are in flight when the primary goes.
        |_| Reply::ok().delay(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    add_endpoint(&client, "ep", &receiver.url(), None, &secret).await;

    let failover_url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let db = TestDb {
        url: primary_url,
        client,
    };
    let mut cfg = config(&db);
    cfg.database_url = DatabaseUrl::new(failover_url);
    cfg.reconnect_max = Duration::from_millis(500);
    cfg.concurrency = 4;
    let sidecar = spawn(cfg);

    let mut committed = Vec::new();
    for i in 0..200 {
        let id = format!("a{i}");
        insert_message(&db.client, &id, "t", "{}").await;
        committed.push(id);
    }
    // Mid-stream: some delivered, most not.
    assert!(receiver.wait_until(WAIT, |r| r.len() >= 20).await);
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop("fast").unwrap();
        primary
    })
    .await
    .unwrap();
    let delivered_before = receiver.count();
    let standby = tokio::task::spawn_blocking(move || {
        standby.promote().unwrap();
        standby
    })
    .await
    .unwrap();
    let promoted = Instant::now();
    let new_primary = connect(&standby.url("postgres")).await;
    for i in 0..50 {
        let id = format!("b{i}");
        insert_message(&new_primary, &id, "t", "{}").await;
        committed.push(id);
    }
    assert!(
        receiver
            .wait_until(Duration::from_secs(60), |r| r.len() > delivered_before)
            .await
    );
    let resumed_after = promoted.elapsed();
    let all: HashSet<&str> = committed.iter().map(String::as_str).collect();
    let everything = receiver
        .wait_until(Duration::from_secs(90), |received| {
            let ids: HashSet<String> = received
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            ids.len() >= all.len()
        })
        .await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *per_id
            .entry(r.header("webhook-id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    eprintln!(
        "failover: delivery resumed {resumed_after:?} after the promotion; {} committed, {} duplicates",
        all.len(),
        duplicates
    );
    assert!(
        everything,
        "every committed message delivered after the failover"
    );
    assert!(
        wait_settled(&new_primary, WAIT).await,
        "every outcome written to the new primary"
    );
    let missing: Vec<&String> = {
        let event_ids: HashSet<String> = new_primary
            .query(
                "SELECT m.event_id FROM outbox.messages m JOIN outbox.deliveries d ON d.message_id = m.id
                 WHERE d.status = 'delivered'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        committed
            .iter()
            .filter(|id| !event_ids.contains(*id))
            .collect()
    };
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(
        resumed_after < Duration::from_secs(15),
        "resumed within seconds: {resumed_after:?}"
    );
    sidecar.stop().await;
    drop(primary);
}
