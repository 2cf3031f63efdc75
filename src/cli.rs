//! The command line: clap definitions (every flag also reads an environment
//! variable) and the glue from a parsed command to the library. Raw values
//! become a validated [`Config`] here; `anyhow` is used only at this edge.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DatabaseUrl, Wakeup, defaults};
use crate::db::{self, Db};
use crate::retry::{self, RetryPolicy};
use crate::signature::{Secret, Verifier};

/// Transactional-outbox webhook sidecar for PostgreSQL.
///
/// Applications INSERT into outbox.messages in their own transaction;
/// outboxd delivers each row as a signed Standard Webhook, retries, and
/// writes every outcome back for SQL queries.
#[derive(Debug, Parser)]
#[command(name = "outboxd", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr (filter with RUST_LOG, e.g. `info,outboxd=debug`).
    #[arg(long, env = "OUTBOXD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: claim due deliveries, sign and POST them, record outcomes.
    Run(RunArgs),
    /// Create or upgrade the outbox schema (safe to repeat, safe to run concurrently).
    Migrate(DatabaseArgs),
    /// Start a throwaway Postgres and receiver, send a few events, show their status.
    Demo(DemoArgs),
    /// Check a received webhook's signature (for receivers and debugging).
    Verify(VerifyArgs),
}

/// Where the outbox lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string, e.g. postgres://user:pass@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Settings of `outboxd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Apply pending migrations before starting.
    #[arg(long, env = "OUTBOXD_MIGRATE")]
    pub migrate: bool,
    /// How new rows are noticed: notify (LISTEN) or poll (state poll only).
    #[arg(long, env = "OUTBOXD_WAKEUP", value_enum, default_value_t = Wakeup::Notify)]
    wakeup: Wakeup,
    /// Safety-net state poll (scheduled retries, deliver_after, missed wake-ups).
    #[arg(long, env = "OUTBOXD_POLL_INTERVAL", default_value = defaults::POLL_INTERVAL, value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How long a claim is held; a crashed replica's rows are re-claimed after it.
    #[arg(long, env = "OUTBOXD_LEASE", default_value = defaults::LEASE, value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Default whole-request timeout (an endpoint's timeout_ms overrides it).
    #[arg(long, env = "OUTBOXD_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// TCP and TLS connect timeout.
    #[arg(long, env = "OUTBOXD_CONNECT_TIMEOUT", default_value = defaults::CONNECT_TIMEOUT, value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Delay before each attempt, comma-separated; its length is the maximum number of attempts.
    #[arg(long, env = "OUTBOXD_RETRY_SCHEDULE", default_value = retry::DEFAULT_SCHEDULE)]
    retry_schedule: String,
    /// Longest delay a receiver's Retry-After may impose.
    #[arg(long, env = "OUTBOXD_MAX_RETRY_AFTER", default_value = "1h", value_parser = humantime::parse_duration)]
    max_retry_after: Duration,
    /// Most rows claimed by one statement.
    #[arg(long, env = "OUTBOXD_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE)]
    batch_size: usize,
    /// Most HTTP requests in flight at once.
    #[arg(long, env = "OUTBOXD_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    concurrency: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish before they are released.
    #[arg(long, env = "OUTBOXD_SHUTDOWN_GRACE", default_value = defaults::SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Lease owner name (default: hostname-pid-random); must be unique per running process.
    #[arg(long, env = "OUTBOXD_WORKER_ID")]
    worker_id: Option<String>,
    /// Longest wait between attempts to reach the database (backoff from 100 ms, doubling).
    #[arg(long, env = "OUTBOXD_RECONNECT_MAX", default_value = defaults::RECONNECT_MAX, value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
}

impl RunArgs {
    /// The validated configuration.
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = Config {
            database_url: DatabaseUrl::new(self.database.database_url.clone()),
            wakeup: self.wakeup,
            poll_interval: self.poll_interval,
            lease: self.lease,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            retry: RetryPolicy::parse(&self.retry_schedule, self.max_retry_after)
                .context("OUTBOXD_RETRY_SCHEDULE")?,
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            shutdown_grace: self.shutdown_grace,
            worker_id: self
                .worker_id
                .clone()
                .unwrap_or_else(crate::config::default_worker_id),
            reconnect_max: self.reconnect_max,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Settings of `outboxd demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this database instead of a throwaway local cluster.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

/// Settings of `outboxd verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Endpoint secret (whsec_...); repeat during a rotation.
    #[arg(
        long = "secret",
        env = "OUTBOXD_VERIFY_SECRETS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub secrets: Vec<String>,
    /// The webhook-id header.
    #[arg(long)]
    pub id: String,
    /// The webhook-timestamp header.
    #[arg(long)]
    pub timestamp: String,
    /// The webhook-signature header.
    #[arg(long)]
    pub signature: String,
    /// File holding the exact request body; `-` reads standard input.
    #[arg(long, default_value = "-")]
    pub body: PathBuf,
    /// How far the timestamp may be from this machine's clock.
    #[arg(long, env = "OUTBOXD_VERIFY_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub tolerance: Duration,
}

/// Runs a parsed command to completion.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = args.config()?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            crate::sidecar::run(config, args.migrate, shutdown).await?;
            Ok(())
        }
        Command::Migrate(args) => {
            let db = Db::new(&DatabaseUrl::new(args.database_url))?;
            let mut client = db.connect().await?;
            let applied = db::migrate::run(&mut client).await?;
            if applied.is_empty() {
                println!("outbox schema is up to date");
            }
            for name in applied {
                println!("applied {name}");
            }
            Ok(())
        }
        Command::Demo(args) => crate::demo::run(args.database_url).await,
        Command::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let secrets = args
        .secrets
        .iter()
        .enumerate()
        .map(|(i, s)| Secret::parse(s).with_context(|| format!("--secret #{}", i + 1)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = if args.body.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the body from stdin")?;
        body
    } else {
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?
    };
    let verifier = Verifier::new(secrets).with_tolerance(args.tolerance);
    if let Err(error) = verifier.verify(&args.id, &args.timestamp, &args.signature, &body) {
        bail!("invalid: {error}");
    }
    println!("valid");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
