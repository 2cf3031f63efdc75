//! `outboxd bench`: measures the product and the machine's limits in the
//! same run, on an embedded default (a throwaway PostgreSQL with fsync on,
//! an in-process receiver that verifies every signature) or on a fresh
//! database created on the server of `--database-url`.
//!
//! Phases, each in its own module: the two ceilings ([`ceilings`]: the
//! claim SQL without HTTP, the HTTP client without the database), the drain
//! and latency of real `outboxd run` processes ([`drain`]), producer insert
//! rates per wake-up mode ([`producers`]), and the claim's cost beside a
//! million finished rows ([`claim_cost`]). [`report`] prints the table and
//! the JSON; [`tenants`] spreads endpoints and messages over tenants.

pub mod ceilings;
pub mod claim_cost;
pub mod drain;
pub mod producers;
pub mod report;
pub mod sidecar;
pub mod tenants;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::config::DatabaseUrl;
use crate::db::{Db, migrate};
use crate::embedded::postgres::{Options as PgOptions, TempPostgres};
use crate::embedded::receiver::{Receiver, Reply};
use crate::signature::{Secret, Verifier};
pub use report::Report;
use tenants::Tenancy;

/// What to measure, and how big.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Messages in the drained backlog.
    pub messages: u64,
    /// `outboxd run` processes draining it.
    pub replicas: u32,
    /// Requests in flight per sidecar (`--concurrency`).
    pub concurrency: usize,
    /// Rows per claim (`--batch-size`).
    pub batch_size: usize,
    /// Payload size in bytes (a JSON object padded to this size).
    pub payload_bytes: usize,
    /// Endpoints registered.
    pub endpoints: u32,
    /// Endpoints each message goes to (at most `endpoints`).
    pub fan_out: u32,
    /// Tenants the endpoints are spread over (0: no tenant at all).
    pub tenants: u32,
    /// Finished rows for the claim-cost comparison.
    pub finished_rows: u64,
    /// How long each producer mode and the steady-load latency run.
    pub phase_secs: f64,
    /// An existing server to create the bench database on, instead of a
    /// throwaway cluster.
    pub database_url: Option<String>,
    /// The `outboxd` executable to run as sidecars.
    pub sidecar_bin: PathBuf,
    /// Run the sidecars (and the claim ceiling) with `--async-commit`.
    pub async_commit: bool,
    /// How long the in-process receiver waits before answering each
    /// request: a realistic receiver is not on loopback and does work, so
    /// requests stay in flight (and hold the sidecar's memory) that long.
    pub receiver_latency: Duration,
}

/// Everything the phases share.
pub struct Bench {
    /// The options.
    pub options: Options,
    /// The bench database.
    pub url: DatabaseUrl,
    /// For setup and bookkeeping.
    pub client: Client,
    /// The receiver every endpoint points at.
    pub receiver: Receiver,
    /// The secret every endpoint signs with.
    pub secret: Secret,
    /// Which tenant each endpoint and message belongs to.
    pub tenancy: Tenancy,
    started: Instant,
}

