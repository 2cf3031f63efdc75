//! The sidecar's statements, one named `.sql` file each in `sql/queries`,
//! prepared once per connection. Each gets at most [`STATEMENT_DEADLINE`]
//! to answer, so that a connection that died silently is replaced instead
//! of stalling claims or outcome writes forever.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::{Db, DbError};
use crate::delivery::{EndpointTls, Job, Outcome, Verdict};

const ROUTE: &str = include_str!("../../sql/queries/messages_route.sql");
const CLAIM: &str = include_str!("../../sql/queries/deliveries_claim.sql");
const COMPLETE: &str = include_str!("../../sql/queries/deliveries_complete.sql");
const RELEASE: &str = include_str!("../../sql/queries/deliveries_release.sql");
const NEXT_DUE: &str = include_str!("../../sql/queries/deliveries_next_due.sql");
const LEAVE_WAITING: &str = include_str!("../../sql/queries/waiting_leave.sql");
const TRY_LOCK_KEYS: &str = include_str!("../../sql/queries/ordering_keys_try_lock.sql");

/// The longest any of these statements may take before the connection is
/// presumed dead and replaced. A healthy server answers in milliseconds
/// (claims skip locked rows, outcome writes touch only their own claims),
/// so only a dead or wedged connection gets near it; the statement is then
/// also cancelled server-side, in case the server is merely slow.
pub const STATEMENT_DEADLINE: Duration = Duration::from_secs(10);

/// A connection with the sidecar's statements prepared on it.
pub struct Queries {
    client: Client,
    /// For cancelling a statement that outlived its deadline.
    db: Db,
    route: Statement,
    claim: Statement,
    complete: Statement,
    release: Statement,
    next_due: Statement,
    leave_waiting: Statement,
    try_lock_keys: Statement,
}

impl Queries {
    /// Connects and prepares.
    pub async fn connect(db: &Db) -> Result<Self, DbError> {
        let client = db.connect().await?;
        // Every statement here runs on its indexes. Plans are made once per
        // connection, perhaps while the tables are nearly empty (a new
        // database, or after a TRUNCATE), when a sequential scan looks
        // cheapest; the outcome write would then scan every delivery. No
        // JIT either: with that penalty every plan would look expensive
        // enough to compile, 100 ms and more each time.
        within(
            db,
            &client,
            "setting up the connection",
            client.batch_execute("SET enable_seqscan = off; SET jit = off"),
        )
        .await?;
        let prepare = |sql| client.prepare(sql);
        let (route, claim, complete, release, next_due, leave_waiting, try_lock_keys) = within(
            db,
            &client,
            "preparing statements (has `outboxd migrate` run?)",
            async {
                tokio::try_join!(
                    prepare(ROUTE),
                    prepare(CLAIM),
                    prepare(COMPLETE),
                    prepare(RELEASE),
                    prepare(NEXT_DUE),
                    prepare(LEAVE_WAITING),
                    prepare(TRY_LOCK_KEYS)
                )
            },
        )
        .await?;
        Ok(Self {
            client,
            db: db.clone(),
            route,
            claim,
            complete,
            release,
            next_due,
            leave_waiting,
            try_lock_keys,
        })
    }

    /// Whether the underlying connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Claims up to `limit` due deliveries for `owner`, leased for `lease`,
    /// after routing what waits (see [`route_and_claim`](Self::route_and_claim)).
    pub async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Job>, DbError> {
        Ok(self.route_and_claim(owner, limit, lease, "").await?.jobs)
    }

    /// Routes up to [`ROUTE_BATCH`] committed messages into their
    /// deliveries (and as many scheduled ones that are due); returns how
    /// many.
    pub async fn route(&self) -> Result<i32, DbError> {
        let row = within(
            &self.db,
            &self.client,
            "routing messages",
            self.client.query_one(&self.route, &[&ROUTE_BATCH]),
        )
        .await?;
        Ok(row.get(0))
    }

