//! The main loop: wait for a reason to look (wake-up, poll tick, the next
//! scheduled row), claim as many due deliveries as there are free permits,
//! and start one task per claimed row. A full claim means there is more:
//! claim again as soon as permits free up. When to look is `pace.rs`'s
//! decision; what is claimed, `outbox.claim`'s (see `db::queries`).
//!
//! The dispatcher never decides *what* to deliver from a wake-up's content:
//! eligibility is the row's state, so a missed notification only delays a
//! row until the next poll, never loses it.

mod pace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::pace::{Pace, Settle};
use crate::config::{Config, Wakeup};
use crate::db::queries::Queries;
use crate::db::slot::Slot;
use crate::db::{Db, DbError};
use crate::delivery::{Deliverer, Job, Outcome, Verdict};
use crate::telemetry;

/// With a backlog, how long to wait for a quarter batch of free slots
/// before claiming with fewer.
const BATCH_GATHER: Duration = Duration::from_millis(2);

/// How much longer than three poll intervals a row in `outbox.waiting` may
/// go unrefreshed before other sidecars remove it as left by a crash.
const WAITING_MARGIN: Duration = Duration::from_secs(30);

/// How other tasks and the dispatcher nudge each other.
pub struct Signals {
    /// Look again now: a wake-up arrived, or an outcome or a routed batch
    /// may have made rows claimable.
    pub wake: Arc<Notify>,
    /// Messages wait for routing: the [`crate::router::Router`] listens.
    pub route_backlog: Arc<Notify>,
}

/// Where delivery tasks run, one per claimed row, and what cancels their
/// requests (after the shutdown grace period; their claims are released).
#[derive(Clone, Default)]
pub struct DeliveryTasks {
    /// The running tasks.
    pub tracker: TaskTracker,
    /// Cancels in-flight requests.
    pub cancel_requests: CancellationToken,
}

/// Claims deliveries and runs them.
pub struct Dispatcher {
    config: Arc<Config>,
    db: Db,
    deliverer: Deliverer,
    outcomes: mpsc::Sender<Outcome>,
    signals: Signals,
    permits: Arc<Semaphore>,
    tasks: DeliveryTasks,
}

/// Where a dispatcher is between drains.
struct Cursor {
    pace: Pace,
    /// Where the next claim's walk over endpoints starts.
    after_endpoint: String,
}

