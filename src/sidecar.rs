//! `outboxd run`: wires the listener, the dispatcher and the outcome writer
//! together and owns the shutdown sequence. The shutdown trigger is a
//! parameter, so tests and the demo run the whole sidecar in-process.
//!
//! Shutdown: stop claiming; give in-flight requests the grace period to
//! finish; cancel the rest and release their claims; write every outcome;
//! return.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Readiness};
use crate::config::{Config, ConfigError, Wakeup};
use crate::console::Console;
use crate::db::migrate::{self, MIGRATIONS};
use crate::db::{Db, DbError};
use crate::delivery::Deliverer;
use crate::delivery::request::ClientError;
use crate::dispatcher::{Dispatcher, Signals};
use crate::router::Router;
use crate::wakeup::{self, logical};
use crate::writer::Writer;
use crate::{maintenance, telemetry};

/// How long the writer may keep retrying after shutdown before it gives up
/// on outcomes it cannot store (their leases then expire: redelivered).
const FINAL_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// outboxd warns when its clock and the database's differ by more.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(30);

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// See [`ClientError`].
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The database refused us for a reason reconnecting will not fix.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Logical wake-up cannot run on this server or role.
    #[error(transparent)]
    Logical(#[from] logical::LogicalError),
    /// The admin address is taken or not ours.
    #[error(
        "cannot serve the admin server on {addr}: {source} (change --admin-addr or pass --no-admin)"
    )]
    AdminBind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The outbox schema is missing or older than this binary.
    #[error(
        "the database schema is at version {found} (or misses an earlier migration), this outboxd needs {needed}: \
         run `outboxd migrate` (or `outboxd run --migrate`)"
    )]
    NotMigrated {
        /// The newest applied migration (0: none).
        found: i32,
        /// The newest embedded migration.
        needed: i32,
    },
}

/// Runs the sidecar until `shutdown` fires, then drains and returns.
/// `migrate` applies pending migrations first.
pub async fn run(
    config: Config,
    migrate: bool,
    shutdown: CancellationToken,
) -> Result<(), SidecarError> {
    config.validate()?;
    let config = Arc::new(config);
    let mut db = Db::new(&config.database_url)?
        .with_reconnect_max(config.reconnect_max)
        .with_pinned_search_path();
    if config.async_commit {
        db = db.with_async_commit();
    }
    let deliverer = Deliverer::new(&config)?;
    if !prepare_database(&db, &config, migrate, &shutdown).await? {
        return Ok(());
    }

    let wake = Arc::new(Notify::new());
    let (outcomes, outcome_queue) = mpsc::channel(config.concurrency * 2 + 64);
    let writer_give_up = CancellationToken::new();
    let writer = Writer::new(
        db.clone(),
        config.worker_id.clone(),
        config.disable_after,
        outcome_queue,
        wake.clone(),
    );
    let mut writer = tokio::spawn(writer.run(writer_give_up.clone()));

    let stop_listening = CancellationToken::new();
    let listening = Arc::new(AtomicBool::new(false));
    let listener = wakeup::spawn(
        config.wakeup,
        db.clone(),
        logical::slot_name(&config.worker_id),
        config.logical_interval,
        wake.clone(),
        listening.clone(),
        stop_listening.clone(),
    );

    let readiness = Arc::new(Readiness::new(
        db.clone(),
        (config.wakeup != Wakeup::Poll).then(|| listening.clone()),
    ));
    let admin = match config.admin_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| SidecarError::AdminBind { addr, source })?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "admin server on /metrics, /healthz, /readyz");
            telemetry::handle();
            let console = config.console_token.as_ref().map(|token| {
                tracing::info!("web console on /console");
                Arc::new(Console::new(token, db.clone()))
            });
            Some(tokio::spawn(admin::serve(
                listener,
                readiness.clone(),
                console,
                config.admin_limits,
                stop_listening.clone(),
            )))
        }
        None => None,
    };
    let backlog = Arc::new(Notify::new());
    let router = tokio::spawn(
        // A route a database crash forgets is simply routed again.
        Router::new(
            db.clone().with_async_commit(),
            backlog.clone(),
            wake.clone(),
        )
        .run(stop_listening.clone()),
    );
    let housekeeping = tokio::spawn(maintenance::run(
        db.clone(),
        config.retention,
        stop_listening.clone(),
    ));

    let tasks = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    tracing::info!(worker_id = %config.worker_id, wakeup = ?config.wakeup, "outboxd running");
    Dispatcher::new(
        config.clone(),
        db,
        deliverer,
        outcomes,
        Signals {
            wake,
            route_backlog: backlog,
        },
        tasks.clone(),
        hard_stop.clone(),
    )
    .run(shutdown)
    .await;

    readiness.drain();
    tracing::info!(in_flight = tasks.len(), "shutting down: no new claims");
    tasks.close();
    if tokio::time::timeout(config.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.len(),
            "grace period over: cancelling in-flight requests and releasing their claims"
        );
        hard_stop.cancel();
        tasks.wait().await;
    }
    // Every sender is gone now, so the writer ends once its queue is stored.
    if tokio::time::timeout(FINAL_WRITE_DEADLINE, &mut writer)
        .await
        .is_err()
    {
        writer_give_up.cancel();
        let _ = writer.await;
    }
    stop_listening.cancel();
    for task in [listener, admin, Some(housekeeping), Some(router)]
        .into_iter()
        .flatten()
    {
        let _ = task.await;
    }
    tracing::info!("outboxd stopped");
    Ok(())
}

