//! The console's database access: one connection, opened on first use and
//! again after it is lost, and the named statements of `sql/queries`
//! (`console_*.sql` to read, the recovery functions of 0015 to act).
//! Reads never select a secret, a header or a TLS key.

use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::db::{Db, DbError};

pub(crate) const ENDPOINTS: &str = include_str!("../../sql/queries/console_endpoints.sql");
pub(crate) const ENDPOINT: &str = include_str!("../../sql/queries/console_endpoint.sql");
pub(crate) const ENDPOINT_ATTEMPTS: &str =
    include_str!("../../sql/queries/console_endpoint_attempts.sql");
pub(crate) const MESSAGE: &str = include_str!("../../sql/queries/console_message.sql");
pub(crate) const MESSAGE_DELIVERIES: &str =
    include_str!("../../sql/queries/console_message_deliveries.sql");
pub(crate) const DELIVERY_ATTEMPTS: &str =
    include_str!("../../sql/queries/console_delivery_attempts.sql");
pub(crate) const DEAD: &str = include_str!("../../sql/queries/console_dead.sql");
pub(crate) const REPLAY: &str = include_str!("../../sql/queries/deliveries_replay.sql");
pub(crate) const REPLAY_DEAD: &str = include_str!("../../sql/queries/endpoints_replay_dead.sql");
pub(crate) const RESEND: &str = include_str!("../../sql/queries/deliveries_resend.sql");
pub(crate) const RECOVER: &str = include_str!("../../sql/queries/endpoints_recover.sql");
pub(crate) const SET_RETRY_SCHEDULE: &str =
    include_str!("../../sql/queries/endpoints_set_retry_schedule.sql");
pub(crate) const CLOCK_AGO: &str = include_str!("../../sql/queries/clock_ago.sql");

/// How long a console statement may take: a person is waiting.
const DEADLINE: Duration = Duration::from_secs(10);

/// What went wrong, in words fit for the page (no connection string).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// The console's connection.
pub struct Store {
    db: Db,
    client: Mutex<Option<Client>>,
}

impl Store {
    /// For the sidecar's database.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            client: Mutex::new(None),
        }
    }

    /// Runs `sql` and returns its rows; reconnects first when the
    /// connection is gone.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let client = tokio::time::timeout(DEADLINE, self.db.connect())
                .await
                .map_err(|_| StoreError("the database did not answer in time".into()))?
                .map_err(|e| StoreError(e.to_string()))?;
            *slot = Some(client);
        }
        let client = slot.as_mut().expect("connected just above");
        let db = &self.db;
        let query = async {
            if !db.is_pooled() {
                return client.query(sql, params).await;
            }
            // Behind a transaction-mode pooler, in a transaction of its
            // own: the settings and the named statement hold only there.
            let tx = client.transaction().await?;
            tx.batch_execute(&db.local_settings()).await?;
            let rows = tx.query(sql, params).await?;
            tx.commit().await?;
            Ok(rows)
        };
        match tokio::time::timeout(DEADLINE, query).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => Err(StoreError(describe(error))),
            Err(_) => {
                *slot = None;
                Err(StoreError("the database did not answer in time".into()))
            }
        }
    }

    /// The first row of `sql`.
    pub async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        self.query(sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError("the database returned no row".into()))
    }

    /// `ago` before now, on the database's clock.
    pub async fn ago(&self, ago: Duration) -> Result<SystemTime, StoreError> {
        Ok(self
            .query_one(CLOCK_AGO, &[&ago.as_secs_f64()])
            .await?
            .get(0))
    }
}

/// A database error's own message (with its hint), which outboxd's
/// functions write for people; other errors by their kind.
fn describe(error: tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({hint})", db.message()),
            None => db.message().to_owned(),
        },
        None => DbError::during("querying")(error).to_string(),
    }
}
