//! `LISTEN` on a dedicated connection (never a pooled one) and turn every
//! notification into a nudge for the dispatcher. After each (re)connect it
//! subscribes first and then nudges once, so rows committed while it was
//! away are picked up by the state poll that follows: nothing depends on
//! a notification arriving.

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::db::slot::{Session, Slot, bounded};
use crate::db::{Db, DbError};

/// The channel the insert trigger notifies (see `sql/migrations`).
pub const CHANNEL: &str = "outboxd_wakeup";

/// How often the idle listening connection is probed, so a connection that
/// died silently (no FIN, no RST) is noticed within seconds.
const PROBE_EVERY: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens until `shutdown`, reconnecting with backoff. `listening` is true
/// while a `LISTEN` is active (for readiness).
pub async fn run(
    db: Db,
    wake: Arc<Notify>,
    listening: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut slot = Slot::<Listener>::with_spec(&db, "listener", wake);
    loop {
        // Shutdown must not wait for a connection that may never answer.
        let listened = tokio::select! {
            _ = shutdown.cancelled() => break,
            listened = listen_a_while(&mut slot, &listening) => listened,
        };
        let Err(error) = listened else {
            slot.succeeded();
            continue;
        };
        tracing::warn!(%error, "wake-up listener lost its connection; reconnecting");
        listening.store(false, Ordering::Relaxed);
        let delay = slot.failed(&error);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    listening.store(false, Ordering::Relaxed);
}

/// Listens (subscribing first on a new connection) until the next probe,
/// which must answer; an error says why the connection is given up. Every
/// step that waits for the server is bounded, so a connection that died
/// silently is given up within seconds.
async fn listen_a_while(slot: &mut Slot<Listener>, listening: &AtomicBool) -> Result<(), DbError> {
    let listener = slot.get().await?;
    listening.store(true, Ordering::Relaxed);
    tokio::select! {
        ended = &mut listener.forward => Err(match ended {
            Ok(Err(error)) => DbError::during("listening for wake-ups")(error),
            _ => DbError::Closed {
                context: "listening for wake-ups",
            },
        }),
        _ = tokio::time::sleep(PROBE_EVERY) => {
            bounded(PROBE_TIMEOUT, "probing the listener", listener.client.simple_query("SELECT 1")).await?;
            Ok(())
        }
    }
}

/// A connection subscribed with `LISTEN`, whose notifications a task turns
/// into nudges.
struct Listener {
    client: Client,
    /// Forwards notifications until the connection ends.
    forward: AbortOnDropHandle<Result<(), tokio_postgres::Error>>,
}

impl Session for Listener {
    /// Nudged on every notification.
    type Spec = Arc<Notify>;

    async fn open(db: &Db, wake: &Arc<Notify>) -> Result<Self, DbError> {
        let (client, mut connection) = db.open().await?;
        let forward = {
            let wake = Arc::clone(wake);
            async move {
                while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                        Ok(_) => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(())
            }
        };
        let forward = AbortOnDropHandle::new(tokio::spawn(forward));
        bounded(
            PROBE_TIMEOUT,
            "subscribing with LISTEN",
            client.batch_execute(&format!("LISTEN {CHANNEL}")),
        )
        .await?;
        tracing::info!(channel = CHANNEL, "listening for wake-ups");
        // Subscribed first, now look: rows committed before LISTEN are found.
        wake.notify_one();
        Ok(Self { client, forward })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed() || self.forward.is_finished()
    }
}