/// Waits for the database (a sidecar may start before it), checks the
/// schema version and the clocks. `Ok(false)`: shut down while waiting.
async fn prepare_database(
    db: &Db,
    config: &Config,
    migrate: bool,
    shutdown: &CancellationToken,
) -> Result<bool, SidecarError> {
    let mut backoff = db.backoff();
    let mut client = loop {
        match db.connect().await {
            Ok(client) => break client,
            Err(error) if error.is_connection_lost() => {
                tracing::warn!(%error, "database not reachable yet; retrying");
            }
            Err(error) => return Err(error.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    };
    if migrate {
        let applied = migrate::run(&mut client).await?;
        tracing::info!(?applied, "migrations applied");
    }
    // Every embedded migration, not just the newest: numbers merged from
    // parallel work may fill a gap below the newest applied one.
    let needed = MIGRATIONS.last().map_or(0, |m| m.version);
    let applied = applied_versions(&client).await?;
    if MIGRATIONS.iter().any(|m| !applied.contains(&m.version)) {
        let found = applied.iter().copied().max().unwrap_or(0);
        return Err(SidecarError::NotMigrated { found, needed });
    }
    if config.wakeup == Wakeup::Logical {
        logical::check(&client).await?;
    }
    warn_on_clock_skew(&client).await?;
    Ok(true)
}

/// The newest applied migration, 0 when the schema does not exist.
pub async fn schema_version(client: &tokio_postgres::Client) -> Result<i32, DbError> {
    Ok(applied_versions(client)
        .await?
        .into_iter()
        .max()
        .unwrap_or(0))
}

/// Every applied migration's version; none when the schema does not exist.
async fn applied_versions(client: &tokio_postgres::Client) -> Result<Vec<i32>, DbError> {
    let during = DbError::during("reading the schema version");
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('outbox.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(during)?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client
        .query("SELECT version FROM outbox.schema_migrations", &[])
        .await
        .map_err(DbError::during("reading the schema version"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// `webhook-timestamp` uses our clock, leases use the database's.
async fn warn_on_clock_skew(client: &tokio_postgres::Client) -> Result<(), DbError> {
    let db_now: SystemTime = client
        .query_one("SELECT now()", &[])
        .await
        .map_err(DbError::during("reading the database clock"))?
        .get(0);
    let ours = SystemTime::now();
    let skew = ours
        .duration_since(db_now)
        .or_else(|_| db_now.duration_since(ours))
        .unwrap_or_default();
    if skew > CLOCK_SKEW_WARNING {
        tracing::warn!(
            skew_secs = skew.as_secs(),
            "this machine's clock and the database's differ; receivers may reject webhook-timestamp"
        );
    }
    Ok(())
}
