//! The sidecar's statements, one named `.sql` file each in `sql/queries`,
//! prepared once per connection, each bounded by
//! [`STATEMENT_DEADLINE`](super::slot::STATEMENT_DEADLINE). What to claim
//! is decided in `claim.rs` (and the SQL it calls); how an outcome is
//! written, in `complete.rs`.

mod claim;
mod complete;

use std::time::Duration;

use tokio_postgres::{Client, Statement};

pub use self::claim::{Claimed, ROUTE_BATCH};
pub use self::complete::Completed;
use super::slot::{Session, within};
use super::{Db, DbError};

const ROUTE: &str = include_str!("../../../sql/queries/messages_route.sql");
const CLAIM: &str = include_str!("../../../sql/queries/deliveries_claim.sql");
const COMPLETE: &str = include_str!("../../../sql/queries/deliveries_complete.sql");
const RELEASE: &str = include_str!("../../../sql/queries/deliveries_release.sql");
const NEXT_DUE: &str = include_str!("../../../sql/queries/deliveries_next_due.sql");
const LEAVE_WAITING: &str = include_str!("../../../sql/queries/waiting_leave.sql");
const TRY_LOCK_KEYS: &str = include_str!("../../../sql/queries/ordering_keys_try_lock.sql");

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
    ) -> Result<Vec<crate::delivery::Job>, DbError> {
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

impl Session for Queries {
    type Spec = ();

    async fn open(db: &Db, _: &()) -> Result<Self, DbError> {
        Self::connect(db).await
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}
