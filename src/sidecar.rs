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

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Wakeup};
use crate::db::migrate::{self, MIGRATIONS};
use crate::db::{Db, DbError};
use crate::delivery::Deliverer;
use crate::delivery::request::ClientError;
use crate::dispatcher::Dispatcher;
use crate::listener;
use crate::writer::Writer;

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
    /// The outbox schema is missing or older than this binary.
    #[error(
        "the database schema is at version {found}, this outboxd needs {needed}: \
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
    let db = Db::new(&config.database_url)?.with_reconnect_max(config.reconnect_max);
    let deliverer = Deliverer::new(&config)?;
    if !prepare_database(&db, migrate, &shutdown).await? {
        return Ok(());
    }

    let wake = Arc::new(Notify::new());
    let (outcomes, outcome_queue) = mpsc::channel(config.concurrency * 2 + 64);
    let writer_give_up = CancellationToken::new();
    let writer = Writer::new(
        db.clone(),
        config.worker_id.clone(),
        outcome_queue,
        wake.clone(),
    );
    let mut writer = tokio::spawn(writer.run(writer_give_up.clone()));

    let stop_listening = CancellationToken::new();
    let listening = Arc::new(AtomicBool::new(false));
    let listener = (config.wakeup == Wakeup::Notify).then(|| {
        tokio::spawn(listener::run(
            db.clone(),
            wake.clone(),
            listening.clone(),
            stop_listening.clone(),
        ))
    });

    let tasks = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    tracing::info!(worker_id = %config.worker_id, wakeup = ?config.wakeup, "outboxd running");
    Dispatcher::new(
        config.clone(),
        db,
        deliverer,
        outcomes,
        wake,
        tasks.clone(),
        hard_stop.clone(),
    )
    .run(shutdown)
    .await;

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
    if let Some(listener) = listener {
        let _ = listener.await;
    }
    tracing::info!("outboxd stopped");
    Ok(())
}

/// Waits for the database (a sidecar may start before it), checks the
/// schema version and the clocks. `Ok(false)`: shut down while waiting.
async fn prepare_database(
    db: &Db,
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
    let needed = MIGRATIONS.last().map_or(0, |m| m.version);
    let found = schema_version(&client).await?;
    if found < needed {
        return Err(SidecarError::NotMigrated { found, needed });
    }
    warn_on_clock_skew(&client).await?;
    Ok(true)
}

/// The newest applied migration, 0 when the schema does not exist.
pub async fn schema_version(client: &tokio_postgres::Client) -> Result<i32, DbError> {
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
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM outbox.schema_migrations",
            &[],
        )
        .await
        .map_err(DbError::during("reading the schema version"))?;
    Ok(row.get(0))
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
