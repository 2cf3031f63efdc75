//! The main loop: wait for a reason to look (wake-up, poll tick, the next
//! scheduled row), claim as many due deliveries as there are free permits,
//! and start one task per claimed row. A full claim means there is more:
//! claim again as soon as permits free up.
//!
//! The dispatcher never decides *what* to deliver from a wake-up's content:
//! eligibility is the row's state, so a missed notification only delays a
//! row until the next poll, never loses it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Wakeup};
use crate::db::queries::Queries;
use crate::db::{Db, DbError};
use crate::delivery::{Deliverer, Job, Outcome, Verdict};
use crate::telemetry;

/// After an empty claim while a row is overdue (locked by another replica's
/// claim in progress), look again this soon rather than spin.
const OVERDUE_RECHECK: Duration = Duration::from_millis(25);

/// With a backlog, how long to wait for a quarter batch of free slots
/// before claiming with fewer.
const BATCH_GATHER: Duration = Duration::from_millis(2);

/// Having gone idle, look again after these delays: producers that checked
/// `outbox.waiting` while this sidecar was not in it did not NOTIFY, and
/// may commit just after its last claim. The first look, at once, finds
/// rows committed before this sidecar entered `outbox.waiting`; the later
/// ones, rows of transactions that were still open then.
const IDLE_RECHECKS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(5),
    Duration::from_millis(50),
];

/// In notify mode, after a claim that found work, keep looking this often
/// for [`LINGER`] instead of waiting in `outbox.waiting`: while rows keep
/// arriving, producers then skip NOTIFY (which serialises their commits)
/// and the sidecar picks up several rows per claim. Traffic sparser than
/// that is woken by NOTIFY, which costs little at low rates.
const LINGER_POLL: Duration = Duration::from_millis(2);
const LINGER: Duration = Duration::from_millis(10);

/// How much longer than three poll intervals a row in `outbox.waiting` may
/// go unrefreshed before other sidecars remove it as left by a crash.
const WAITING_MARGIN: Duration = Duration::from_secs(30);

/// What one [`Dispatcher::drain`] did.
struct Drained {
    /// How long to idle before looking again.
    idle: Duration,
    /// Whether anything was claimed.
    worked: bool,
    /// Whether it entered `outbox.waiting` (it was not in it before).
    started_waiting: bool,
}

/// How other tasks and the dispatcher nudge each other.
pub struct Signals {
    /// Look again now: a wake-up arrived, or an outcome or a routed batch
    /// may have made rows claimable.
    pub wake: Arc<Notify>,
    /// Messages wait for routing: the [`crate::router::Router`] listens.
    pub route_backlog: Arc<Notify>,
}