impl Bench {
    /// Prints a progress line on stderr.
    pub fn progress(&self, text: &str) {
        eprintln!("[{:>5.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    /// Empties the outbox tables between phases (endpoints stay).
    pub async fn reset(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute(
                "TRUNCATE outbox.attempts, outbox.deliveries, outbox.messages, outbox.events;
                 UPDATE outbox.endpoints SET failure_streak = 0, failing_since = NULL, last_success_at = NULL;",
            )
            .await
            .context("emptying the outbox tables")
    }

    /// Inserts `count` messages in one statement (one transaction), each of
    /// `payload_bytes`, with types spreading them over the endpoints.
    pub async fn insert_backlog(&self, count: u64, prefix: &str) -> anyhow::Result<()> {
        let pad = "x".repeat(self.options.payload_bytes.saturating_sub(40));
        // Message g has type t{g % endpoints}, and that type's tenant.
        self.client
            .execute(
                "INSERT INTO outbox.messages (event_id, event_type, payload, tenant_id)
                 SELECT $1 || g, 't' || (g % $3), jsonb_build_object('n', g, 'pad', $4::text),
                        CASE WHEN $5 > 0 THEN 't' || ((g % $3) % $5) END
                 FROM generate_series(1, $2::bigint) g",
                &[
                    &prefix,
                    &(count as i64),
                    &(self.options.endpoints as i64),
                    &pad,
                    &(self.tenancy.tenants() as i32),
                ],
            )
            .await
            .context("inserting the backlog")?;
        Ok(())
    }

    /// Deliveries that `messages` messages fan out to.
    pub fn deliveries_for(&self, messages: u64) -> u64 {
        messages * u64::from(self.options.fan_out)
    }
}

/// Runs every phase and returns the report.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (_cluster, url, created) = database(&options).await?;
    let report = phases(options, url, started).await;
    if let Some(created) = created {
        created.drop_now().await;
    }
    report
}

/// Every phase, on the bench database at `url`.
async fn phases(options: Options, url: DatabaseUrl, started: Instant) -> anyhow::Result<Report> {
    let db = Db::new(&url)?;
    let mut client = db.connect().await?;
    migrate::run(&mut client).await?;
    tenants::check_schema(&client, options.tenants).await?;
    let tenancy = Tenancy::new(options.tenants, options.endpoints, options.fan_out)
        .map_err(anyhow::Error::msg)?;
    let secret = Secret::generate();
    let latency = options.receiver_latency;
    let receiver = Receiver::start(Some(Verifier::new(vec![secret.clone()])), move |_| {
        Reply::ok().delay(latency)
    })
    .await?;
    let bench = Bench {
        options,
        url,
        client,
        receiver,
        secret,
        tenancy,
        started,
    };
    register_endpoints(&bench).await?;

    let mut report = Report::new(&bench).await?;
    bench.progress("ceiling: signed HTTP requests, no database");
    report.ceiling_http_per_sec = ceilings::http(&bench).await?;
    bench.progress("ceiling: claim and complete, no HTTP");
    report.ceiling_claim_rows_per_sec = ceilings::claim(&bench).await?;
    bench.progress("drain and latency with `outboxd run`");
    drain::run(&bench, &mut report).await?;
    bench
        .progress("producers: 8 concurrent single-row inserters, plain table and per wake-up mode");
    report.producer_inserts_per_sec = producers::run(&bench).await?;
    bench.progress("claim cost: empty table vs finished rows");
    (report.claim_ms_empty, report.claim_ms_with_finished) = claim_cost::run(&bench).await?;
    bench.progress("done");
    report.finish();
    Ok(report)
}

/// The bench database: a throwaway cluster (fsync on, wal_level=logical)
/// or a new database on `--database-url`'s server, dropped afterwards.
async fn database(
    options: &Options,
) -> anyhow::Result<(Option<TempPostgres>, DatabaseUrl, Option<CreatedDatabase>)> {
    match &options.database_url {
        None => {
            let cluster = tokio::task::spawn_blocking(|| {
                TempPostgres::start(&PgOptions {
                    unsafe_fast: false,
                    settings: vec![
                        ("wal_level".into(), "logical".into()),
                        ("max_replication_slots".into(), "16".into()),
                    ],
                })
            })
            .await?
            .context("starting a throwaway PostgreSQL for the benchmark")?;
            let url = DatabaseUrl::new(cluster.url("postgres"));
            Ok((Some(cluster), url, None))
        }
        Some(admin) => {
            let db = Db::new(&DatabaseUrl::new(admin.clone()))?;
            let client = db.connect().await?;
            let name = format!("outboxd_bench_{}", std::process::id());
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .context("creating the bench database (needs CREATEDB)")?;
            let url = rebuild_url(admin, &name);
            Ok((
                None,
                DatabaseUrl::new(url),
                Some(CreatedDatabase { client, name }),
            ))
        }
    }
}

/// Replaces the database name of a `postgres://` URL.
fn rebuild_url(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let without_db = match base.rfind('/') {
        Some(i) if i > base.find("//").map_or(0, |j| j + 1) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{without_db}/{database}?{q}"),
        None => format!("{without_db}/{database}"),
    }
}

/// The bench database on the user's server, dropped when the bench ends,
/// whether it succeeded or not. Awaited, not left to `Drop`: a task spawned
/// there never ran once the runtime shut down, and every run left its
/// database behind.
struct CreatedDatabase {
    client: Client,
    name: String,
}

impl CreatedDatabase {
    async fn drop_now(self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = self.client.batch_execute(&sql).await {
            eprintln!("could not drop the bench database {}: {error}", self.name);
        }
    }
}

/// Endpoints `e0..eN`, each subscribed to `fan_out` of the message types,
/// all pointing at the receiver, capped at the sidecar concurrency.
async fn register_endpoints(bench: &Bench) -> anyhow::Result<()> {
    for i in 0..bench.options.endpoints {
        let types = bench.tenancy.types_of(i, bench.options.fan_out);
        bench
            .client
            .execute(
                "INSERT INTO outbox.endpoints (id, url, secrets, event_types, max_in_flight, tenant_id)
                 VALUES ($1, $2, ARRAY[$3], $4, $5, $6)",
                &[
                    &format!("e{i}"),
                    &bench.receiver.url(),
                    &bench.secret.to_whsec(),
                    &types,
                    &((bench.options.concurrency * bench.options.replicas as usize).min(10_000)
                        as i32),
                    &bench.tenancy.of_endpoint(i),
                ],
            )
            .await
            .context("registering the bench endpoints")?;
    }
    Ok(())
}

/// Percentiles of `samples` (milliseconds), which are sorted here.
pub fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.50), at(0.95), at(0.99))
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_urls_for_another_database() {
        assert_eq!(
            rebuild_url("postgres://u:p@h:5/app?sslmode=disable", "b"),
            "postgres://u:p@h:5/b?sslmode=disable"
        );
        assert_eq!(rebuild_url("postgres://u@h", "b"), "postgres://u@h/b");
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&mut v), (51.0, 95.0, 99.0));
    }
}
