//! Logical polling: a dedicated connection holds a *temporary* logical
//! replication slot (`pgoutput`, on the `outboxd_messages` publication of
//! inserts into `outbox.messages`) and reads it with
//! `pg_logical_slot_get_binary_changes` every few milliseconds. A decoded
//! insert means a committed message: nudge the dispatcher. Producers pay
//! nothing (no NOTIFY, no commit-time lock), and a temporary slot vanishes
//! with its session, so a dead sidecar never pins WAL.
//!
//! Needs `wal_level = logical`, a free replication slot, and a role with
//! `REPLICATION` (or superuser); [`check`] says which is missing, in one
//! line, before the sidecar starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::db::slot::{Session, Slot, within};
use crate::db::{Db, DbError};

/// The publication created by `sql/migrations` (inserts into
/// `outbox.messages` only).
pub const PUBLICATION: &str = "outboxd_messages";

const PEEK: &str = include_str!("../../sql/queries/logical_slot_read.sql");
const CREATE_SLOT: &str = include_str!("../../sql/queries/logical_slot_create.sql");

/// Why logical wake-up cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    /// The server does not decode WAL logically.
    #[error(
        "OUTBOXD_WAKEUP=logical needs wal_level = logical, but the server has wal_level = {0}: \
         run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL, or use OUTBOXD_WAKEUP=notify"
    )]
    WalLevel(String),
    /// The role may not create replication slots.
    #[error(
        "OUTBOXD_WAKEUP=logical needs the REPLICATION attribute (or superuser) for role {0:?}: \
         run ALTER ROLE \"{0}\" REPLICATION, or use OUTBOXD_WAKEUP=notify"
    )]
    Privilege(String),
    /// Every replication slot is taken.
    #[error(
        "OUTBOXD_WAKEUP=logical needs a free replication slot, but all {0} are in use: \
         raise max_replication_slots (restart needed) or drop unused slots"
    )]
    NoFreeSlot(i32),
    /// `outboxd migrate` has not created the publication.
    #[error("publication {PUBLICATION} is missing: run `outboxd migrate`")]
    NoPublication,
    /// The checks themselves failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Checks, in one round trip, everything logical wake-up needs.
pub async fn check(client: &Client) -> Result<(), LogicalError> {
    let row = client
        .query_one(
            include_str!("../../sql/queries/logical_prerequisites.sql"),
            &[&PUBLICATION],
        )
        .await
        .map_err(DbError::during("checking logical decoding prerequisites"))?;
    let wal_level: String = row.get("wal_level");
    if wal_level != "logical" {
        return Err(LogicalError::WalLevel(wal_level));
    }
    if !row.get::<_, bool>("may_replicate") {
        return Err(LogicalError::Privilege(row.get("role")));
    }
    if !row.get::<_, bool>("has_publication") {
        return Err(LogicalError::NoPublication);
    }
    let (used, max): (i64, i32) = (row.get("slots_used"), row.get("slots_max"));
    if used >= i64::from(max) {
        return Err(LogicalError::NoFreeSlot(max));
    }
    Ok(())
}

/// Longest slot name PostgreSQL keeps (`NAMEDATALEN - 1`).
const SLOT_NAME_MAX: usize = 63;
/// Hex digits of the worker id's hash in a shortened slot name.
const SLOT_HASH_DIGITS: usize = 16;

/// A slot name for this process: `outboxd_` and the worker id, reduced to
/// what slot names allow (lower-case letters, digits, underscores; 63
/// bytes). A longer name keeps its beginning and ends in `_` and a hash of
/// the whole worker id: replicas of a long Deployment name differ only at
/// the end (pod suffix, pid), and two sidecars on one slot name would
/// fight over it.
pub fn slot_name(worker_id: &str) -> String {
    let cleaned: String = worker_id
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    let mut name = format!("outboxd_{cleaned}");
    if name.len() > SLOT_NAME_MAX {
        let digest = Sha256::digest(worker_id.as_bytes());
        let hash: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        // Every character is ASCII, so any byte index is a char boundary.
        name.truncate(SLOT_NAME_MAX - 1 - SLOT_HASH_DIGITS);
        name.push('_');
        name.push_str(&hash[..SLOT_HASH_DIGITS]);
    }
    name
}

