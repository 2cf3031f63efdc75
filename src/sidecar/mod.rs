//! `outboxd run`: wires the wake-up watcher, the dispatcher, the outcome
//! writer and the background tasks together ([`run`]), and owns the
//! shutdown sequence (`Running::stop`). The shutdown trigger is a
//! parameter, so tests and the demo run the whole sidecar in-process.
//!
//! Shutdown: stop claiming; give in-flight requests the grace period to
//! finish; cancel the rest and release their claims; write every outcome;
//! stop the background tasks; return. Each step has a cancellation token
//! named for what it stops.

mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::startup::SidecarError;
use crate::admin::{self, Readiness};
use crate::config::{Config, Wakeup};
use crate::console::Console;
use crate::db::Db;
use crate::delivery::Deliverer;
use crate::dispatcher::{DeliveryTasks, Dispatcher, Signals};
use crate::router::Router;
use crate::wakeup;
use crate::writer::Writer;
use crate::{maintenance, telemetry};

/// How long the writer may keep retrying after shutdown before it gives up
/// on outcomes it cannot store (their leases then expire: redelivered).
const FINAL_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the sidecar until `shutdown` fires, then drains and returns.
/// `migrate` applies pending migrations first.
pub async fn run(
    config: Config,
    migrate: bool,
    shutdown: CancellationToken,
) -> Result<(), SidecarError> {
    let Some((dispatcher, running)) = start(config, migrate, &shutdown).await? else {
        // Shut down while waiting for the database.
        return Ok(());
    };
    tracing::info!(
        worker_id = %running.config.worker_id,
        wakeup = ?running.config.wakeup,
        "outboxd running"
    );
    // On a worker thread, not the caller's: `block_on` runs its future on
    // a thread that parks apart from the workers, and each wake-up (a
    // NOTIFY read by a worker) then cost a cross-thread hand-off before
    // the claim went out. A panic in it is the caller's panic.
    let dispatching = tokio::spawn(dispatcher.run(shutdown));
    if let Err(error) = dispatching.await
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
    running.stop().await;
    Ok(())
}

/// Everything started beside the dispatcher, and how to stop it.
struct Running {
    config: Arc<Config>,
    readiness: Arc<Readiness>,
    /// Delivery tasks, one per claimed row.
    deliveries: DeliveryTasks,
    writer: JoinHandle<()>,
    /// Makes the writer drop what it cannot store (leases then expire).
    give_up_writing: CancellationToken,
    /// The wake-up watcher, the admin server, the router, housekeeping.
    background: Vec<JoinHandle<()>>,
    /// Stops [`background`](Self::background).
    stop_background: CancellationToken,
}

/// Validates the configuration, waits for the database and checks its
/// schema, then starts every task and returns the dispatcher to run.
/// `None`: `shutdown` fired while waiting for the database.
async fn start(
    config: Config,
    migrate: bool,
    shutdown: &CancellationToken,
) -> Result<Option<(Dispatcher, Running)>, SidecarError> {
    config.validate()?;
    let mut config = config;
    let wakeup = config.effective_wakeup();
    if wakeup != config.wakeup {
        tracing::warn!(
            wakeup = ?config.wakeup,
            "behind a transaction-mode pooler a session cannot LISTEN or hold a replication slot: \
             polling every {:?} instead (set --listen-database-url to a direct URL for wake-ups)",
            config.poll_interval
        );
        config.wakeup = wakeup;
    }
    let config = Arc::new(config);
    let (db, listen_db) = databases(&config)?;
    let deliverer = Deliverer::new(&config)?;
    if !startup::prepare_database(&db, &listen_db, &config, migrate, shutdown).await? {
        return Ok(None);
    }
    let signals = Signals {
        wake: Arc::new(Notify::new()),
        route_backlog: Arc::new(Notify::new()),
    };
    let (outcomes, outcome_queue) = mpsc::channel(config.concurrency * 2 + 64);
    let give_up_writing = CancellationToken::new();
    let writer = Writer::new(
        db.clone(),
        config.worker_id.clone(),
        config.disable_after,
        outcome_queue,
        signals.wake.clone(),
    );
    let writer = tokio::spawn(writer.run(give_up_writing.clone()));
    let stop_background = CancellationToken::new();
    let (background, readiness) =
        spawn_background(&db, &listen_db, &config, &signals, &stop_background).await?;
    let deliveries = DeliveryTasks::default();
    let dispatcher = Dispatcher::new(
        config.clone(),
        db,
        deliverer,
        outcomes,
        signals,
        deliveries.clone(),
    );
    let running = Running {
        config,
        readiness,
        deliveries,
        writer,
        give_up_writing,
        background,
        stop_background,
    };
    Ok(Some((dispatcher, running)))
}

