//! Writing outcomes back in batches. Delivery tasks hand their [`Outcome`]s
//! to one writer over a bounded channel; the writer takes whatever has
//! queued up (up to [`MAX_BATCH`]) and stores it in one fenced statement,
//! so under load many outcomes share a round trip and at low load none
//! waits for a timer.
//!
//! If the database is unreachable the writer keeps the batch and retries
//! with backoff; the bounded channel then pushes back on delivery tasks,
//! which stops new claims. Only when told to give up (shutdown deadline)
//! does it drop outcomes, and then the leases expire and the deliveries are
//! sent again: at least once, never lost.
//!
//! A keyed outcome is written under its (endpoint, key) advisory lock, which
//! routing holds while it makes that key's deliveries (and anyone who can
//! connect could take). The writer only tries that lock: while
//! someone else holds it, the outcome waits here (tried again with the next
//! batch, or after a pause of up to a second) and every other outcome is
//! written as usual.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::db::queries::Queries;
use crate::db::slot::Slot;
use crate::db::{Db, DbError};
use crate::delivery::{Claim, Outcome, Verdict};
use crate::telemetry;

/// Most outcomes written by one statement.
pub const MAX_BATCH: usize = 512;

/// How soon outcomes deferred for a held ordering key are tried again; the
/// pause doubles up to [`DEFER_MAX`] while the key stays held.
const DEFER_FIRST: Duration = Duration::from_millis(10);
const DEFER_MAX: Duration = Duration::from_secs(1);

/// Stores outcomes for one lease owner.
pub struct Writer {
    db: Db,
    owner: String,
    /// See [`crate::config::Config::disable_after`].
    disable_after: Duration,
    outcomes: mpsc::Receiver<Outcome>,
    /// Nudged after every write: it may have made rows claimable.
    wake: Arc<Notify>,
}

