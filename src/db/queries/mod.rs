//! The sidecar's statements, one named `.sql` file each in `sql/queries`,
//! prepared once per connection, each bounded by
//! [`STATEMENT_DEADLINE`](super::slot::STATEMENT_DEADLINE). What to claim
//! is decided in `claim.rs` (and the SQL it calls); how an outcome is
//! written, in `complete.rs`.

mod claim;
mod complete;

use std::time::Duration;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

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

/// What these sessions always set: every statement here runs on its
/// indexes. Plans are made once per connection, perhaps while the tables
/// are nearly empty (a new database, or after a TRUNCATE), when a
/// sequential scan looks cheapest; the outcome write would then scan every
/// delivery. No JIT either: with that penalty every plan would look
/// expensive enough to compile, 100 ms and more each time.
const PLANNER_SETTINGS: &str = "enable_seqscan = off; SET jit = off";

/// One of the statements: prepared once on a direct connection; behind a
/// transaction-mode pooler, sent unnamed with its parameter types each time
/// (a named statement would not survive the transaction).
struct Stmt {
    sql: &'static str,
    /// `None` when pooled.
    prepared: Option<Statement>,
    /// The parameter types the server inferred.
    types: Vec<Type>,
}

/// A connection with the sidecar's statements prepared on it.
pub struct Queries {
    client: Client,
    /// For cancelling a statement that outlived its deadline.
    db: Db,
    /// Behind a transaction-mode pooler: what starts each transaction
    /// (`BEGIN` and the `SET LOCAL`s). `None` on a direct connection.
    begin: Option<String>,
    route: Stmt,
    claim: Stmt,
    complete: Stmt,
    release: Stmt,
    next_due: Stmt,
    leave_waiting: Stmt,
    try_lock_keys: Stmt,
}

impl Queries {
    /// Connects and prepares.
    pub async fn connect(db: &Db) -> Result<Self, DbError> {
        let client = db.connect().await?;
        let begin = db.is_pooled().then(|| {
            let planner = PLANNER_SETTINGS.replace("SET ", "SET LOCAL ");
            format!("BEGIN; {}; SET LOCAL {planner}", db.local_settings())
        });
        match &begin {
            None => {
                within(
                    db,
                    &client,
                    "setting up the connection",
                    client.batch_execute(&format!("SET {PLANNER_SETTINGS}")),
                )
                .await?
            }
            // Prepared only to learn the parameter types, inside one
            // transaction so that preparing, describing and closing all
            // happen on one server connection of the pool.
            Some(begin) => {
                within(
                    db,
                    &client,
                    "setting up the connection",
                    client.batch_execute(begin),
                )
                .await?
            }
        }
        let prepare = |sql| client.prepare(sql);
        let sqls = [
            ROUTE,
            CLAIM,
            COMPLETE,
            RELEASE,
            NEXT_DUE,
            LEAVE_WAITING,
            TRY_LOCK_KEYS,
        ];
        let prepared = within(
            db,
            &client,
            "preparing statements (has `outboxd migrate` run?)",
            async {
                let [a, b, c, d, e, f, g] = sqls;
                let all = tokio::try_join!(
                    prepare(a),
                    prepare(b),
                    prepare(c),
                    prepare(d),
                    prepare(e),
                    prepare(f),
                    prepare(g)
                )?;
                Ok([all.0, all.1, all.2, all.3, all.4, all.5, all.6])
            },
        )
        .await;
        let pooled = begin.is_some();
        let stmts: Vec<Stmt> = match prepared {
            // When pooled, dropping the named statements here closes them
            // (queued before the COMMIT below).
            Ok(prepared) => sqls
                .into_iter()
                .zip(prepared)
                .map(|(sql, statement)| Stmt {
                    sql,
                    types: statement.params().to_vec(),
                    prepared: (!pooled).then_some(statement),
                })
                .collect(),
            Err(error) => {
                if pooled && !client.is_closed() {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                return Err(error);
            }
        };
        if pooled {
            within(
                db,
                &client,
                "setting up the connection",
                client.batch_execute("COMMIT"),
            )
            .await?;
        }
        let mut stmts = stmts.into_iter();
        let mut next = || stmts.next().expect("one per statement");
        Ok(Self {
            route: next(),
            claim: next(),
            complete: next(),
            release: next(),
            next_due: next(),
            leave_waiting: next(),
            try_lock_keys: next(),
            client,
            db: db.clone(),
            begin,
        })
    }

    /// Runs `stmt` as its own transaction: on a direct connection the
    /// prepared statement; behind a pooler `BEGIN; SET LOCAL ...`, the
    /// statement unnamed, and `COMMIT`, sent at once (one round trip). A
    /// failed statement aborts the transaction, which the `COMMIT` then
    /// ends.
    async fn query(
        &self,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let Some(begin) = &self.begin else {
            return self.query_in_transaction(stmt, params).await;
        };
        let (_, rows, _) = tokio::try_join!(
            self.client.batch_execute(begin),
            self.query_in_transaction(stmt, params),
            self.client.batch_execute("COMMIT")
        )?;
        Ok(rows)
    }

    /// Like [`query`](Self::query), for a statement that always returns
    /// one row (an aggregate or a function call).
    async fn query_one(
        &self,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let rows = self.query(stmt, params).await?;
        // Infallible: each `stmt` given here is one SELECT without FROM or
        // WHERE, which yields exactly one row.
        Ok(rows.into_iter().next().expect("one row"))
    }

    /// Runs `stmt` inside the current transaction (or as its own, on a
    /// direct connection outside one).
    async fn query_in_transaction(
        &self,
        stmt: &Stmt,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match &stmt.prepared {
            Some(prepared) => self.client.query(prepared, params).await,
            None => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                    .iter()
                    .copied()
                    .zip(stmt.types.iter().cloned())
                    .collect();
                self.client.query_typed(stmt.sql, &typed).await
            }
        }
    }

    /// Starts an explicit transaction (with the settings, when pooled).
    async fn begin(&self, context: &'static str) -> Result<(), DbError> {
        let begin = self.begin.as_deref().unwrap_or("BEGIN");
        within(
            &self.db,
            &self.client,
            context,
            self.client.batch_execute(begin),
        )
        .await
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
            self.query_one(&self.route, &[&ROUTE_BATCH]),
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
            self.query(&self.leave_waiting, &[&owner]),
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
            self.query_one(&self.next_due, &[&owner, &waiting, &refresh]),
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
