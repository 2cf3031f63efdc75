//! `outboxd demo`: the whole path on one screen. A throwaway PostgreSQL (or
//! `DATABASE_URL`), a loopback receiver that checks signatures, an
//! application transaction that writes business rows and their events
//! together, the sidecar delivering them (one receiver answer fails twice
//! first), and the resulting `outbox.message_status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatabaseUrl};
use crate::db::{Db, migrate};
use crate::embedded::postgres::{Options, TempPostgres};
use crate::embedded::receiver::{Receiver, Reply};
use crate::retry::RetryPolicy;
use crate::signature::{Secret, Verifier};

const FLAKY_EVENT: &str = "demo-order-3-paid";
const WAIT: Duration = Duration::from_secs(60);

/// Runs the demo; `database_url` replaces the throwaway cluster.
pub async fn run(database_url: Option<String>) -> anyhow::Result<()> {
    let (_cluster, url) = match database_url {
        Some(url) => (None, url),
        None => {
            step("starting a throwaway PostgreSQL cluster");
            let cluster = tokio::task::spawn_blocking(|| TempPostgres::start(&Options::default()))
                .await?
                .context("starting PostgreSQL")?;
            let url = cluster.url("postgres");
            println!("   listening on 127.0.0.1:{}", cluster.port());
            (Some(cluster), url)
        }
    };
    let url = DatabaseUrl::new(url);
    let db = Db::new(&url)?;
    let mut client = db.connect().await?;

    step("applying migrations (outboxd migrate)");
    for name in migrate::run(&mut client).await? {
        println!("   applied {name}");
    }

    step("starting a receiver on 127.0.0.1 that verifies signatures");
    let secret = Secret::generate();
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), |r| {
        if r.webhook_id == FLAKY_EVENT && r.nth <= 2 {
            Reply::status(503).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await?;
    println!("   {} (answers 503 to {FLAKY_EVENT} twice)", receiver.url());

    step("registering the endpoint");
    client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('demo', $1, ARRAY[$2])
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, secrets = excluded.secrets, enabled = true",
            &[&receiver.url(), &secret.to_whsec()],
        )
        .await?;

    let shutdown = CancellationToken::new();
    let mut config = Config::new(url);
    config.poll_interval = Duration::from_secs(1);
    config.retry = RetryPolicy::parse("0s,1s,2s,5s", Duration::from_secs(5))?;
    // The receiver is on loopback, which the SSRF guard refuses by default.
    config.allow_networks = vec!["127.0.0.0/8".parse()?];
    let sidecar = tokio::spawn(crate::sidecar::run(config, false, shutdown.clone()));

    step("one application transaction: 4 orders and their events");
    let events = insert_orders(&mut client).await?;

    let printed = Arc::new(AtomicUsize::new(0));
    let shown = receiver
        .wait_until(WAIT, |all| {
            for r in &all[printed.load(Ordering::Relaxed)..] {
                let kind = r
                    .json()
                    .and_then(|j| j["type"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let check = match &r.verified {
                    Some(Ok(())) => "signature ok".to_owned(),
                    Some(Err(e)) => format!("signature BAD: {e}"),
                    None => String::new(),
                };
                println!(
                    "   <- {:<20} {kind:<14} attempt {} -> {} ({check})",
                    r.webhook_id, r.nth, r.status
                );
            }
            printed.store(all.len(), Ordering::Relaxed);
            let ok = all
                .iter()
                .filter(|r| (200..300).contains(&r.status))
                .count();
            ok >= events
        })
        .await;
    if !shown {
        bail!("not every event arrived within {WAIT:?}");
    }
    wait_until_recorded(&client, events).await?;

    step("SELECT * FROM outbox.message_status");
    print_status(&client).await?;

    step("stopping the sidecar");
    shutdown.cancel();
    sidecar.await??;
    println!(
        "\nDone. In your application: INSERT INTO outbox.messages (event_type, payload) ... and run `outboxd run`."
    );
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

async fn insert_orders(client: &mut tokio_postgres::Client) -> anyhow::Result<usize> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS demo_orders (id int PRIMARY KEY, item text NOT NULL, paid boolean NOT NULL DEFAULT false)",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.execute("DELETE FROM demo_orders", &[]).await?;
    let mut events = 0;
    for (id, item) in [(1, "coffee"), (2, "tea"), (3, "cake"), (4, "scone")] {
        tx.execute(
            "INSERT INTO demo_orders (id, item) VALUES ($1, $2)",
            &[&id, &item],
        )
        .await?;
        let event_id = format!("demo-order-{id}-created");
        let payload =
            serde_json::json!({"type": "order.created", "data": {"id": id, "item": item}});
        events += insert_event(&tx, &event_id, "order.created", &payload).await?;
    }
    tx.execute("UPDATE demo_orders SET paid = true WHERE id = 3", &[])
        .await?;
    let payload = serde_json::json!({"type": "order.paid", "data": {"id": 3}});
    events += insert_event(&tx, FLAKY_EVENT, "order.paid", &payload).await?;
    tx.commit().await?;
    println!("   committed {events} events");
    Ok(events)
}

async fn insert_event(
    tx: &tokio_postgres::Transaction<'_>,
    event_id: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> anyhow::Result<usize> {
    // ON CONFLICT: the demo can run twice against the same DATABASE_URL.
    let inserted = tx
        .execute(
            "INSERT INTO outbox.messages (event_id, event_type, payload) VALUES ($1, $2, $3::text::jsonb)
             ON CONFLICT (event_id) DO NOTHING",
            &[&event_id, &event_type, &payload.to_string()],
        )
        .await?;
    if inserted == 0 {
        bail!("event {event_id} already exists in this database; use a fresh one");
    }
    Ok(1)
}

async fn wait_until_recorded(client: &tokio_postgres::Client, events: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let delivered: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox.message_status WHERE event_id LIKE 'demo-%' AND status = 'delivered'",
                &[],
            )
            .await?
            .get(0);
        if delivered as usize >= events {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("outcomes were not recorded within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn print_status(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let rows = client
        .query(
            "SELECT event_id, event_type, endpoint_id, status, attempts::text,
                    coalesce(last_status_code::text, ''), coalesce(last_error, '')
             FROM outbox.message_status WHERE event_id LIKE 'demo-%' ORDER BY message_id",
            &[],
        )
        .await?;
    let header = [
        "event_id",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_code",
        "last_error",
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| (0..header.len()).map(|i| row.get::<_, String>(i)).collect())
        .collect();
    print!("{}", crate::commands::table::render(&header, &table));
    Ok(())
}