    /// Routes up to [`ROUTE_BATCH`] committed messages into their
    /// deliveries, then claims up to `limit` due deliveries for `owner`,
    /// leased for `lease`, walking endpoints from after `after_endpoint`
    /// (see [`Claimed::next_endpoint`]): two transactions, one round trip.
    pub async fn route_and_claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
        after_endpoint: &str,
    ) -> Result<Claimed, DbError> {
        let limit = limit as i64;
        let lease = lease.as_secs_f64();
        let claim_params: [&(dyn ToSql + Sync); 4] = [&owner, &limit, &lease, &after_endpoint];
        // Polled in this order, so sent in this order, without waiting for
        // the first answer.
        let both = async {
            tokio::try_join!(
                self.client.query_one(&self.route, &[&ROUTE_BATCH]),
                self.client.query(&self.claim, &claim_params)
            )
        };
        let (routed, rows) = within(
            &self.db,
            &self.client,
            "routing and claiming deliveries",
            both,
        )
        .await?;
        let more_to_route = routed.get::<_, i32>(0) >= ROUTE_BATCH;
        let claimed_at = Instant::now();
        let jobs: Vec<Job> = rows
            .iter()
            .map(|row| Job {
                delivery_id: row.get("id"),
                attempt: row.get("attempts"),
                leased_until: row.get("leased_until"),
                schedule_attempt: row.get("schedule_attempt"),
                endpoint_id: row.get("endpoint_id"),
                ordering_key: row.get("ordering_key"),
                event_id: row.get("event_id"),
                event_type: row.get("event_type"),
                payload: row.get("payload"),
                url: row.get("url"),
                secrets: row.get("secrets"),
                timeout: row
                    .get::<_, Option<i32>>("timeout_ms")
                    .map(|ms| Duration::from_millis(ms.max(1) as u64)),
                headers: row.get("headers"),
                age_at_claim: Duration::try_from_secs_f64(row.get::<_, f64>("age_secs"))
                    .unwrap_or_default(),
                claimed_at,
                tls: EndpointTls {
                    ca_pem: row.get("ca_pem"),
                    client_cert_pem: row.get("client_cert_pem"),
                    client_key_pem: row.get("client_key_pem"),
                },
                retry_schedule: row
                    .get::<_, Option<Vec<f64>>>("retry_schedule_secs")
                    .map(|secs| {
                        secs.into_iter()
                            .map(|s| Duration::try_from_secs_f64(s).unwrap_or_default())
                            .collect()
                    }),
            })
            .collect();
        let next_endpoint = next_endpoint(&jobs, after_endpoint);
        Ok(Claimed {
            jobs,
            more_to_route,
            next_endpoint,
        })
    }

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
                .complete_statement(owner, outcomes, disable_after)
                .await?;
            return Ok(Completed {
                written,
                deferred: Vec::new(),
            });
        }
        keys.sort_unstable();
        keys.dedup();
        within(
            &self.db,
            &self.client,
            "writing delivery outcomes",
            self.client.batch_execute("BEGIN"),
        )
        .await?;
        let result = async {
            let (endpoints, ordering_keys): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
            let held = within(
                &self.db,
                &self.client,
                "trying the ordering keys' locks",
                self.client
                    .query(&self.try_lock_keys, &[&endpoints, &ordering_keys]),
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
                self.complete_statement(owner, &now, disable_after).await?
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
            ids.push(outcome.delivery_id);
            attempts.push(outcome.attempt);
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
            leases.push(outcome.leased_until);
        }
        let rows = within(
            &self.db,
            &self.client,
            "writing delivery outcomes",
            self.client.query(
                &self.complete,
                &[
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
                ],
            ),
        )
        .await?;
        Ok(rows.len())
    }

    /// `owner` stops waiting for NOTIFY (busy and lingering, or shutting
    /// down).
    pub async fn leave_waiting(&self, owner: &str) -> Result<(), DbError> {
        within(
            &self.db,
            &self.client,
            "leaving outbox.waiting",
            self.client.execute(&self.leave_waiting, &[&owner]),
        )
        .await?;
        Ok(())
    }

    /// Hands claims (delivery id, attempt, lease expiry) back uncounted;
    /// returns how many were still ours.
    pub async fn release(
        &self,
        owner: &str,
        claims: &[(i64, i32, SystemTime)],
    ) -> Result<usize, DbError> {
        let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
        let attempts: Vec<i32> = claims.iter().map(|c| c.1).collect();
        let leases: Vec<SystemTime> = claims.iter().map(|c| c.2).collect();
        let rows = within(
            &self.db,
            &self.client,
            "releasing claimed deliveries",
            self.client
                .query(&self.release, &[&owner, &ids, &attempts, &leases]),
        )
        .await?;
        Ok(rows.len())
    }

    /// How long until the earliest open delivery is due (zero if overdue),
    /// or `None` when nothing is open. With `waiting`, also records that
    /// `owner` now waits for producers' NOTIFY (see `outbox.waiting`),
    /// promising to look again within `refresh`; rows of other workers
    /// that broke that promise (crashed sidecars) are removed.
    pub async fn next_due(
        &self,
        owner: &str,
        waiting: bool,
        refresh: Duration,
    ) -> Result<Option<Duration>, DbError> {
        let refresh = refresh.as_secs_f64();
        let row = within(
            &self.db,
            &self.client,
            "looking up the next due delivery",
            self.client
                .query_one(&self.next_due, &[&owner, &waiting, &refresh]),
        )
        .await?;
        // Waiting keyed deliveries are due at 'infinity': +inf seconds,
        // "not soon".
        Ok(row
            .get::<_, Option<f64>>(0)
            .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)))
    }
}