impl Writer {
    /// A writer fed by `outcomes`.
    pub fn new(
        db: Db,
        owner: String,
        disable_after: Duration,
        outcomes: mpsc::Receiver<Outcome>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            db,
            owner,
            disable_after,
            outcomes,
            wake,
        }
    }

    /// Writes until every sender is gone and the queue is empty, or until
    /// `give_up` fires while the database is unreachable (or while
    /// deferred outcomes still wait for their ordering keys).
    pub async fn run(mut self, give_up: CancellationToken) {
        let mut slot = Slot::new(&self.db, "writer");
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Keyed outcomes whose key someone else holds (see
        // `Queries::complete`), tried again with the next batch or after
        // `pause`, whichever comes first.
        let mut deferred: Vec<Outcome> = Vec::new();
        let mut pause = DEFER_FIRST;
        let mut closed = false;
        loop {
            if deferred.is_empty() {
                pause = DEFER_FIRST;
                if closed || self.outcomes.recv_many(&mut batch, MAX_BATCH).await == 0 {
                    return;
                }
            } else {
                tokio::select! {
                    received = self.outcomes.recv_many(&mut batch, MAX_BATCH), if !closed => {
                        closed = received == 0;
                    }
                    _ = tokio::time::sleep(pause) => pause = (pause * 2).min(DEFER_MAX),
                    _ = give_up.cancelled() => {
                        tracing::error!(
                            outcomes = deferred.len(),
                            "gave up waiting for ordering-key locks; these deliveries will be sent again when their leases end"
                        );
                        return;
                    }
                }
                batch.append(&mut deferred);
            }
            match self.flush(&mut slot, &batch, &give_up).await {
                Some(later) => deferred = later,
                None => tracing::error!(
                    outcomes = batch.len(),
                    "gave up writing outcomes; their leases will expire and they will be retried"
                ),
            }
            batch.clear();
        }
    }

    /// Writes one batch, retrying until it lands or `give_up` fires
    /// (`None`); returns the outcomes deferred for their ordering keys. A
    /// batch the database refuses for its data (which retrying cannot
    /// change) is written one outcome at a time, so that one bad outcome
    /// cannot hold up the others; an outcome refused on its own is dropped
    /// and its delivery is sent again when its lease ends.
    async fn flush(
        &self,
        slot: &mut Slot<Queries>,
        batch: &[Outcome],
        give_up: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let error = match self.flush_until_written(slot, batch, give_up).await {
            Flushed::Written(deferred) => return Some(deferred),
            Flushed::GaveUp => return None,
            Flushed::Refused(error) => error,
        };
        if let [outcome] = batch {
            refused(outcome, &error);
            return Some(Vec::new());
        }
        tracing::warn!(%error, outcomes = batch.len(), "the database refused a batch of outcomes; writing them one by one");
        let mut deferred = Vec::new();
        for outcome in batch {
            match self
                .flush_until_written(slot, std::slice::from_ref(outcome), give_up)
                .await
            {
                Flushed::Written(later) => deferred.extend(later),
                Flushed::GaveUp => return None,
                Flushed::Refused(error) => refused(outcome, &error),
            }
        }
        Some(deferred)
    }

    async fn flush_until_written(
        &self,
        slot: &mut Slot<Queries>,
        batch: &[Outcome],
        give_up: &CancellationToken,
    ) -> Flushed {
        let mut retry = false;
        loop {
            let delay = match self.write(slot, batch, retry).await {
                Ok(deferred) => {
                    slot.succeeded();
                    return Flushed::Written(deferred);
                }
                Err(error) if error.is_data_error() => return Flushed::Refused(error),
                Err(error) => {
                    telemetry::db_error("write_outcomes");
                    tracing::warn!(%error, outcomes = batch.len(), "writing outcomes failed; retrying");
                    slot.failed(&error)
                }
            };
            retry = true;
            tokio::select! {
                _ = give_up.cancelled() => return Flushed::GaveUp,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Writes one batch; returns the outcomes deferred for their ordering
    /// keys. On a `retry` the previous try may have landed before its
    /// answer was lost, so rows it finished are not missing.
    async fn write(
        &self,
        slot: &mut Slot<Queries>,
        batch: &[Outcome],
        retry: bool,
    ) -> Result<Vec<Outcome>, DbError> {
        let queries = slot.get().await?;
        let (released, attempted): (Vec<&Outcome>, Vec<&Outcome>) =
            batch.iter().partition(|o| o.verdict == Verdict::Release);
        let mut deferred = Vec::new();
        if !attempted.is_empty() {
            let completed = queries
                .complete(&self.owner, &attempted, self.disable_after)
                .await?;
            deferred.extend(completed.deferred.iter().map(|&i| attempted[i].clone()));
            let missing = attempted.len() - deferred.len() - completed.written;
            if missing > 0 && retry {
                tracing::info!(
                    missing,
                    "after a retry some outcomes were not written again: the failed try had \
                     written them, or their lease had expired"
                );
            } else if missing > 0 {
                tracing::warn!(
                    lost = missing,
                    "some outcomes were not written: their lease had expired and another claim owns them"
                );
            }
            if !deferred.is_empty() {
                tracing::debug!(
                    outcomes = deferred.len(),
                    "ordering keys held elsewhere (routing, or another session); writing those outcomes later"
                );
            }
        }
        if !released.is_empty() {
            let claims: Vec<Claim> = released.iter().map(|o| o.claim).collect();
            queries.release(&self.owner, &claims).await?;
        }
        // Retries and releases may be due at once, a finished head releases
        // the next delivery of its key, and a finished request frees room
        // under an endpoint's cap: look again.
        self.wake.notify_one();
        Ok(deferred)
    }
}

/// How [`Writer::flush_until_written`] ended.
enum Flushed {
    /// Landed, but for these outcomes deferred for their ordering keys.
    Written(Vec<Outcome>),
    /// `give_up` fired while the database was unreachable.
    GaveUp,
    /// The database refused the data; retrying would not help.
    Refused(DbError),
}

fn refused(outcome: &Outcome, error: &DbError) {
    telemetry::db_error("write_outcomes");
    tracing::error!(
        %error,
        delivery_id = outcome.claim.delivery_id,
        attempt = outcome.claim.attempt,
        "the database refused this outcome; the delivery will be sent again when its lease ends"
    );
}
