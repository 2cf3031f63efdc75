//! The machine's two ceilings for this workload, measured with outboxd's
//! own parts: the claim and completion SQL without HTTP, and the HTTP
//! client posting signed requests to the receiver without the database.
//! `1 / (1/claim + 1/http)` is what both could reach sharing the CPU.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;

use super::Bench;
use crate::config::Config;
use crate::db::Db;
use crate::db::queries::Queries;
use crate::delivery::{AttemptRecord, Claim, Deliverer, EndpointTls, Job, Outcome, Verdict};

/// Signed POSTs per second at the sidecars' total concurrency.
pub async fn http(bench: &Bench) -> anyhow::Result<f64> {
    let workers = (bench.options.concurrency * bench.options.replicas as usize).max(1);
    let mut config = Config::new(bench.url.clone());
    config.allow_networks = vec!["127.0.0.0/8".parse()?];
    // One client for every sidecar's requests: its pool must keep as many
    // connections as they have in flight, or it closes the surplus after
    // each request and connects again for the next.
    config.concurrency = workers;
    let deliverer = Arc::new(Deliverer::new(&config)?);
    let total = bench.options.messages.min(20_000);
    let workers = workers as u64;
    let before = bench.receiver.count();
    let payload = format!(
        r#"{{"n":0,"pad":"{}"}}"#,
        "x".repeat(bench.options.payload_bytes.saturating_sub(20))
    );
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let deliverer = deliverer.clone();
        let mut job = job(bench, &payload);
        tasks.spawn(async move {
            let mut n = worker;
            while n < total {
                job.event_id = format!("ceiling-{n}");
                let outcome = deliverer.deliver(&job).await;
                anyhow::ensure!(
                    outcome.verdict == Verdict::Delivered,
                    "ceiling request failed: {outcome:?}"
                );
                n += workers;
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        bench.receiver.count() - before == total as usize,
        "the receiver missed requests"
    );
    Ok(rate)
}

fn job(bench: &Bench, payload: &str) -> Job {
    Job {
        claim: Claim {
            delivery_id: 0,
            attempt: 1,
            leased_until: SystemTime::now(),
        },
        schedule_attempt: 1,
        endpoint_id: "e0".into(),
        ordering_key: None,
        event_id: String::new(),
        event_type: "t0".into(),
        payload: payload.into(),
        url: bench.receiver.url(),
        secrets: vec![bench.secret.to_whsec()],
        timeout: None,
        headers: "{}".into(),
        age_at_claim: Duration::ZERO,
        claimed_at: Instant::now(),
        db_now_at_claim: std::time::SystemTime::now(),
        tls: EndpointTls::default(),
        retry_schedule: None,
    }
}

/// Rows per second claimed and completed with the sidecar's statements and
/// batch size, by as many loops as the drain has sidecars (at least two).
pub async fn claim(bench: &Bench) -> anyhow::Result<f64> {
    bench.reset().await?;
    let messages = bench.options.messages.min(20_000);
    bench.insert_backlog(messages, "claim-").await?;
    let rows = bench.deliveries_for(messages);
    let mut db = Db::new(&bench.url)?;
    if bench.options.async_commit {
        db = db.with_async_commit();
    }
    // As in the sidecar: claims never wait for the WAL flush, outcome
    // writes do (unless --async-commit).
    let claims_db = db.clone().with_async_commit();
    let loops = bench.options.replicas.max(2);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..loops {
        let (db, claims_db) = (db.clone(), claims_db.clone());
        let batch = bench.options.batch_size;
        tasks.spawn(async move {
            let claims = Queries::connect(&claims_db).await?;
            let writes = Queries::connect(&db).await?;
            let owner = format!("ceiling-{i}");
            let mut done = 0u64;
            loop {
                let jobs = claims.claim(&owner, batch, Duration::from_secs(60)).await?;
                if jobs.is_empty() {
                    return anyhow::Ok(done);
                }
                let outcomes: Vec<Outcome> = jobs.iter().map(delivered).collect();
                let refs: Vec<&Outcome> = outcomes.iter().collect();
                done += writes
                    .complete(&owner, &refs, Duration::from_secs(86_400))
                    .await?
                    .written as u64;
            }
        });
    }
    let mut completed = 0;
    while let Some(done) = tasks.join_next().await {
        completed += done??;
    }
    let rate = completed as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        completed == rows,
        "claimed and completed {completed} of {rows} rows"
    );
    Ok(rate)
}

/// The outcome of a successful attempt at `job`.
pub(super) fn delivered(job: &Job) -> Outcome {
    let record = AttemptRecord {
        started_at: SystemTime::now(),
        duration: Duration::from_millis(1),
        status_code: Some(200),
        error: None,
        response_excerpt: Some("ok".into()),
    };
    Outcome::attempted(job, Verdict::Delivered, record)
}
