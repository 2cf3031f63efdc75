//! Before the sidecar starts: wait for the database (a sidecar may start
//! before it), apply or check the migrations, check what logical wake-up
//! needs, and compare the clocks.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Wakeup};
use crate::db::migrate::{self, MIGRATIONS};
use crate::db::{Db, DbError};
use crate::delivery::request::ClientError;
use crate::wakeup::logical;

const CLOCK_NOW: &str = include_str!("../../sql/queries/clock_now.sql");

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

/// Waits for the database (a sidecar may start before it), checks the
/// schema version and the clocks. `Ok(false)`: shut down while waiting.
pub(super) async fn prepare_database(
    db: &Db,
    listen_db: &Db,
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
        let applied = migrate::run_on(db, &mut client).await?;
        tracing::info!(?applied, "migrations applied");
    }
    let needed = MIGRATIONS.last().map_or(0, |m| m.version);
    let applied = migrate::applied_versions(&client).await?;
    if migrate::missing(&applied).next().is_some() {
        let found = applied.iter().copied().max().unwrap_or(0);
        return Err(SidecarError::NotMigrated { found, needed });
    }
    if config.wakeup == Wakeup::Logical {
        if config.listen_database_url.is_some() {
            logical::check(&listen_db.connect().await?).await?;
        } else {
            logical::check(&client).await?;
        }
    }
    warn_on_clock_skew(&client).await?;
    Ok(true)
}

/// Leases, schedules and `webhook-timestamp` all follow the database's
/// clock (see `Job::now`), so a skewed local clock harms nothing; a skew
/// is still worth a warning, since one of the two clocks is wrong and
/// receivers reject timestamps far from their own.
async fn warn_on_clock_skew(client: &tokio_postgres::Client) -> Result<(), DbError> {
    // Unnamed (no named statement through a pooler).
    let db_now: SystemTime = client
        .query_typed_one(CLOCK_NOW, &[])
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
            "this machine's clock and the database's differ; webhook-timestamp follows the database's clock, \
             check that one (receivers reject timestamps far from their own)"
        );
    }
    Ok(())
}
