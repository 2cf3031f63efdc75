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
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

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
    let mut backoff = db.backoff();
    loop {
        // Shutdown must not wait for a connection that may never answer.
        let lost = tokio::select! {
            _ = shutdown.cancelled() => break,
            lost = listen_once(&db, &wake, &listening, &mut backoff) => lost,
        };
        telemetry::reconnect("listener");
        tracing::warn!(error = %lost, "wake-up listener lost its connection; reconnecting");
        listening.store(false, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    listening.store(false, Ordering::Relaxed);
}

/// One connection's life: subscribe, nudge, forward notifications, probe;
/// returns why it ended. Every step that waits for the server is bounded,
/// so a connection that dies silently is given up within seconds.
async fn listen_once(
    db: &Db,
    wake: &Arc<Notify>,
    listening: &AtomicBool,
    backoff: &mut Backoff,
) -> Lost {
    let (client, mut connection) = match db.open().await {
        Ok(opened) => opened,
        Err(error) => return error.into(),
    };
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
    let mut forward = AbortOnDropHandle::new(tokio::spawn(forward));
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return DbError::during("subscribing with LISTEN")(error).into(),
        Err(_) => return Lost::Unresponsive(PROBE_TIMEOUT),
    }
    listening.store(true, Ordering::Relaxed);
    backoff.reset();
    tracing::info!(channel = CHANNEL, "listening for wake-ups");
    // Subscribed first, now look: rows committed before LISTEN are found.
    wake.notify_one();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.tick().await;
    loop {
        tokio::select! {
            ended = &mut forward => {
                return match ended {
                    Ok(Err(error)) => DbError::during("listening for wake-ups")(error).into(),
                    _ => Lost::Closed,
                };
            }
            _ = probe.tick() => {
                match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return DbError::during("probing the listener")(error).into(),
                    Err(_) => return Lost::Unresponsive(PROBE_TIMEOUT),
                }
            }
        }
    }
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