impl Dispatcher {
    /// A dispatcher whose delivery tasks run on `tasks` and report to
    /// `outcomes`.
    pub fn new(
        config: Arc<Config>,
        db: Db,
        deliverer: Deliverer,
        outcomes: mpsc::Sender<Outcome>,
        signals: Signals,
        tasks: DeliveryTasks,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.concurrency));
        Self {
            config,
            // A claim is only a lease: if a database crash forgets one, the
            // row is simply due again (and sent again if its request went
            // out). So claims need not wait for the WAL flush, which takes
            // the flush out of every claim's round trip. Outcome writes,
            // the record, still wait for it (unless --async-commit), and
            // their flush makes every earlier claim durable too.
            db: db.with_async_commit(),
            deliverer,
            outcomes,
            signals,
            permits,
            tasks,
        }
    }

    /// Claims and delivers until `stop_claiming` fires; in-flight tasks
    /// keep running on the tracker.
    pub async fn run(self, stop_claiming: CancellationToken) {
        let mut slot = Slot::<Queries>::new(&self.db, "dispatcher");
        let mut at = Cursor {
            pace: Pace::new(
                self.config.wakeup == Wakeup::Notify,
                self.config.poll_interval,
            ),
            after_endpoint: String::new(),
        };
        // Said once per episode, not at every retry.
        let mut read_only = false;
        loop {
            let idle = match self.drain(&mut slot, &mut at, &stop_claiming).await {
                Ok(idle) => {
                    if std::mem::take(&mut read_only) {
                        tracing::info!("the database is writable again; claiming");
                    }
                    slot.succeeded();
                    idle
                }
                Err(error) if error.is_read_only() => {
                    telemetry::db_error("claim");
                    if !std::mem::replace(&mut read_only, true) {
                        tracing::warn!(
                            %error,
                            "the database is read-only (a standby, or default_transaction_read_only): \
                             claims paused, nothing claimed or spent, until it is writable"
                        );
                    }
                    slot.failed(&error)
                }
                Err(error) => {
                    telemetry::db_error("claim");
                    tracing::warn!(%error, "claiming failed; retrying");
                    slot.failed(&error)
                }
            };
            tokio::select! {
                biased;
                _ = stop_claiming.cancelled() => break,
                _ = self.signals.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        if let Some(queries) = slot.current()
            && at.pace.may_be_waiting()
        {
            let leave = queries.leave_waiting(&self.config.worker_id);
            if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(2), leave).await {
                tracing::debug!(%error, "could not leave outbox.waiting");
            }
        }
    }

    /// Claims until a claim comes back short (or `stop_claiming` fires
    /// while waiting for permits), then says how long to idle.
    async fn drain(
        &self,
        slot: &mut Slot<Queries>,
        at: &mut Cursor,
        stop_claiming: &CancellationToken,
    ) -> Result<Duration, DbError> {
        let queries = slot.get().await?;
        let worker = &self.config.worker_id;
        let mut worked = false;
        let mut backlog = false;
        loop {
            let Some(mut permits) = self.free_permits(stop_claiming, backlog).await else {
                return Ok(Duration::ZERO);
            };
            let want = permits.num_permits();
            let claimed = queries
                .route_and_claim(worker, want, self.config.lease, &at.after_endpoint)
                .await?;
            at.after_endpoint = claimed.next_endpoint;
            if claimed.more_to_route {
                self.signals.route_backlog.notify_one();
            }
            let jobs = claimed.jobs;
            let full = jobs.len() == want;
            telemetry::claimed(jobs.len());
            let leave_waiting = !jobs.is_empty() && at.pace.found_work(Instant::now());
            worked |= !jobs.is_empty();
            for job in jobs {
                let permit = permits.split(1).expect("one permit per claimed row");
                self.start(job, permit);
            }
            // After the requests are on their way: at low load, every
            // message is the first after going idle.
            if leave_waiting {
                queries.leave_waiting(worker).await?;
            }
            if !full {
                break;
            }
            backlog = true;
        }
        match at.pace.settle(worked, Instant::now()) {
            Settle::LookAgainIn(wait) => Ok(wait),
            Settle::AskNextDue { wait_for_notify } => {
                // It looks again at least every poll interval; the margin
                // covers a slow database or a reconnect.
                let refresh = self.config.poll_interval * 3 + WAITING_MARGIN;
                let due = queries.next_due(worker, wait_for_notify, refresh).await?;
                Ok(at.pace.idle(worked, due))
            }
        }
    }

    /// Waits for one permit, then takes every other free one up to the batch
    /// size: never claim more rows than can start at once. With a backlog
    /// (the last claim was full), first wait briefly for a quarter of a
    /// batch to free up, so a busy sidecar claims in batches rather than a
    /// row per finished request.
    async fn free_permits(
        &self,
        stop_claiming: &CancellationToken,
        backlog: bool,
    ) -> Option<OwnedSemaphorePermit> {
        let want = self.config.batch_size.min(self.config.concurrency);
        let gather = if backlog { (want / 4).max(1) } else { 1 };
        let gathered = async {
            if gather > 1 {
                let many = self.permits.clone().acquire_many_owned(gather as u32);
                if let Ok(permits) = tokio::time::timeout(BATCH_GATHER, many).await {
                    return permits.expect("semaphore never closed");
                }
            }
            self.permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed")
        };
        let mut permits = tokio::select! {
            biased;
            _ = stop_claiming.cancelled() => return None,
            permits = gathered => permits,
        };
        let more = self
            .permits
            .available_permits()
            .min(want.saturating_sub(permits.num_permits()));
        if more > 0
            && let Ok(extra) = self.permits.clone().try_acquire_many_owned(more as u32)
        {
            permits.merge(extra);
        }
        Some(permits)
    }

    fn start(&self, job: Job, permit: OwnedSemaphorePermit) {
        let deliverer = self.deliverer.clone();
        let outcomes = self.outcomes.clone();
        let cancel = self.tasks.cancel_requests.clone();
        self.tasks.tracker.spawn(async move {
            telemetry::in_flight(1.0);
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => Outcome::released(&job),
                outcome = deliverer.deliver(&job) => outcome,
            };
            telemetry::in_flight(-1.0);
            let delivered = outcome.verdict == Verdict::Delivered;
            telemetry::outcome(
                &job.endpoint_id,
                outcome.verdict.label(),
                outcome.record.as_ref().map(|r| r.duration),
                delivered.then(|| job.age_at_claim + job.claimed_at.elapsed()),
            );
            log(&job, &outcome);
            // Keep the permit until the writer has room: a stalled database
            // stops new claims instead of piling up outcomes in memory.
            let _ = outcomes.send(outcome).await;
            drop(permit);
        });
    }
}

fn log(job: &Job, outcome: &Outcome) {
    let record = outcome.record.as_ref();
    let status = record.and_then(|r| r.status_code);
    let error = record.and_then(|r| r.error.as_deref()).unwrap_or("");
    let duration_ms = record.map_or(0, |r| r.duration.as_millis() as u64);
    let (delivery_id, endpoint, attempt, event_type) = (
        job.claim.delivery_id,
        job.endpoint_id.as_str(),
        job.claim.attempt,
        job.event_type.as_str(),
    );
    match outcome.verdict {
        Verdict::Delivered => {
            tracing::debug!(
                delivery_id,
                endpoint,
                attempt,
                event_type,
                status,
                duration_ms,
                "delivered"
            )
        }
        Verdict::Retry(delay) => tracing::warn!(
            delivery_id, endpoint, attempt, event_type, status, duration_ms, error,
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            "delivery attempt failed"
        ),
        Verdict::Dead => tracing::error!(
            delivery_id,
            endpoint,
            attempt,
            event_type,
            status,
            duration_ms,
            error,
            "delivery is dead: no attempts left or not deliverable"
        ),
        Verdict::Release => {
            tracing::info!(
                delivery_id,
                endpoint,
                attempt,
                "released unfinished delivery at shutdown"
            )
        }
    }
    if let Some(reason) = &outcome.disable_endpoint {
        tracing::warn!(endpoint, reason, "disabling endpoint");
    }
}
