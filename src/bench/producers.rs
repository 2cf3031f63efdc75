//! What each wake-up mode costs the application: single-row inserts per
//! second from 8 concurrent producers while `outboxd run` routes and
//! delivers them (on the same machine), with no
//! wake-up trigger (sidecar in poll mode), with the NOTIFY trigger (notify
//! mode), and with the trigger off while the sidecar reads a logical slot.
//!
//! First, as the yardstick for all three, the same producers insert the
//! same rows into a plain table (identity key, unique text event id, jsonb
//! payload, no trigger) with no sidecar running: what the application's
//! inserts cost without an outbox at all.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::Bench;
use super::report::ProducerRates;
use super::sidecar::Sidecars;
use crate::db::Db;

const PRODUCERS: u64 = 8;

/// The plain table: `outbox.messages`' columns that a producer fills or
/// that have a default, their types and keys, and nothing else.
const PLAIN_TABLE: &str = "bench_plain_messages";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoTrigger,
    Notify,
    Logical,
}

/// Inserts per second into the plain table, then in each mode.
pub async fn run(bench: &Bench) -> anyhow::Result<ProducerRates> {
    let mut rates = ProducerRates {
        plain_table: plain_table(bench).await?,
        ..ProducerRates::default()
    };
    // The outbox's insert alone, on the plain table's terms.
    bench.reset().await?;
    bench
        .client
        .query_one("SELECT outbox.set_notify(false)", &[])
        .await?;
    rates.no_sidecar = produce(bench, &outbox_insert(bench)).await?;
    for mode in [Mode::NoTrigger, Mode::Notify, Mode::Logical] {
        bench.reset().await?;
        let notify = mode == Mode::Notify;
        bench
            .client
            .query_one("SELECT outbox.set_notify($1)", &[&notify])
            .await?;
        let running = sidecars(bench, mode)?;
        let rate = produce(bench, &outbox_insert(bench)).await;
        running.stop().await?;
        let rate = rate?;
        match mode {
            Mode::NoTrigger => rates.no_trigger = rate,
            Mode::Notify => rates.notify_trigger = rate,
            Mode::Logical => rates.logical = rate,
        }
    }
    bench
        .client
        .query_one("SELECT outbox.set_notify(true)", &[])
        .await?;
    bench.progress(&format!(
        "  inserts/s: plain table {:.0}, outbox without a sidecar {:.0}, no trigger {:.0}, notify {:.0}, logical {:.0}",
        rates.plain_table, rates.no_sidecar, rates.no_trigger, rates.notify_trigger, rates.logical
    ));
    Ok(rates)
}

/// The producers' insert: type t0, in its tenant.
fn outbox_insert(bench: &Bench) -> String {
    format!(
        "INSERT INTO outbox.messages (event_type, payload, tenant_id) VALUES ('t0', $1::text::jsonb, {})",
        bench.tenancy.of_type_sql(0)
    )
}

/// Inserts per second into a fresh plain table in the bench database,
/// with no sidecar running.
async fn plain_table(bench: &Bench) -> anyhow::Result<f64> {
    bench
        .client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {PLAIN_TABLE};
             CREATE TABLE {PLAIN_TABLE} (
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 event_id text NOT NULL UNIQUE DEFAULT gen_random_uuid()::text,
                 event_type text NOT NULL,
                 payload jsonb NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .context("creating the plain table")?;
    let insert =
        format!("INSERT INTO {PLAIN_TABLE} (event_type, payload) VALUES ('t0', $1::text::jsonb)");
    let rate = produce(bench, &insert).await;
    bench
        .client
        .batch_execute(&format!("DROP TABLE {PLAIN_TABLE}"))
        .await
        .context("dropping the plain table")?;
    rate
}

/// The sidecars that run beside the producers, delivering what they
/// insert: in poll mode (the baseline, no wake-up trigger), notify mode or
/// logical mode.
fn sidecars(bench: &Bench, mode: Mode) -> anyhow::Result<Sidecars> {
    let wakeup = match mode {
        Mode::NoTrigger => "poll",
        Mode::Notify => "notify",
        Mode::Logical => "logical",
    };
    Sidecars::start(&bench.options, &bench.url, wakeup)
}

/// 8 producers running `insert` (one row per transaction, its payload as
/// `$1`) for the phase's length.
async fn produce(bench: &Bench, insert: &str) -> anyhow::Result<f64> {
    let db = Db::new(&bench.url)?;
    let duration = Duration::from_secs_f64(bench.options.phase_secs);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for p in 0..PRODUCERS {
        let db = db.clone();
        let insert = insert.to_owned();
        tasks.spawn(async move {
            let client = db.connect().await?;
            let insert = client.prepare(&insert).await?;
            let body = format!(r#"{{"producer":{p}}}"#);
            let mut n = 0u64;
            while started.elapsed() < duration {
                client.execute(&insert, &[&body]).await?;
                n += 1;
            }
            anyhow::Ok(n)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
