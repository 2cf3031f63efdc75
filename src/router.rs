//! Routing a backlog in the background. Every claim first routes up to a
//! batch of committed messages into their deliveries, in the same round
//! trip. When that batch comes back full, more messages wait: after an
//! outage, a bulk insert, or while every request slot is busy and claims
//! are rare. This task then routes them on a connection of its own, batch
//! after batch, waking the dispatcher after each, so that another tenant's
//! new message is routed (and claimed when a slot frees up) within
//! milliseconds rather than after everything ahead of it has been sent.
//!
//! It owns no state: routing is a statement that any number of sidecars
//! may run at once (`outbox.route` skips what another one is routing).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::queries::{Queries, ROUTE_BATCH};
use crate::db::{Db, DbError};
use crate::telemetry;

/// Routes backlogs when told that one exists.
pub struct Router {
    db: Db,
    /// Signalled when a claim routed a whole batch.
    backlog: Arc<Notify>,
    /// Nudged after every batch: the new deliveries may be claimable.
    wake: Arc<Notify>,
}

impl Router {
    /// A router woken by `backlog` that nudges `wake`.
    pub fn new(db: Db, backlog: Arc<Notify>, wake: Arc<Notify>) -> Self {
        Self { db, backlog, wake }
    }

    /// Routes each backlog it is told of until caught up, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut queries: Option<Queries> = None;
        let mut backoff = self.db.backoff();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.backlog.notified() => {}
            }
            loop {
                let routed = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    routed = self.route_once(&mut queries) => routed,
                };
                match routed {
                    Ok(routed) => {
                        backoff.reset();
                        self.wake.notify_one();
                        if routed < ROUTE_BATCH {
                            break;
                        }
                    }
                    Err(error) => {
                        telemetry::db_error("route");
                        tracing::warn!(%error, "routing a backlog failed; the next claims route it");
                        if error.is_connection_lost() {
                            queries = None;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff.next_delay()) => {}
                        }
                        break;
                    }
                }
            }
        }
    }

    async fn route_once(&self, queries: &mut Option<Queries>) -> Result<i32, DbError> {
        if queries.as_ref().is_none_or(Queries::is_closed) {
            *queries = Some(Queries::connect(&self.db).await?);
        }
        queries
            .as_ref()
            .expect("connected just above")
            .route()
            .await
    }
}
