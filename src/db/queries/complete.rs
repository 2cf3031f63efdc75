//! How an outcome is written: fenced on its claim, in batches, under the
//! ordering key's lock when it has one; and how unattempted claims are
//! handed back.

use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;

use super::Queries;
use crate::db::DbError;
use crate::db::slot::within;
use crate::delivery::{Claim, Outcome, Verdict};

impl Queries {
    /// Writes attempted outcomes (not releases) for `owner`, fenced.
    /// Outcomes whose lease was lost are silently skipped. Endpoints failing
    /// every attempt for longer than `disable_after` are disabled.
    ///
    /// Finishing a keyed delivery releases the next of its key; that happens
    /// under the (endpoint, key) advisory lock, which routing holds while it
    /// makes that key's deliveries. The lock is only tried: an outcome whose
    /// key someone else holds is not written now but returned as deferred,
    /// so that anyone holding the lock delays that key alone, never the
    /// other outcomes.
    pub async fn complete(
        &self,
        owner: &str,
        outcomes: &[&Outcome],
        disable_after: Duration,
    ) -> Result<Completed, DbError> {
        let mut keys: Vec<(&str, &str)> = outcomes
            .iter()
            .filter_map(|o| Some((o.endpoint_id.as_str(), o.ordering_key.as_deref()?)))
            .collect();
        if keys.is_empty() {
            let written = self
                .complete_statement(owner, outcomes, disable_after, false)
                .await?;
            return Ok(Completed {
                written,
                deferred: Vec::new(),
            });
        }
        keys.sort_unstable();
        keys.dedup();
        self.begin("writing delivery outcomes").await?;
        let result = async {
            let (endpoints, ordering_keys): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
            let held = within(
                &self.db,
                &self.client,
                "trying the ordering keys' locks",
                self.query_in_transaction(&self.try_lock_keys, &[&endpoints, &ordering_keys]),
            )
            .await?;
            let held: Vec<(String, String)> =
                held.iter().map(|row| (row.get(0), row.get(1))).collect();
            let is_held = |o: &Outcome| {
                o.ordering_key.as_ref().is_some_and(|key| {
                    held.iter()
                        .any(|(endpoint, k)| *endpoint == o.endpoint_id && k == key)
                })
            };
            let (deferred, now): (Vec<usize>, Vec<usize>) =
                (0..outcomes.len()).partition(|&i| is_held(outcomes[i]));
            let now: Vec<&Outcome> = now.into_iter().map(|i| outcomes[i]).collect();
            let written = if now.is_empty() {
                0
            } else {
                self.complete_statement(owner, &now, disable_after, true)
                    .await?
            };
            within(
                &self.db,
                &self.client,
                "committing delivery outcomes",
                self.client.batch_execute("COMMIT"),
            )
            .await?;
            Ok(Completed { written, deferred })
        }
        .await;
        if result.is_err() && !self.client.is_closed() {
            let _ = self.client.batch_execute("ROLLBACK").await;
        }
        result
    }

    async fn complete_statement(
        &self,
        owner: &str,
        outcomes: &[&Outcome],
        disable_after: Duration,
        in_transaction: bool,
    ) -> Result<usize, DbError> {
        let n = outcomes.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut retry_in = Vec::with_capacity(n);
        let mut codes = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut started = Vec::with_capacity(n);
        let mut durations = Vec::with_capacity(n);
        let mut excerpts = Vec::with_capacity(n);
        let mut disable = Vec::with_capacity(n);
        let mut leases = Vec::with_capacity(n);
        for outcome in outcomes {
            let record = outcome.record.as_ref();
            ids.push(outcome.claim.delivery_id);
            attempts.push(outcome.claim.attempt);
            statuses.push(outcome.verdict.status());
            retry_in.push(match outcome.verdict {
                Verdict::Retry(delay) => delay.as_secs_f64(),
                _ => 0.0,
            });
            codes.push(record.and_then(|r| r.status_code).map(i32::from));
            errors.push(record.and_then(|r| r.error.as_deref()));
            started.push(record.map_or_else(SystemTime::now, |r| r.started_at));
            durations
                .push(record.map_or(0, |r| r.duration.as_millis().min(i32::MAX as u128) as i32));
            excerpts.push(record.and_then(|r| r.response_excerpt.as_deref()));
            disable.push(outcome.disable_endpoint.as_deref());
            leases.push(outcome.claim.leased_until);
        }
        let params: [&(dyn ToSql + Sync); 13] = [
            &owner,
            &ids,
            &attempts,
            &statuses,
            &retry_in,
            &codes,
            &errors,
            &started,
            &durations,
            &excerpts,
            &disable,
            &disable_after.as_secs_f64(),
            &leases,
        ];
        let statement = async {
            if in_transaction {
                self.query_in_transaction(&self.complete, &params).await
            } else {
                self.query(&self.complete, &params).await
            }
        };
        let rows = within(
            &self.db,
            &self.client,
            "writing delivery outcomes",
            statement,
        )
        .await?;
        Ok(rows.len())
    }

    /// Hands `claims` back uncounted; returns how many were still ours.
    pub async fn release(&self, owner: &str, claims: &[Claim]) -> Result<usize, DbError> {
        let ids: Vec<i64> = claims.iter().map(|c| c.delivery_id).collect();
        let attempts: Vec<i32> = claims.iter().map(|c| c.attempt).collect();
        let leases: Vec<SystemTime> = claims.iter().map(|c| c.leased_until).collect();
        let rows = within(
            &self.db,
            &self.client,
            "releasing claimed deliveries",
            self.query(&self.release, &[&owner, &ids, &attempts, &leases]),
        )
        .await?;
        Ok(rows.len())
    }
}

/// What [`Queries::complete`] did with a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Completed {
    /// Outcomes that landed (the others had lost their lease).
    pub written: usize,
    /// Positions in the batch of keyed outcomes not written because
    /// someone else holds their key's lock: write them again shortly.
    pub deferred: Vec<usize>,
}