/// Claims deliveries and runs them.
pub struct Dispatcher {
    config: Arc<Config>,
    db: Db,
    deliverer: Deliverer,
    outcomes: mpsc::Sender<Outcome>,
    signals: Signals,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Cancels in-flight requests (after the shutdown grace period).
    hard_stop: CancellationToken,
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
        tasks: TaskTracker,
        hard_stop: CancellationToken,
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
            hard_stop,
        }
    }

    /// Claims and delivers until `shutdown` fires; in-flight tasks keep
    /// running on the tracker.
    pub async fn run(self, shutdown: CancellationToken) {
        let notify = self.config.wakeup == Wakeup::Notify;
        let mut queries = None;
        let mut backoff = self.db.backoff();
        let mut connected_before = false;
        let mut rechecks: &[Duration] = &[];
        let mut linger_until = None;
        // Whether this worker may have a row in outbox.waiting.
        let mut in_waiting = notify;
        // Where the next claim's walk over endpoints starts.
        let mut cursor = String::new();
        while !shutdown.is_cancelled() {
            if queries.is_none() && connected_before {
                telemetry::reconnect("dispatcher");
            }
            let lingering = notify && linger_until.is_some_and(|until| Instant::now() < until);
            let idle = match self
                .drain(
                    &mut queries,
                    &shutdown,
                    lingering,
                    &mut in_waiting,
                    &mut cursor,
                )
                .await
            {
                Ok(drained) => {
                    backoff.reset();
                    if drained.worked && notify {
                        linger_until = Some(Instant::now() + LINGER);
                    }
                    if drained.started_waiting || (drained.worked && !notify) {
                        rechecks = &IDLE_RECHECKS;
                    }
                    if notify && (drained.worked || lingering) {
                        drained.idle
                    } else if let Some((soon, rest)) = rechecks.split_first() {
                        rechecks = rest;
                        drained.idle.min(*soon)
                    } else {
                        drained.idle
                    }
                }
                Err(error) => {
                    telemetry::db_error("claim");
                    tracing::warn!(%error, "claiming failed; retrying");
                    if error.is_connection_lost() {
                        queries = None;
                    }
                    backoff.next_delay()
                }
            };
            connected_before |= queries.is_some();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.signals.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        if let Some(queries) = &queries
            && in_waiting
        {
            let leave = queries.leave_waiting(&self.config.worker_id);
            if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(2), leave).await {
                tracing::debug!(%error, "could not leave outbox.waiting");
            }
        }
    }

    /// Claims until a claim comes back short, then says how long to idle.
    /// In notify mode, a claim that found work takes this worker out of
    /// `outbox.waiting`, and going idle (no work, no longer lingering)
    /// puts it back.
    async fn drain(
        &self,
        queries: &mut Option<Queries>,
        shutdown: &CancellationToken,
        lingering: bool,
        in_waiting: &mut bool,
        cursor: &mut String,
    ) -> Result<Drained, DbError> {
        if queries.as_ref().is_none_or(Queries::is_closed) {
            *queries = Some(Queries::connect(&self.db).await?);
        }
        let queries = queries.as_ref().expect("connected just above");
        let worker = &self.config.worker_id;
        let mut worked = false;
        let mut backlog = false;
        loop {
            let Some(mut permits) = self.free_permits(shutdown, backlog).await else {
                return Ok(Drained {
                    idle: Duration::ZERO,
                    worked,
                    started_waiting: false,
                });
            };
            let want = permits.num_permits();
            let claimed = queries
                .route_and_claim(worker, want, self.config.lease, cursor)
                .await?;
            *cursor = claimed.next_endpoint;
            if claimed.more_to_route {
                self.signals.route_backlog.notify_one();
            }
            let jobs = claimed.jobs;
            let full = jobs.len() == want;
            telemetry::claimed(jobs.len());
            let found = !jobs.is_empty();
            worked |= found;
            for job in jobs {
                let permit = permits.split(1).expect("one permit per claimed row");
                self.start(job, permit);
            }
            if found && *in_waiting {
                // Busy now, and looking again soon: producers need not
                // NOTIFY it until it goes idle.
                queries.leave_waiting(worker).await?;
                *in_waiting = false;
            }
            if !full {
                break;
            }
            backlog = true;
        }
        let notify = self.config.wakeup == Wakeup::Notify;
        if notify && (worked || lingering) {
            // Looking again within LINGER_POLL anyway: the schedule can wait.
            return Ok(Drained {
                idle: LINGER_POLL,
                worked,
                started_waiting: false,
            });
        }
        // Idle now: in notify mode it waits for NOTIFY from here on. It
        // looks again at least every poll interval; the margin covers a slow
        // database or a reconnect.
        let refresh = self.config.poll_interval * 3 + WAITING_MARGIN;
        let due = queries.next_due(worker, notify, refresh).await?;
        let started_waiting = notify && !*in_waiting;
        *in_waiting |= notify;
        let idle = match due {
            Some(Duration::ZERO) if !worked => OVERDUE_RECHECK,
            Some(due) => due.min(self.config.poll_interval),
            None => self.config.poll_interval,
        };
        Ok(Drained {
            idle,
            worked,
            started_waiting,
        })
    }

    /// Waits for one permit, then takes every other free one up to the batch
    /// size: never claim more rows than can start at once. With a backlog
    /// (the last claim was full), first wait briefly for a quarter of a
    /// batch to free up, so a busy sidecar claims in batches rather than a
    /// row per finished request.
    async fn free_permits(
        &self,
        shutdown: &CancellationToken,
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
            _ = shutdown.cancelled() => return None,
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
        let hard_stop = self.hard_stop.clone();
        self.tasks.spawn(async move {
            telemetry::in_flight(1.0);
            let outcome = tokio::select! {
                biased;
                _ = hard_stop.cancelled() => release(&job),
                outcome = deliverer.deliver(&job) => outcome,
            };
            telemetry::in_flight(-1.0);
            telemetry::outcome(&job, &outcome);
            log(&job, &outcome);
            // Keep the permit until the writer has room: a stalled database
            // stops new claims instead of piling up outcomes in memory.
            let _ = outcomes.send(outcome).await;
            drop(permit);
        });
    }
}

fn release(job: &Job) -> Outcome {
    Outcome {
        delivery_id: job.delivery_id,
        attempt: job.attempt,
        leased_until: job.leased_until,
        endpoint_id: job.endpoint_id.clone(),
        ordering_key: job.ordering_key.clone(),
        verdict: Verdict::Release,
        record: None,
        disable_endpoint: None,
    }
}

fn log(job: &Job, outcome: &Outcome) {
    let record = outcome.record.as_ref();
    let status = record.and_then(|r| r.status_code);
    let error = record.and_then(|r| r.error.as_deref()).unwrap_or("");
    let duration_ms = record.map_or(0, |r| r.duration.as_millis() as u64);
    let (delivery_id, endpoint, attempt, event_type) = (
        job.delivery_id,
        job.endpoint_id.as_str(),
        job.attempt,
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
