//! The command line: clap definitions (every flag also reads an environment
//! variable) and the glue from a parsed command to the library. Raw values
//! become a validated [`Config`] here; `anyhow` is used only at this edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::commands::{self, replay::Since, replay::Target};
use crate::config::{Config, DatabaseUrl, Retention, Wakeup, defaults};
use crate::db::{self, Db};
use crate::retry::{self, RetryPolicy};

/// Transactional-outbox webhook sidecar for PostgreSQL.
///
/// Applications INSERT into outbox.messages in their own transaction;
/// outboxd delivers each row as a signed Standard Webhook, retries, and
/// writes every outcome back for SQL queries.
#[derive(Debug, Parser)]
#[command(name = "outboxd", version, propagate_version = true, after_help = GETTING_STARTED)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr (filter with RUST_LOG, e.g. `info,outboxd=debug`).
    #[arg(long, env = "OUTBOXD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

const GETTING_STARTED: &str = "\
Getting started:
  outboxd demo                   see it work: a throwaway PostgreSQL and receiver, no setup
  outboxd migrate                create schema \"outbox\" in $DATABASE_URL
  outboxd endpoint add ID URL    register a receiver; prints its signing secret
  outboxd run                    deliver; /metrics, /healthz and /readyz on 127.0.0.1:9090

Every option also reads the environment variable that `outboxd COMMAND --help` shows.";

const RUN_EXAMPLES: &str = "\
Examples:
  DATABASE_URL=postgres://outboxd@db/shop outboxd run --migrate
  OUTBOXD_ADMIN_ADDR=0.0.0.0:9090 outboxd run --log-format json    # in a container
  outboxd run --print-config                                       # what would run";

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
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Ask a running sidecar's admin server whether it is healthy; exit 0 if so, 1 if not.
    ///
    /// For container health checks where there is no shell or curl (the
    /// distroless image): `HEALTHCHECK CMD ["outboxd", "healthcheck"]`.
    #[command(display_order = 100)]
    Healthcheck(HealthcheckArgs),
    /// Create or upgrade the outbox schema (safe to repeat, safe to run concurrently).
    Migrate(DatabaseArgs),
    /// Backlog, oldest pending, dead and health per endpoint.
    Status(StatusArgs),
    /// Add, list, enable, disable, rotate the secret of, or test an endpoint.
    Endpoint(EndpointArgs),
    /// Send dead deliveries again: one by id, or an endpoint's since a time.
    Replay(ReplayArgs),
    /// Send a message to one of its endpoints again, delivered ones included.
    Resend(commands::resend::ResendArgs),
    /// Give an endpoint the messages it missed over a time range (older than it included).
    Recover(commands::recover::RecoverArgs),
    /// Set an endpoint's own retry schedule (overrides the sidecar's), or --reset it.
    RetrySchedule(commands::retry_schedule::RetryScheduleArgs),
    /// Start a throwaway Postgres and receiver, send a few events, show their status.
    Demo(DemoArgs),
    /// Check a received webhook's signature (for receivers and debugging).
    Verify(VerifyArgs),
    /// Feed outbox.messages from an existing outbox table (Debezium's columns by default).
    Adopt(commands::adopt::AdoptArgs),
    /// Stop feeding outbox.messages from an adopted table (drops only what adopt installed).
    Unadopt(commands::adopt::UnadoptArgs),
    /// Generate an endpoint key: an ed25519 pair (whsk_ secret key, whpk_ public key) or,
    /// with --hmac, a whsec_ secret.
    Keygen(KeygenArgs),
    /// Measure throughput, latency, producer cost and claim cost beside the machine's ceilings.
    Bench(BenchArgs),
}

/// Settings of `outboxd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Create the bench database on this server instead of starting a throwaway one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Messages in the drained backlog.
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// `outboxd run` processes draining it.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Requests in flight per sidecar.
    #[arg(long, default_value_t = defaults::CONCURRENCY)]
    pub concurrency: usize,
    /// Rows per claim.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    pub payload_bytes: usize,
    /// Endpoints (all on the in-process receiver).
    #[arg(long, default_value_t = 1)]
    pub endpoints: u32,
    /// Endpoints each message goes to (at most --endpoints).
    #[arg(long, default_value_t = 1)]
    pub fan_out: u32,
    /// Spread the endpoints over this many tenants, each message carrying its tenant (0: none).
    #[arg(long, default_value_t = 0)]
    pub tenants: u32,
    /// Finished rows beside the second claim-cost measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub finished_rows: u64,
    /// Seconds for each producer mode and for the steady-load latency.
    #[arg(long, default_value_t = 5.0)]
    pub phase_secs: f64,
    /// Run the sidecars with --async-commit (their outcome writes skip the WAL flush wait).
    #[arg(long)]
    pub async_commit: bool,
    /// The in-process receiver waits this long before answering each request (e.g. 50ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub receiver_latency: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Settings of `outboxd status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this tenant's endpoints.
    #[arg(long)]
    tenant: Option<String>,
}

