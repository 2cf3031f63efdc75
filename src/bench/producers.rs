//! What each wake-up mode costs the application: single-row inserts per
//! second from 8 concurrent producers (fan-out included: every insert also
//! creates its deliveries), with no wake-up trigger, with the NOTIFY
//! trigger (and a listener), and with the trigger off while a logical slot
//! is read.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::Bench;
use super::report::ProducerRates;
use crate::db::Db;
use crate::wakeup::logical;

const PRODUCERS: u64 = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoTrigger,
    Notify,
    Logical,
}

/// Inserts per second in each mode.
pub async fn run(bench: &Bench) -> anyhow::Result<ProducerRates> {
    let mut rates = ProducerRates::default();
    for mode in [Mode::NoTrigger, Mode::Notify, Mode::Logical] {
        bench.reset().await?;
        let notify = mode == Mode::Notify;
        bench
            .client
            .query_one("SELECT outbox.set_notify($1)", &[&notify])
            .await?;
        let stop = CancellationToken::new();
        let watcher = watcher(bench, mode, stop.clone()).await?;
        let rate = produce(bench).await?;
        stop.cancel();
        if let Some(watcher) = watcher {
            watcher.await?;
        }
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
        "  inserts/s: no trigger {:.0}, notify {:.0}, logical {:.0}",
        rates.no_trigger, rates.notify_trigger, rates.logical
    ));
    Ok(rates)
}

/// What would run beside the producers in this mode: a `LISTEN`ing
/// connection, or a logical slot reader.
async fn watcher(
    bench: &Bench,
    mode: Mode,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let db = Db::new(&bench.url)?;
    Ok(match mode {
        Mode::NoTrigger => None,
        Mode::Notify => {
            let (client, mut connection) = db.config().connect(tokio_postgres::NoTls).await?;
            let listen = tokio::spawn(async move {
                let client = client;
                let _ = client.batch_execute("LISTEN outboxd_wakeup").await;
                stop.cancelled().await;
            });
            Some(tokio::spawn(async move {
                // Drain notifications until the listener task ends.
                while let Some(Ok(message)) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    let _ = matches!(message, AsyncMessage::Notification(_));
                    if listen.is_finished() {
                        break;
                    }
                }
            }))
        }
        Mode::Logical => Some(tokio::spawn(logical::run(
            db,
            "outboxd_bench_producers".into(),
            Duration::from_millis(20),
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(false)),
            stop,
        ))),
    })
}

/// 8 producers inserting one row per transaction for the phase's length.
async fn produce(bench: &Bench) -> anyhow::Result<f64> {
    let db = Db::new(&bench.url)?;
    let duration = Duration::from_secs_f64(bench.options.phase_secs);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    for p in 0..PRODUCERS {
        let db = db.clone();
        tasks.spawn(async move {
            let client = db.connect().await?;
            let insert = client
                .prepare("INSERT INTO outbox.messages (event_type, payload) VALUES ('t0', $1::text::jsonb)")
                .await?;
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