/// Most messages routed before one claim.
pub const ROUTE_BATCH: i32 = 1000;

/// What [`Queries::route_and_claim`] found.
#[derive(Debug)]
pub struct Claimed {
    /// The claimed deliveries.
    pub jobs: Vec<Job>,
    /// A whole batch was routed: more messages may wait for routing, so
    /// claim again at once even if this claim came back short.
    pub more_to_route: bool,
    /// Where the next claim's walk over endpoints starts: after the last
    /// endpoint served, in the walk's order (ids ascending from the
    /// previous start, wrapping around), so that endpoints take turns.
    pub next_endpoint: String,
}

/// The last endpoint of `jobs` in walk order from `after`: the greatest id
/// above `after`, else (the walk wrapped) the greatest id; `after` when
/// nothing was claimed.
fn next_endpoint(jobs: &[Job], after: &str) -> String {
    last_in_walk(jobs.iter().map(|j| j.endpoint_id.as_str()), after).to_owned()
}

fn last_in_walk<'a>(ids: impl Iterator<Item = &'a str> + Clone, after: &'a str) -> &'a str {
    ids.clone()
        .filter(|id| *id > after)
        .max()
        .or_else(|| ids.max())
        .unwrap_or(after)
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

/// Runs `statement` on `client` for at most [`STATEMENT_DEADLINE`]. When the
/// deadline passes, the server is asked (on a new connection, in the
/// background) to cancel it, so that a slow but alive server does not go
/// on working for a client that left.
async fn within<T>(
    db: &Db,
    client: &Client,
    context: &'static str,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(STATEMENT_DEADLINE, statement).await {
        Ok(result) => result.map_err(DbError::during(context)),
        Err(_) => {
            db.cancel_in_background(client);
            Err(DbError::Unresponsive {
                context,
                after: STATEMENT_DEADLINE,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::last_in_walk;

    #[test]
    fn the_next_walk_starts_after_the_last_endpoint_served() {
        let walk = |ids: &[&'static str], after| last_in_walk(ids.iter().copied(), after);
        assert_eq!(walk(&["b", "d", "c"], "a"), "d");
        // Wrapped past the end: the greatest id served before the start.
        assert_eq!(walk(&["y", "a", "b"], "x"), "y");
        assert_eq!(walk(&["a", "b"], "x"), "b");
        assert_eq!(walk(&[], "m"), "m", "nothing claimed: same start");
    }
}