/// `outboxd endpoint ...`.
#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(subcommand)]
    command: EndpointCommand,
}

/// The endpoint subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum EndpointCommand {
    /// Register an endpoint; prints a generated signing secret once.
    Add {
        /// A short name, e.g. billing.
        id: String,
        /// Where to POST, http:// or https://.
        url: String,
        /// Subscribe to this event type (repeatable); none means every type.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Use this whsec_ secret instead of generating one.
        #[arg(long, env = "OUTBOXD_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Request timeout for this endpoint (default: the sidecar's).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// The customer (tenant) it belongs to: it receives only that
        /// tenant's messages (none: messages without a tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List endpoints (secrets are never shown; URL credentials and query
    /// strings are masked).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enable an endpoint: its pending deliveries resume.
    Enable {
        /// The endpoint.
        id: String,
    },
    /// Disable an endpoint: its deliveries stay pending until enabled.
    Disable {
        /// The endpoint.
        id: String,
        /// Why (stored in disabled_reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start signing with a new secret (kept beside the old ones until --drop-old).
    RotateSecret {
        /// The endpoint.
        id: String,
        /// Use this whsec_ secret instead of generating one.
        #[arg(long, env = "OUTBOXD_ENDPOINT_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Keep only the newest secret (alone: end a rotation).
        #[arg(long)]
        drop_old: bool,
    },
    /// Send a signed test event through the running sidecar and show the answer.
    Test {
        /// The endpoint.
        id: String,
        /// How long to wait for the attempt.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

/// Settings of `outboxd replay`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["delivery", "endpoint"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Replay this dead delivery (outbox.deliveries.id).
    #[arg(long)]
    delivery: Option<i64>,
    /// Replay this endpoint's dead deliveries...
    #[arg(long, requires = "since")]
    endpoint: Option<String>,
    /// ...that died since this time (2026-11-28T12:00:00Z) or this long ago (2h).
    #[arg(long)]
    since: Option<Since>,
    /// Refuse unless the delivery or endpoint belongs to this tenant
    /// (support staff replaying for one customer).
    #[arg(long)]
    tenant: Option<String>,
}

/// Where the outbox lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string, e.g. postgres://user:pass@host/db?sslmode=verify-full (TLS: sslmode, sslrootcert, sslcert, sslkey as in libpq).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Settings of `outboxd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten, next_help_heading = "Database")]
    database: DatabaseArgs,
    /// Apply pending migrations before starting.
    #[arg(long, help_heading = "Database", env = "OUTBOXD_MIGRATE")]
    pub migrate: bool,
    /// How new rows are noticed: notify (LISTEN), logical (replication slot) or poll (state poll only).
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_WAKEUP", value_enum, default_value_t = Wakeup::Notify)]
    wakeup: Wakeup,
    /// Safety-net state poll (scheduled retries, deliver_after, missed wake-ups).
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_POLL_INTERVAL", default_value = defaults::POLL_INTERVAL, value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often logical wake-up reads its replication slot.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_LOGICAL_INTERVAL", default_value = defaults::LOGICAL_INTERVAL, value_parser = humantime::parse_duration)]
    logical_interval: Duration,
    /// How long a claim is held (a crashed replica's rows are re-claimed after it); must exceed
    /// --request-timeout by 5 s.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_LEASE", default_value = defaults::LEASE, value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Default whole-request timeout, response body included (an endpoint's timeout_ms overrides it).
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// TCP and TLS connect timeout.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_CONNECT_TIMEOUT", default_value = defaults::CONNECT_TIMEOUT, value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Delay before each attempt, comma-separated; its length is the maximum number of attempts.
    #[arg(long, help_heading = "Retries and failing endpoints", env = "OUTBOXD_RETRY_SCHEDULE", default_value = retry::DEFAULT_SCHEDULE)]
    retry_schedule: String,
    /// Longest delay a receiver's Retry-After (on 429 and 503) may impose.
    #[arg(long, help_heading = "Retries and failing endpoints", env = "OUTBOXD_MAX_RETRY_AFTER", default_value = "1h", value_parser = humantime::parse_duration)]
    max_retry_after: Duration,
    /// Most rows claimed by one statement.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_BATCH_SIZE", default_value_t = defaults::BATCH_SIZE)]
    batch_size: usize,
    /// Most HTTP requests in flight at once in this process.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_CONCURRENCY", default_value_t = defaults::CONCURRENCY)]
    concurrency: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish before they are released.
    #[arg(long, help_heading = "Shutdown and admin server", env = "OUTBOXD_SHUTDOWN_GRACE", default_value = defaults::SHUTDOWN_GRACE, value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Lease owner name (default: hostname-pid-random); must be unique per running process.
    #[arg(long, help_heading = "Delivery", env = "OUTBOXD_WORKER_ID")]
    worker_id: Option<String>,
    /// Disable an endpoint whose every attempt has failed for this long (its deliveries stay pending).
    #[arg(long, help_heading = "Retries and failing endpoints", env = "OUTBOXD_DISABLE_AFTER", default_value = defaults::DISABLE_AFTER, value_parser = humantime::parse_duration)]
    disable_after: Duration,
    /// Address of the admin server (/metrics, /healthz, /readyz); 0.0.0.0:9090 for Kubernetes probes.
    #[arg(long, help_heading = "Shutdown and admin server", env = "OUTBOXD_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    admin_addr: SocketAddr,
    /// Do not start the admin server.
    #[arg(
        long,
        help_heading = "Shutdown and admin server",
        env = "OUTBOXD_NO_ADMIN"
    )]
    no_admin: bool,
    /// Serve the web console under /console of the admin server to whoever signs in with this
    /// token (at least 16 characters); unset: no console.
    #[arg(
        long,
        help_heading = "Shutdown and admin server",
        env = "OUTBOXD_CONSOLE_TOKEN",
        hide_env_values = true
    )]
    console_token: Option<String>,
    /// Keep delivered and cancelled deliveries (and their attempts) this long.
    #[arg(long, help_heading = "Retention", env = "OUTBOXD_RETENTION", default_value = defaults::RETENTION, value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Keep dead deliveries and operational events this long (they wait for replay or cancel).
    #[arg(long, help_heading = "Retention", env = "OUTBOXD_DEAD_RETENTION", default_value = defaults::DEAD_RETENTION, value_parser = humantime::parse_duration)]
    dead_retention: Duration,
    /// Time between retention purge rounds (one replica purges at a time).
    #[arg(long, help_heading = "Retention", env = "OUTBOXD_PURGE_INTERVAL", default_value = defaults::PURGE_INTERVAL, value_parser = humantime::parse_duration)]
    purge_interval: Duration,
    /// Never delete anything (no retention purge).
    #[arg(long, help_heading = "Retention", env = "OUTBOXD_NO_PURGE")]
    no_purge: bool,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long, help_heading = "Shutdown and admin server")]
    pub print_config: bool,
    /// Let endpoints reach this otherwise refused range (loopback, private, link-local, ...),
    /// e.g. 10.20.0.0/16 or 127.0.0.1; repeatable, comma-separated in the env var.
    #[arg(long = "allow-network", help_heading = "Egress", env = "OUTBOXD_ALLOW_NETWORKS", value_delimiter = ',', value_parser = crate::delivery::egress::parse_network)]
    allow_networks: Vec<ipnet::IpNet>,
    /// Send every webhook through this HTTP proxy, e.g. `http://egress.internal:3128` (static
    /// egress IPs). HTTP_PROXY/HTTPS_PROXY are ignored; targets are still checked.
    #[arg(long, help_heading = "Egress", env = "OUTBOXD_EGRESS_PROXY", hide_env_values = true, value_parser = crate::delivery::egress::EgressProxy::parse)]
    egress_proxy: Option<crate::delivery::egress::EgressProxy>,
    /// Longest wait between attempts to reach the database (backoff from 100 ms, doubling).
    #[arg(long, env = "OUTBOXD_RECONNECT_MAX", default_value = defaults::RECONNECT_MAX, value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
    /// Let outcome writes skip waiting for the WAL flush, as claims always do: faster, but
    /// after a database crash some deliveries are sent again (never lost).
    #[arg(long, env = "OUTBOXD_ASYNC_COMMIT", help_heading = "Database")]
    async_commit: bool,
}

