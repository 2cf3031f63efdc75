//! Routing committed messages into deliveries and claiming due ones: the
//! two statements every claim sends in one round trip. Which rows are
//! chosen is `outbox.claim` (see `sql/schema.sql`).

use std::time::{Duration, Instant};

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::Queries;
use crate::db::DbError;
use crate::db::slot::within;
use crate::delivery::{Claim, EndpointTls, Job};

impl Queries {
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
                self.query_one(&self.route, &[&ROUTE_BATCH]),
                self.query(&self.claim, &claim_params)
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
        let jobs: Vec<Job> = rows.iter().map(|row| job(row, claimed_at)).collect();
        let next_endpoint = next_endpoint(&jobs, after_endpoint);
        Ok(Claimed {
            jobs,
            more_to_route,
            next_endpoint,
        })
    }
}

/// A claimed row, read at `claimed_at`, as a job.
fn job(row: &Row, claimed_at: Instant) -> Job {
    Job {
        claim: Claim {
            delivery_id: row.get("id"),
            attempt: row.get("attempts"),
            leased_until: row.get("leased_until"),
        },
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
        db_now_at_claim: row.get("db_now"),
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
