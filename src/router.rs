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
use crate::db::slot::Slot;
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
        let mut slot = Slot::<Queries>::new(&self.db, "router");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.backlog.notified() => {}
            }
            loop {
                let routed = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    routed = route_once(&mut slot) => routed,
                };
                match routed {
                    Ok(routed) => {
                        slot.succeeded();
                        self.wake.notify_one();
                        if routed < ROUTE_BATCH {
                            break;
                        }
                    }
                    Err(error) => {
                        telemetry::db_error("route");
                        tracing::warn!(%error, "routing a backlog failed; the next claims route it");
                        let delay = slot.failed(&error);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        break;
                    }
                }
            }
        }
    }
}

async fn route_once(slot: &mut Slot<Queries>) -> Result<i32, DbError> {
    slot.get().await?.route().await
}
