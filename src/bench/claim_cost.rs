//! The claim's cost with no finished rows and with many (default a
//! million): the partial index on open deliveries should make them equal.

use std::time::{Duration, Instant};

use super::ceilings::delivered;
use super::{Bench, percentiles};
use crate::db::Db;
use crate::db::queries::{Queries, ROUTE_BATCH};
use crate::delivery::Outcome;

const CLAIMS: u64 = 60;

/// Median claim time in ms: (empty tables, beside `finished_rows`).
pub async fn run(bench: &Bench) -> anyhow::Result<(f64, f64)> {
    bench.reset().await?;
    let empty = measure(bench).await?;
    bench.reset().await?;
    let finished = bench.options.finished_rows as i64;
    bench.progress(&format!("  writing {finished} finished deliveries"));
    bench
        .client
        .batch_execute("ALTER TABLE outbox.messages DISABLE TRIGGER messages_notify;")
        .await?;
    // Type t0, to e0, in their tenant; routed already: their deliveries
    // are written below.
    let insert = format!(
        "INSERT INTO outbox.messages (event_id, event_type, payload, created_at, routed, tenant_id)
         SELECT 'done-' || g, 't0', '{{}}', now() - interval '1 hour', true, {}
         FROM generate_series(1, $1::bigint) g",
        bench.tenancy.of_type_sql(0)
    );
    bench.client.execute(&insert, &[&finished]).await?;
    bench
        .client
        .batch_execute(
            "ALTER TABLE outbox.messages ENABLE TRIGGER messages_notify;
             INSERT INTO outbox.deliveries (message_id, endpoint_id, tenant_id, status, attempts, next_attempt_at, delivered_at)
             SELECT id, 'e0', tenant_id, 'delivered', 1, NULL, now() FROM outbox.messages;",
        )
        .await?;
    // One statement each: VACUUM cannot run in a (multi-statement)
    // transaction.
    for table in ["outbox.messages", "outbox.deliveries"] {
        bench
            .client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    // Write out what the inserts dirtied, so that the disk is as quiet as
    // for the first measurement (skipped where the role may not).
    if let Err(error) = bench.client.batch_execute("CHECKPOINT").await {
        bench.progress(&format!("  no checkpoint before measuring: {error}"));
    }
    let with = measure(bench).await?;
    bench.progress(&format!(
        "  claim: {empty:.2} ms empty, {with:.2} ms beside {finished} finished rows"
    ));
    bench.reset().await?;
    let cap = (bench.options.concurrency * bench.options.replicas as usize).min(10_000) as i32;
    bench
        .client
        .execute("UPDATE outbox.endpoints SET max_in_flight = $1", &[&cap])
        .await?;
    Ok((empty, with))
}

/// Median duration of one claim of a full batch (the sidecar's batch size),
/// each batch then written back as delivered (untimed), as a sidecar would.
async fn measure(bench: &Bench) -> anyhow::Result<f64> {
    // No endpoint cap below the batch size.
    bench
        .client
        .execute("UPDATE outbox.endpoints SET max_in_flight = 10000", &[])
        .await?;
    let batch = bench.options.batch_size as u64;
    bench.insert_backlog(CLAIMS * batch, "cost-").await?;
    let db = Db::new(&bench.url)?;
    // Committed as the sidecar commits its claims: without waiting for the
    // WAL flush, so that this times the statement, not the disk.
    let claims = Queries::connect(&db.clone().with_async_commit()).await?;
    let writes = Queries::connect(&db).await?;
    // Routed first, untimed: this measures the claim statement.
    while writes.route().await? >= ROUTE_BATCH {}
    let lease = Duration::from_secs(600);
    let mut samples = Vec::new();
    // The first claim warms the connection's statement cache.
    for n in 0..CLAIMS {
        let started = Instant::now();
        let jobs = claims
            .claim("cost", bench.options.batch_size, lease)
            .await?;
        let took = started.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(!jobs.is_empty(), "the claim found nothing to claim");
        if n > 0 {
            samples.push(took);
        }
        let outcomes: Vec<Outcome> = jobs.iter().map(delivered).collect();
        let refs: Vec<&Outcome> = outcomes.iter().collect();
        writes
            .complete("cost", &refs, Duration::from_secs(86_400))
            .await?;
    }
    Ok(percentiles(&mut samples).0)
}
