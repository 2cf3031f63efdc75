//! What each wake-up mode costs the application: single-row inserts per
//! second from 8 concurrent producers (fan-out included: every insert also
//! creates its deliveries) while `outboxd run` delivers them, with no
//! wake-up trigger (sidecar in poll mode), with the NOTIFY trigger (notify
//! mode), and with the trigger off while the sidecar reads a logical slot.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::Bench;
use super::report::ProducerRates;
use super::sidecar::Sidecars;
use crate::db::Db;

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
        let running = sidecars(bench, mode)?;
        let rate = produce(bench).await;
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
        "  inserts/s: no trigger {:.0}, notify {:.0}, logical {:.0}",
        rates.no_trigger, rates.notify_trigger, rates.logical
    ));
    Ok(rates)
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
