//! `outboxd run` and `outboxd migrate`: from options to a validated
//! [`Config`], then the sidecar until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use tokio_util::sync::CancellationToken;

use super::database::DatabaseArgs;
use super::usage::Usage;
use crate::config::{Config, ConsoleToken, DatabaseUrl, Pooler, Retention, Wakeup, defaults};
use crate::db::migrate;
use crate::retry::{self, RetryPolicy};

pub(super) const RUN_EXAMPLES: &str = "\
Examples:
  DATABASE_URL=postgres://outboxd@db/shop outboxd run --migrate
  OUTBOXD_ADMIN_ADDR=0.0.0.0:9090 outboxd run --log-format json    # in a container
  outboxd run --print-config                                       # what would run";

/// Settings of `outboxd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten, next_help_heading = "Database")]
    database: DatabaseArgs,
    /// What DATABASE_URL reaches: none (the server, or a session-mode pooler) or transaction (a
    /// transaction-mode pooler: PgBouncer, RDS Proxy, Supavisor on 6543); see README.
    #[arg(long, help_heading = "Database", env = "OUTBOXD_POOLER", value_enum, default_value_t = Pooler::None)]
    pooler: Pooler,
    /// A direct, unpooled URL used only for the wake-up (LISTEN or the logical slot); with
    /// --pooler transaction and none, outboxd polls.
    #[arg(
        long,
        help_heading = "Database",
        env = "OUTBOXD_LISTEN_DATABASE_URL",
        hide_env_values = true
    )]
    listen_database_url: Option<String>,
    /// Apply pending migrations before starting.
    #[arg(long, help_heading = "Database", env = "OUTBOXD_MIGRATE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
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
        env = "OUTBOXD_NO_ADMIN",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
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
    #[arg(long, help_heading = "Retention", env = "OUTBOXD_NO_PURGE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    no_purge: bool,
    /// Print the effective configuration (secrets masked) and exit.
    #[arg(long, help_heading = "Shutdown and admin server")]
    pub print_config: bool,
    /// Let endpoints reach this otherwise refused range (loopback, private, link-local, ...),
    /// e.g. 10.20.0.0/16 or 127.0.0.1; repeatable, comma-separated in the env var.
    #[arg(long = "allow-network", help_heading = "Egress", env = "OUTBOXD_ALLOW_NETWORKS", value_delimiter = ',', value_parser = crate::config::parse_network)]
    allow_networks: Vec<ipnet::IpNet>,
    /// Send every webhook through this HTTP proxy, e.g. `http://egress.internal:3128` (static
    /// egress IPs). HTTP_PROXY/HTTPS_PROXY are ignored; targets are still checked.
    #[arg(long, help_heading = "Egress", env = "OUTBOXD_EGRESS_PROXY", hide_env_values = true, value_parser = crate::config::EgressProxy::parse)]
    egress_proxy: Option<crate::config::EgressProxy>,
    /// Longest wait between attempts to reach the database (backoff from 100 ms, doubling).
    #[arg(long, env = "OUTBOXD_RECONNECT_MAX", default_value = defaults::RECONNECT_MAX, value_parser = humantime::parse_duration)]
    reconnect_max: Duration,
    /// Let outcome writes skip waiting for the WAL flush, as claims always do: faster, but
    /// after a database crash some deliveries are sent again (never lost).
    #[arg(long, env = "OUTBOXD_ASYNC_COMMIT", help_heading = "Database", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    async_commit: bool,
}

impl RunArgs {
    /// The validated configuration.
    ///
    /// Every mistake is a [`Usage`] error (exit 2), found before anything
    /// connects; `--print-config` checks exactly the same.
    pub fn config(&self) -> anyhow::Result<Config> {
        let config = Config {
            database_url: self.database.url()?,
            pooler: self.pooler,
            listen_database_url: self.listen_database_url.clone().map(DatabaseUrl::new),
            wakeup: self.wakeup,
            poll_interval: self.poll_interval,
            logical_interval: self.logical_interval,
            lease: self.lease,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            retry: RetryPolicy::parse(&self.retry_schedule, self.max_retry_after).map_err(
                |error| {
                    Usage::error(format!(
                        "--retry-schedule (OUTBOXD_RETRY_SCHEDULE): {error}"
                    ))
                },
            )?,
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
            console_token: self.console_token.clone().map(ConsoleToken::new),
        };
        config.validate().map_err(Usage::from_error)?;
        // What the sidecar does first: parse the URL and read the TLS
        // files it names.
        self.database.db()?;
        Ok(config)
    }
}

/// Runs the sidecar until SIGTERM or SIGINT (or prints the configuration).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    if args.print_config {
        print!("{}", config.describe());
        println!("migrate = {}", args.migrate);
        return Ok(());
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    crate::sidecar::run(config, args.migrate, shutdown).await?;
    Ok(())
}

/// Applies pending migrations and says which. Always as through a
/// transaction-mode pooler (no startup options; one transaction with its
/// settings as `SET LOCAL`), which works on a direct connection too.
pub async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let db = args
        .db()?
        .with_pooler(Pooler::Transaction)
        .with_pinned_search_path();
    let mut client = db.connect().await?;
    let applied = migrate::run_on(&db, &mut client).await?;
    if applied.is_empty() {
        println!("outbox schema is up to date");
    }
    for name in applied {
        println!("applied {name}");
    }
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
