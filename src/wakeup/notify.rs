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
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use crate::db::{Backoff, Db, DbError};
use crate::telemetry;

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
    let mut backoff = Backoff::new();
    while !shutdown.is_cancelled() {
        match listen_once(&db, &wake, &listening, &shutdown, &mut backoff).await {
            Ok(()) => {}
            Err(error) => {
                telemetry::reconnect("listener");
                tracing::warn!(%error, "wake-up listener lost its connection; reconnecting")
            }
        }
        listening.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One connection's life: subscribe, nudge, forward notifications, probe.
async fn listen_once(
    db: &Db,
    wake: &Arc<Notify>,
    listening: &AtomicBool,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), Lost> {
    let (client, mut connection) = db
        .config()
        .connect(NoTls)
        .await
        .map_err(DbError::during("connecting the wake-up listener"))?;
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
    let mut forward = tokio::spawn(forward);
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(DbError::during("subscribing with LISTEN"))?;
        listening.store(true, Ordering::Relaxed);
        backoff.reset();
        tracing::info!(channel = CHANNEL, "listening for wake-ups");
        // Subscribed first, now look: rows committed before LISTEN are found.
        wake.notify_one();
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ended = &mut forward => {
                    return Err(match ended {
                        Ok(Err(error)) => DbError::during("listening for wake-ups")(error).into(),
                        _ => Lost::Closed,
                    });
                }
                _ = probe.tick() => {
                    match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(DbError::during("probing the listener")(error).into()),
                        Err(_) => return Err(Lost::Unresponsive(PROBE_TIMEOUT)),
                    }
                }
            }
        }
    }
    .await;
    forward.abort();
    result
}

/// Why a listening connection ended.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the connection closed")]
    Closed,
    #[error("a probe got no answer within {0:?}")]
    Unresponsive(Duration),
}