impl RunArgs {
    /// The validated configuration.
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = Config {
            database_url: DatabaseUrl::new(self.database.database_url.clone()),
            wakeup: self.wakeup,
            poll_interval: self.poll_interval,
            logical_interval: self.logical_interval,
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
            disable_after: self.disable_after,
            admin_addr: (!self.no_admin).then_some(self.admin_addr),
            admin_limits: Default::default(),
            retention: (!self.no_purge).then_some(Retention {
                finished: self.retention,
                dead: self.dead_retention,
                every: self.purge_interval,
            }),
            allow_networks: self.allow_networks.clone(),
            egress_proxy: self.egress_proxy.clone(),
            reconnect_max: self.reconnect_max,
            async_commit: self.async_commit,
            console_token: self
                .console_token
                .clone()
                .map(crate::console::ConsoleToken::new),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Settings of `outboxd healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The sidecar's --admin-addr; 0.0.0.0 (as in containers) is asked on 127.0.0.1.
    #[arg(long, env = "OUTBOXD_ADMIN_ADDR", default_value = defaults::ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// What to ask: /healthz (the process is alive) or /readyz (it can deliver now).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Report unhealthy when there is no answer within this time.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
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
    /// Endpoint secret (whsec_...) or ed25519 public key (whpk_...); repeat during a rotation.
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

/// Settings of `outboxd keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Print a symmetric whsec_ secret (shared with the receiver) instead of a key pair.
    #[arg(long)]
    pub hmac: bool,
}

/// Runs a parsed command to completion.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = args.config()?;
            if args.print_config {
                print!("{}", config.describe());
                return Ok(());
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            crate::sidecar::run(config, args.migrate, shutdown).await?;
            Ok(())
        }
        Command::Healthcheck(args) => commands::healthcheck::run(&args).await,
        Command::Migrate(args) => {
            let db = Db::new(&DatabaseUrl::new(args.database_url))?.with_pinned_search_path();
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
        Command::Status(args) => {
            let client = connect(&args.database).await?;
            commands::status::run(&client, args.json, args.tenant.as_deref()).await
        }
        Command::Endpoint(args) => {
            let client = connect(&args.database).await?;
            commands::endpoint::execute(&client, args.command).await
        }
        Command::Replay(args) => {
            let client = connect(&args.database).await?;
            let target = match (args.delivery, args.endpoint, args.since) {
                (Some(id), _, _) => Target::Delivery(id),
                (None, Some(id), Some(since)) => Target::Endpoint { id, since },
                _ => bail!("give --delivery ID, or --endpoint ID with --since"),
            };
            commands::replay::run(&client, &target, args.tenant.as_deref()).await
        }
        Command::Resend(args) => {
            let client = connect(&args.database).await?;
            commands::resend::run(&client, &args).await
        }
        Command::Recover(args) => {
            let client = connect(&args.database).await?;
            commands::recover::run(&client, &args).await
        }
        Command::RetrySchedule(args) => {
            let client = connect(&args.database).await?;
            commands::retry_schedule::run(&client, &args).await
        }
        Command::Demo(args) => crate::demo::run(args.database_url).await,
        Command::Verify(args) => commands::verify::run(&args),
        Command::Keygen(args) => commands::keygen::run(&args),
        Command::Bench(args) => commands::bench::run(args).await,
        // The table is named as the user's search_path resolves it; the
        // statements only call outbox's own (pinned) functions.
        Command::Adopt(args) => {
            let client = connect_unpinned(&args.database).await?;
            commands::adopt::adopt(&client, &args).await
        }
        Command::Unadopt(args) => {
            let client = connect_unpinned(&args.database).await?;
            commands::adopt::unadopt(&client, &args.table).await
        }
    }
}

/// A session whose names resolve in `pg_catalog` only (see
/// [`Db::with_pinned_search_path`]): operators often run commands as a
/// privileged role.
async fn connect(database: &DatabaseArgs) -> anyhow::Result<tokio_postgres::Client> {
    let db = Db::new(&DatabaseUrl::new(database.database_url.clone()))?.with_pinned_search_path();
    Ok(db.connect().await?)
}

/// A session with the user's own `search_path`.
async fn connect_unpinned(database: &DatabaseArgs) -> anyhow::Result<tokio_postgres::Client> {
    let db = Db::new(&DatabaseUrl::new(database.database_url.clone()))?;
    Ok(db.connect().await?)
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
