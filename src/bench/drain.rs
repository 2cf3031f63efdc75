//! Real `outboxd run` processes: how fast they drain a backlog committed in
//! one transaction, what that costs them (CPU, peak memory), and how long a
//! message takes from commit to receipt at low load and at half the
//! sustained rate.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::task::JoinSet;

use super::report::{Latency, Report};
use super::sidecar::Sidecars;
use super::{Bench, percentiles, wait_for};
use crate::db::Db;

/// Runs the drain and both latency measurements.
/// Producer connections offering the steady load, one message per
/// transaction each: with fsync on, one connection commits at most a few
/// hundred to a thousand times a second here, so half the drain rate needs
/// several (and on 2 cores even 8 fall short of it; the report gives the
/// rate actually offered).
const STEADY_PRODUCERS: u64 = 8;

/// Drains a backlog, then measures latency at low load, at half the drain
/// rate, and at low load with logical wake-up.
pub async fn run(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    bench.reset().await?;
    let connections_before = bench.receiver.connections();
    let sidecars = Sidecars::start(&bench.options, &bench.url, "notify")?;
    let replicas = i64::from(bench.options.replicas);
    wait_for(Duration::from_secs(30), || async {
        let listening: i64 = bench
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN outboxd_wakeup%'",
                &[],
            )
            .await?
            .get(0);
        Ok(listening >= replicas)
    })
    .await
    .context("waiting for the sidecars to listen")?;

    let messages = bench.options.messages;
    let expected = bench.deliveries_for(messages);
    bench.progress(&format!(
        "  inserting {messages} messages in one transaction"
    ));
    let before = bench.receiver.count() as u64;
    let cpu_before = sidecars.cpu();
    bench.insert_backlog(messages, "drain-").await?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let received = bench.receiver.count() as u64 - before;
        if received >= expected {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "drain stalled at {received}/{expected}"
        );
        if last_report.elapsed() > Duration::from_secs(2) {
            bench.progress(&format!("  drained {received}/{expected}"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for(Duration::from_secs(60), || async {
        let open: i64 = bench
            .client
            .query_one(
                "SELECT count(*) FROM outbox.deliveries WHERE status <> 'delivered'",
                &[],
            )
            .await?
            .get(0);
        Ok(open == 0)
    })
    .await
    .context("waiting for every outcome to be written")?;
    let elapsed = started.elapsed();
    let cpu = sidecars.cpu().saturating_sub(cpu_before);
    report.deliveries_per_sec = expected as f64 / elapsed.as_secs_f64();
    report.cpu_ms_per_1k_deliveries = cpu.as_secs_f64() * 1000.0 / (expected as f64 / 1000.0);
    check_exactly_once(bench, "drain-", messages)?;
    report.delivered_exactly_once = expected;
    bench.progress(&format!(
        "  {:.0} deliveries/s, {:.1} ms CPU per 1,000",
        report.deliveries_per_sec, report.cpu_ms_per_1k_deliveries
    ));

    let low = (bench.options.phase_secs * 20.0).clamp(10.0, 200.0) as u64;
    bench.progress(&format!(
        "  latency at low load: {low} single messages 20 ms apart"
    ));
    report.latency_low_load_ms = latency(bench, 50.0, low, 1, "low-").await?;
    let rate = (report.deliveries_per_sec / 2.0 / f64::from(bench.options.fan_out)).max(1.0);
    let count = (rate * bench.options.phase_secs).ceil() as u64;
    bench.progress(&format!(
        "  latency at half the sustained rate: {rate:.0} messages/s for {:.0} s",
        bench.options.phase_secs
    ));
    report.latency_ms = latency(bench, rate, count, STEADY_PRODUCERS, "steady-").await?;
    report.peak_rss_bytes = sidecars.peak_rss_bytes();
    sidecars.stop().await?;
    report.receiver_connections_drain = (bench.receiver.connections() - connections_before) as u64;

    bench.progress(&format!(
        "  latency at low load with logical wake-up and no NOTIFY: {low} messages"
    ));
    report.latency_low_load_logical_ms = logical_latency(bench, low).await?;
    Ok(())
}

/// Low-load latency with `OUTBOXD_WAKEUP=logical` and the NOTIFY trigger
/// off, as producers that chose logical wake-up would run.
async fn logical_latency(bench: &Bench, count: u64) -> anyhow::Result<Latency> {
    bench
        .client
        .query_one("SELECT outbox.set_notify(false)", &[])
        .await?;
    let sidecars = Sidecars::start(&bench.options, &bench.url, "logical")?;
    let replicas = i64::from(bench.options.replicas);
    wait_for(Duration::from_secs(30), || async {
        let slots: i64 = bench
            .client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'outboxd_bench_%' AND active",
                &[],
            )
            .await?
            .get(0);
        Ok(slots >= replicas)
    })
    .await
    .context("waiting for the sidecars' replication slots")?;
    let measured = latency(bench, 50.0, count, 1, "logical-").await;
    bench
        .client
        .query_one("SELECT outbox.set_notify(true)", &[])
        .await?;
    sidecars.stop().await?;
    measured
}

/// Each of `messages` messages with `prefix` arrived exactly `fan_out`
/// times, every signature verified.
fn check_exactly_once(bench: &Bench, prefix: &str, messages: u64) -> anyhow::Result<()> {
    let mut seen: HashMap<String, u32> = HashMap::new();
    for r in bench.receiver.received() {
        if r.webhook_id.starts_with(prefix) {
            anyhow::ensure!(
                r.verified == Some(Ok(())),
                "a signature did not verify: {:?}",
                r.verified
            );
            *seen.entry(r.webhook_id).or_default() += 1;
        }
    }
    anyhow::ensure!(
        seen.len() as u64 == messages,
        "{} of {messages} messages arrived",
        seen.len()
    );
    let fan_out = bench.options.fan_out;
    anyhow::ensure!(
        seen.values().all(|&n| n == fan_out),
        "some message arrived more or less than {fan_out} times"
    );
    Ok(())
}

/// Inserts `count` messages, one per transaction, at `rate` per second from
/// `producers` connections, and measures commit-to-receipt for each.
async fn latency(
    bench: &Bench,
    rate: f64,
    count: u64,
    producers: u64,
    prefix: &str,
) -> anyhow::Result<Latency> {
    let db = Db::new(&bench.url)?;
    let interval = Duration::from_secs_f64(producers as f64 / rate);
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let tenant = bench.tenancy.of_type_sql(0);
    for p in 0..producers {
        let db = db.clone();
        let prefix = prefix.to_owned();
        let tenant = tenant.clone();
        tasks.spawn(async move {
            let client = db.connect().await?;
            let insert = client
                .prepare(&format!(
                    "INSERT INTO outbox.messages (event_id, event_type, payload, tenant_id)
                     VALUES ($1, 't0', '{{}}', {tenant})"
                ))
                .await?;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut committed = Vec::new();
            let mut n = p;
            while n < count {
                tick.tick().await;
                let id = format!("{prefix}{n}");
                client.execute(&insert, &[&id]).await?;
                committed.push((id, SystemTime::now()));
                n += producers;
            }
            anyhow::Ok(committed)
        });
    }
    let mut committed = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        committed.extend(done??);
    }
    let offered = count as f64 / started.elapsed().as_secs_f64();
    let fan_out = bench.options.fan_out as usize;
    let wanted = committed.len() * fan_out;
    anyhow::ensure!(
        bench
            .receiver
            .wait_until(Duration::from_secs(60), |all| {
                all.iter()
                    .filter(|r| r.webhook_id.starts_with(prefix))
                    .count()
                    >= wanted
            })
            .await,
        "not every latency message arrived"
    );
    let mut samples: Vec<f64> = bench
        .receiver
        .received()
        .iter()
        .filter_map(|r| {
            let at = committed.get(&r.webhook_id)?;
            Some(r.at.duration_since(*at).unwrap_or_default().as_secs_f64() * 1000.0)
        })
        .collect();
    let (p50, p95, p99) = percentiles(&mut samples);
    Ok(Latency {
        p50,
        p95,
        p99,
        offered_per_sec: offered,
    })
}
