//! `outboxd demo`: the whole path on one screen. A throwaway PostgreSQL (or
//! `DATABASE_URL`), a loopback receiver that checks signatures, an
//! application transaction that writes business rows and their events
//! together, the sidecar delivering them (one receiver answer fails twice
//! first), progress while it works, and a summary of what happened, read
//! back from `outbox.message_status` and `outbox.attempts`.

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
/// While waiting, say what is still open this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(900);

/// Numbered step headings: `[3/9] starting a receiver ...`.
struct Steps {
    done: usize,
    total: usize,
}

impl Steps {
    fn next(&mut self, text: &str) {
        self.done += 1;
        println!("\n[{}/{}] {text}", self.done, self.total);
    }
}

/// Runs the demo; `database_url` replaces the throwaway cluster.
pub async fn run(database_url: Option<String>) -> anyhow::Result<()> {
    let mut steps = Steps {
        done: 0,
        total: if database_url.is_some() { 8 } else { 9 },
    };
    let (cluster, url) = match database_url {
        Some(url) => (None, url),
        None => {
            steps.next("starting a throwaway PostgreSQL cluster (initdb takes a few seconds)");
            let cluster = tokio::task::spawn_blocking(|| TempPostgres::start(&Options::default()))
                .await?
                .context("starting PostgreSQL")?;
            let url = cluster.url("postgres");
            println!("      listening on 127.0.0.1:{}", cluster.port());
            (Some(cluster), url)
        }
    };
    let url = DatabaseUrl::new(url);
    let db = Db::new(&url)?;
    let mut client = db.connect().await?;

    steps.next("applying migrations (outboxd migrate)");
    let applied = migrate::run(&mut client).await?;
    if applied.is_empty() {
        println!("      schema \"outbox\" is up to date");
    }
    for name in applied {
        println!("      applied {name}");
    }

    steps.next("starting a receiver on 127.0.0.1 that verifies signatures");
    let secret = Secret::generate();
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), |r| {
        if r.webhook_id == FLAKY_EVENT && r.nth <= 2 {
            Reply::status(503).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    })
    .await?;
    println!(
        "      {} (it answers 503 to {FLAKY_EVENT} twice)",
        receiver.url()
    );

    steps.next("registering it as endpoint \"demo\": every event type, a new whsec_ secret");
    client
        .execute(
            "INSERT INTO outbox.endpoints (id, url, secrets) VALUES ('demo', $1, ARRAY[$2])
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, secrets = excluded.secrets, enabled = true",
            &[&receiver.url(), &secret.to_whsec()],
        )
        .await?;

    steps.next("starting the sidecar (outboxd run, inside this process)");
    println!("      retries after 1 s, 2 s and 5 s; each failed attempt is also logged on stderr");
    let shutdown = CancellationToken::new();
    let mut config = Config::new(url);
    config.poll_interval = Duration::from_secs(1);
    config.retry = RetryPolicy::parse("0s,1s,2s,5s", Duration::from_secs(5))?;
    // The receiver is on loopback, which the SSRF guard refuses by default.
    config.allow_networks = vec!["127.0.0.0/8".parse()?];
    let sidecar = tokio::spawn(crate::sidecar::run(config, false, shutdown.clone()));

    steps.next("one application transaction: 4 orders and their 5 events");
    let events = insert_orders(&mut client).await?;

    steps.next("delivering: each line is a request the receiver got -> its answer");
    watch(&receiver, &client, events).await?;
    wait_until_recorded(&client, events).await?;

    steps.next("what happened, from outbox.message_status and outbox.attempts");
    print_summary(&client, &receiver).await?;

    steps.next("stopping the sidecar (as on SIGTERM: finish in-flight work, write outcomes)");
    shutdown.cancel();
    sidecar.await??;
    if cluster.is_some() {
        println!("      the throwaway cluster is removed on exit");
    }
    println!(
        "\nYour turn: set DATABASE_URL, run `outboxd migrate` and `outboxd run` beside your\n\
         application, INSERT INTO outbox.messages (event_type, payload) in its transactions,\n\
         and SELECT * FROM outbox.message_status. README.md has a five-minute tutorial."
    );
    Ok(())
}