/// Polls until `shutdown`, reconnecting (and recreating the slot) with
/// backoff. `active` is true while a slot is held.
pub async fn run(
    db: Db,
    slot: String,
    interval: Duration,
    wake: Arc<Notify>,
    active: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let spec = SlotSpec {
        slot,
        wake: wake.clone(),
    };
    let mut reader = Slot::<SlotReader>::with_spec(&db, "logical", spec);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Shutdown must not wait for a connection, or a slot creation (it
        // waits for running transactions), that may take long.
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            read = read_once(&mut reader, &wake, &active) => read,
        };
        let wait = match read {
            Ok(()) => {
                reader.succeeded();
                tick.tick()
            }
            Err(error) => {
                tracing::warn!(%error, "logical wake-up lost its connection; reconnecting");
                active.store(false, Ordering::Relaxed);
                let delay = reader.failed(&error);
                tick.reset_after(delay);
                tick.tick()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wait => {}
        }
    }
    active.store(false, Ordering::Relaxed);
}

/// Reads the slot once (creating it first on a new connection); nudges the
/// dispatcher when inserts were committed.
async fn read_once(
    reader: &mut Slot<SlotReader>,
    wake: &Notify,
    active: &AtomicBool,
) -> Result<(), DbError> {
    let db = reader.db().clone();
    let session = reader.get().await?;
    active.store(true, Ordering::Relaxed);
    let inserts: i64 = within(
        &db,
        &session.client,
        "reading the replication slot",
        session
            .client
            .query_one(&session.read, &[&session.slot, &PUBLICATION]),
    )
    .await?
    .get(0);
    if inserts > 0 {
        wake.notify_one();
    }
    Ok(())
}

/// A connection holding this sidecar's temporary replication slot.
struct SlotReader {
    client: Client,
    read: Statement,
    slot: String,
}

/// How a [`SlotReader`] is set up.
struct SlotSpec {
    /// The replication slot's name.
    slot: String,
    /// Nudged once the slot exists.
    wake: Arc<Notify>,
}

impl Session for SlotReader {
    type Spec = SlotSpec;

    async fn open(db: &Db, SlotSpec { slot, wake }: &SlotSpec) -> Result<Self, DbError> {
        let client = db.connect().await?;
        // Creating the slot waits for transactions running now; a server
        // that takes longer than the deadline to let them finish is tried
        // again after the backoff.
        within(
            db,
            &client,
            "creating the temporary replication slot",
            client.execute(CREATE_SLOT, &[slot]),
        )
        .await?;
        let read = within(db, &client, "preparing the slot read", client.prepare(PEEK)).await?;
        tracing::info!(
            slot,
            "logical wake-up: polling a temporary replication slot"
        );
        // Slot first, then look: rows committed before it are found by the
        // poll this nudge starts.
        wake.notify_one();
        Ok(Self {
            client,
            read,
            slot: slot.clone(),
        })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::slot_name;

    fn valid(name: &str) -> bool {
        name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn slot_names_are_valid_and_recognisable() {
        assert_eq!(slot_name("web-7f9.Pod-2"), "outboxd_web_7f9_pod_2");
        assert!(valid(&slot_name(&"x".repeat(100))));
    }

    #[test]
    fn long_worker_ids_that_differ_at_the_end_get_different_slots() {
        // A pod of a long Deployment name: only the replica suffix, the pid
        // and the random part tell replicas apart.
        let base = "shop-orders-webhook-dispatcher-production-eu-west-1-7d9f8b6c5d";
        let (a, b) = (
            slot_name(&format!("{base}-x2x9z-1-00af")),
            slot_name(&format!("{base}-k4j7q-1-00af")),
        );
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("outboxd_shop_orders_webhook"), "{a}");
        // Not a prefix of the id of some other worker either.
        assert_ne!(slot_name(&"y".repeat(63)), slot_name(&"y".repeat(64)));
    }
}