/// The database of every connection, and the one of the wake-up's.
fn databases(config: &Config) -> Result<(Db, Db), SidecarError> {
    let mut db = Db::new(&config.database_url)?
        .with_reconnect_max(config.reconnect_max)
        .with_pooler(config.pooler)
        .with_pinned_search_path();
    if config.async_commit {
        db = db.with_async_commit();
    }
    // The wake-up's sessions hold state (a LISTEN, a replication slot):
    // never through a transaction-mode pooler.
    let listen_db = match &config.listen_database_url {
        Some(url) => Db::new(url)?
            .with_reconnect_max(config.reconnect_max)
            .with_pinned_search_path(),
        None => db.clone(),
    };
    Ok((db, listen_db))
}

/// Starts the wake-up watcher, the admin server, the router and
/// housekeeping, all stopped by `stop`.
async fn spawn_background(
    db: &Db,
    listen_db: &Db,
    config: &Config,
    signals: &Signals,
    stop: &CancellationToken,
) -> Result<(Vec<JoinHandle<()>>, Arc<Readiness>), SidecarError> {
    let mut tasks = Vec::new();
    let listening = Arc::new(AtomicBool::new(false));
    tasks.extend(wakeup::spawn(
        config,
        listen_db.clone(),
        signals.wake.clone(),
        listening.clone(),
        stop.clone(),
    ));
    let readiness = Arc::new(Readiness::new(
        db.clone(),
        (config.wakeup != Wakeup::Poll).then_some(listening),
    ));
    if let Some(addr) = config.admin_addr {
        tasks.push(serve_admin(addr, &readiness, db, config, stop).await?);
    }
    // A route a database crash forgets is simply routed again.
    let router = Router::new(
        db.clone().with_async_commit(),
        signals.route_backlog.clone(),
        signals.wake.clone(),
    );
    tasks.push(tokio::spawn(router.run(stop.clone())));
    tasks.push(tokio::spawn(maintenance::run(
        db.clone(),
        config.retention,
        stop.clone(),
    )));
    Ok((tasks, readiness))
}

async fn serve_admin(
    addr: SocketAddr,
    readiness: &Arc<Readiness>,
    db: &Db,
    config: &Config,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>, SidecarError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::AdminBind { addr, source })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "admin server on /metrics, /healthz, /readyz");
    telemetry::handle();
    let console = config.console_token.as_ref().map(|token| {
        tracing::info!("web console on /console");
        Arc::new(Console::new(token, db.clone()))
    });
    Ok(tokio::spawn(admin::serve(
        listener,
        readiness.clone(),
        console,
        config.admin_limits,
        stop.clone(),
    )))
}

impl Running {
    /// The shutdown sequence, once the dispatcher has stopped claiming.
    async fn stop(self) {
        self.readiness.drain();
        let deliveries = &self.deliveries.tracker;
        tracing::info!(in_flight = deliveries.len(), "shutting down: no new claims");
        deliveries.close();
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = deliveries.len(),
                "grace period over: cancelling in-flight requests and releasing their claims"
            );
            self.deliveries.cancel_requests.cancel();
            deliveries.wait().await;
        }
        // Every sender is gone now, so the writer ends once its queue is
        // stored.
        let mut writer = self.writer;
        if tokio::time::timeout(FINAL_WRITE_DEADLINE, &mut writer)
            .await
            .is_err()
        {
            self.give_up_writing.cancel();
            let _ = writer.await;
        }
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        tracing::info!("outboxd stopped");
    }
}
