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
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Wakeup;
use crate::db::Db;

/// Starts the watcher for `mode`; `active` is true while it is subscribed
/// (for readiness). `None` in poll mode.
pub fn spawn(
    mode: Wakeup,
    db: Db,
    slot_name: String,
    logical_interval: Duration,
    wake: Arc<Notify>,
    active: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    match mode {
        Wakeup::Notify => Some(tokio::spawn(notify::run(db, wake, active, shutdown))),
        Wakeup::Logical => Some(tokio::spawn(logical::run(
            db,
            slot_name,
            logical_interval,
            wake,
            active,
            shutdown,
        ))),
        Wakeup::Poll => None,
    }
}
