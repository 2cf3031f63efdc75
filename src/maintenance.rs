//! Housekeeping beside the main loop, on its own connection: publishing the
//! per-endpoint backlog gauges, and the retention purge that deletes old
//! finished rows in small keyset pages, one replica at a time (an advisory
//! lock), so it never holds long locks or scans a whole table.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::Retention;
use crate::db::slot::Slot;
use crate::db::{Db, DbError, locks};
use crate::telemetry;

const BACKLOG: &str = include_str!("../sql/queries/endpoints_backlog.sql");
const PURGE_DELIVERIES: &str = include_str!("../sql/queries/deliveries_purge.sql");
const PURGE_MESSAGES: &str = include_str!("../sql/queries/messages_purge.sql");
const PURGE_EVENTS: &str = include_str!("../sql/queries/events_purge.sql");
const PURGE_TRY_LOCK: &str = include_str!("../sql/queries/purge_try_lock.sql");

/// The longest one housekeeping round may take before its connection is
/// presumed dead.
const JOB_DEADLINE: Duration = Duration::from_secs(120);

/// How often the backlog gauges (pending, oldest, dead, disabled) are
/// refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(15);
/// Rows examined per purge page (and so at most deleted per transaction).
pub const PURGE_PAGE: i64 = 500;

/// Runs the housekeeping until `shutdown`.
pub async fn run(db: Db, retention: Option<Retention>, shutdown: CancellationToken) {
    let mut slot = Slot::<Client>::new(&db, "maintenance");
    let mut backlog = tokio::time::interval(BACKLOG_EVERY);
    let mut purge = tokio::time::interval(retention.map_or(Duration::from_secs(3600), |r| r.every));
    loop {
        let job = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backlog.tick() => Job::Backlog,
            _ = purge.tick() => Job::Purge,
        };
        let work = async {
            let connection = slot.get().await?;
            match (job, retention) {
                (Job::Backlog, _) => publish_backlog(&db, connection).await,
                (Job::Purge, Some(retention)) => purge_once(&db, connection, &retention, &shutdown)
                    .await
                    .map(|_| ()),
                (Job::Purge, None) => Ok(()),
            }
        };
        // A connection that died silently never answers: give up on it
        // (and never hold up shutdown).
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = tokio::time::timeout(JOB_DEADLINE, work) => result,
        };
        match result {
            Ok(Ok(())) => slot.succeeded(),
            Ok(Err(error)) => {
                telemetry::db_error("maintenance");
                tracing::warn!(%error, "housekeeping failed; will retry at the next tick");
                slot.failed(&error);
            }
            Err(_) => {
                slot.failed(&DbError::Unresponsive {
                    context: "housekeeping",
                    after: JOB_DEADLINE,
                });
                telemetry::db_error("maintenance");
                tracing::warn!("housekeeping got no answer within {JOB_DEADLINE:?}; reconnecting");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Job {
    Backlog,
    Purge,
}

async fn publish_backlog(db: &Db, client: &mut Client) -> Result<(), DbError> {
    let during = DbError::during("reading the backlog");
    let rows = if db.is_pooled() {
        // In a transaction of its own: its settings hold only there.
        let tx = db.transaction(client, "reading the backlog").await?;
        let rows = tx.query(BACKLOG, &[]).await.map_err(during)?;
        tx.commit()
            .await
            .map_err(DbError::during("reading the backlog"))?;
        rows
    } else {
        client.query(BACKLOG, &[]).await.map_err(during)?
    };
    for row in rows {
        let endpoint: String = row.get("endpoint_id");
        let oldest = row
            .get::<_, Option<f64>>("oldest_secs")
            .and_then(|s| Duration::try_from_secs_f64(s.max(0.0)).ok());
        telemetry::backlog(
            &endpoint,
            telemetry::Backlog {
                pending: row.get("pending"),
                oldest,
                dead: row.get("dead"),
                enabled: row.get("enabled"),
            },
        );
    }
    Ok(())
}

/// Rows deleted by one purge round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// From `outbox.deliveries` (their attempts went with them).
    pub deliveries: u64,
    /// From `outbox.messages`.
    pub messages: u64,
    /// From `outbox.events`.
    pub events: u64,
}

/// One purge round over every table, on `client`, a connection to `db`
/// (whose settings each transaction takes, behind a pooler); skipped (all
/// zero) when another replica holds the purge lock.
pub async fn purge_once(
    db: &Db,
    client: &mut Client,
    retention: &Retention,
    shutdown: &CancellationToken,
) -> Result<Purged, DbError> {
    let mut purged = Purged::default();
    let finished = retention.finished.as_secs_f64();
    let dead = retention.dead.as_secs_f64();
    let mut after = 0i64;
    while !shutdown.is_cancelled() {
        let Some(page) = page(
            db,
            client,
            PURGE_DELIVERIES,
            &[&after, &finished, &dead, &PURGE_PAGE],
        )
        .await?
        else {
            return Ok(purged);
        };
        purged.deliveries += page.deleted;
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    after = 0;
    let oldest = finished.min(dead);
    while !shutdown.is_cancelled() {
        let Some(page) = page(db, client, PURGE_MESSAGES, &[&after, &oldest, &PURGE_PAGE]).await?
        else {
            return Ok(purged);
        };
        purged.messages += page.deleted;
        match page.next {
            Some(next) => after = next,
            None => break,
        }
    }
    loop {
        let tx = db.transaction(client, "purging events").await?;
        let deleted = tx
            .execute(PURGE_EVENTS, &[&dead, &PURGE_PAGE])
            .await
            .map_err(DbError::during("purging events"))?;
        tx.commit()
            .await
            .map_err(DbError::during("purging events"))?;
        purged.events += deleted;
        if deleted < PURGE_PAGE as u64 || shutdown.is_cancelled() {
            break;
        }
    }
    telemetry::purged("deliveries", purged.deliveries);
    telemetry::purged("messages", purged.messages);
    telemetry::purged("events", purged.events);
    if purged != Purged::default() {
        tracing::info!(?purged, "retention purge");
    }
    Ok(purged)
}

struct Page {
    deleted: u64,
    /// Where the next page starts; `None` once recent rows are reached.
    next: Option<i64>,
}

/// One page in its own short transaction, under the purge lock. `None`
/// when another replica holds the lock.
async fn page(
    db: &Db,
    client: &mut Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<Page>, DbError> {
    let tx = db.transaction(client, "purging old rows").await?;
    let locked: bool = tx
        .query_one(PURGE_TRY_LOCK, &[&locks::PURGE.id])
        .await
        .map_err(DbError::during("taking the purge lock"))?
        .get(0);
    if !locked {
        return Ok(None);
    }
    let row = tx
        .query_one(sql, params)
        .await
        .map_err(DbError::during("purging old rows"))?;
    tx.commit()
        .await
        .map_err(DbError::during("purging old rows"))?;
    let last: Option<i64> = row.get("last_id");
    let reached_recent: bool = row.get("reached_recent");
    Ok(Some(Page {
        deleted: row.get::<_, i64>("deleted") as u64,
        next: last.filter(|_| !reached_recent),
    }))
}