/// Prints each request as it arrives and, every [`PROGRESS_EVERY`] until
/// every event got a 2xx, what is still open.
async fn watch(
    receiver: &Receiver,
    client: &tokio_postgres::Client,
    events: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let printed = Arc::new(AtomicUsize::new(0));
    loop {
        let done = receiver
            .wait_until(PROGRESS_EVERY, |all| {
                for r in &all[printed.load(Ordering::Relaxed)..] {
                    print_request(r);
                }
                printed.store(all.len(), Ordering::Relaxed);
                let ok = all
                    .iter()
                    .filter(|r| (200..300).contains(&r.status))
                    .count();
                ok >= events
            })
            .await;
        if done {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not every event arrived within {WAIT:?}");
        }
        print_progress(client).await?;
    }
}

fn print_request(r: &crate::embedded::receiver::Received) {
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
        "      {:<20} {kind:<13} attempt {} -> {} ({check})",
        r.webhook_id, r.nth, r.status
    );
}

/// One line: how many are delivered, and when each open one is retried.
async fn print_progress(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'delivered'), count(*),
                    string_agg(event_id || ' (last answer ' || coalesce(last_status_code::text, 'none')
                               || ', next attempt in '
                               || greatest(ceil(extract(epoch FROM next_attempt_at - now())), 0) || ' s)',
                               ', ' ORDER BY message_id)
                      FILTER (WHERE status <> 'delivered' AND next_attempt_at IS NOT NULL)
             FROM outbox.message_status WHERE event_id LIKE 'demo-%'",
            &[],
        )
        .await?;
    let (delivered, total): (i64, i64) = (row.get(0), row.get(1));
    let waiting: Option<String> = row.get(2);
    let waiting = waiting.map_or(String::new(), |w| format!("; waiting: {w}"));
    println!("      ... {delivered} of {total} delivered{waiting}");
    Ok(())
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
    println!("      committed: the events exist because the orders do");
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

/// The summary table: each event, every answer it got, and how long it
/// took from insert to delivery; then the totals.
async fn print_summary(client: &tokio_postgres::Client, receiver: &Receiver) -> anyhow::Result<()> {
    let rows = client
        .query(
            "SELECT s.event_id, s.event_type, s.status, s.attempts::text,
                    coalesce((SELECT string_agg(coalesce(a.status_code::text, 'no answer'), ', '
                                                ORDER BY a.attempt)
                              FROM outbox.attempts a WHERE a.delivery_id = s.delivery_id), ''),
                    coalesce(round(extract(epoch FROM s.delivered_at - s.created_at) * 1000)::bigint
                             || ' ms', '')
             FROM outbox.message_status s WHERE s.event_id LIKE 'demo-%' ORDER BY s.message_id",
            &[],
        )
        .await?;
    let header = [
        "event_id",
        "event_type",
        "status",
        "attempts",
        "answers",
        "insert to delivered",
    ];
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| (0..header.len()).map(|i| row.get::<_, String>(i)).collect())
        .collect();
    print!("{}", crate::table::render(&header, &table));
    let delivered = table.iter().filter(|r| r[2] == "delivered").count();
    let dead = table.iter().filter(|r| r[2] == "dead").count();
    let requests = receiver.received();
    let verified = requests
        .iter()
        .filter(|r| r.verified == Some(Ok(())))
        .count();
    println!(
        "\n   {} events: {delivered} delivered, {dead} dead; {} HTTP requests, {verified} with a valid signature.",
        table.len(),
        requests.len()
    );
    for retried in table.iter().filter(|r| r[3] != "1") {
        println!(
            "   {} got {}: retried with backoff, with the same webhook-id each time.",
            retried[0], retried[4]
        );
    }
    Ok(())
}
