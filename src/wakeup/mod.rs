//! How the dispatcher learns that new rows exist between state polls:
//! [`notify`] (`LISTEN` on the channel the insert trigger notifies) or
//! [`logical`] (polling a temporary logical replication slot, so producers
//! pay nothing). Both only nudge: what is delivered is always decided by
//! row state, so a missed wake-up delays a row until the next poll and
//! never loses it. `poll` mode runs neither.

pub mod logical;
pub mod notify;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Wakeup};
use crate::db::Db;

/// Starts the watcher `config.wakeup` names, nudging `wake`; `active` is
/// true while it is subscribed (for readiness). `None` in poll mode.
pub fn spawn(
    config: &Config,
    db: Db,
    wake: Arc<Notify>,
    active: Arc<AtomicBool>,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    let slot = logical::slot_name(&config.worker_id);
    let interval = config.logical_interval;
    match config.wakeup {
        Wakeup::Notify => Some(tokio::spawn(notify::run(db, wake, active, stop))),
        Wakeup::Logical => Some(tokio::spawn(logical::run(
            db, slot, interval, wake, active, stop,
        ))),
        Wakeup::Poll => None,
    }
}
