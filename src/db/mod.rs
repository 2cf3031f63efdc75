//! PostgreSQL access: connecting ([`Db`]), the embedded migrations
//! ([`migrate`]) and the typed queries the sidecar runs ([`queries`]).
//!
//! Every component that talks to the database owns its own connection (the
//! listener, the claimer, the outcome writer), so none waits on another and
//! none holds a connection across an HTTP call. No pool is needed for that.

pub mod migrate;
pub mod queries;

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::DatabaseUrl;

/// Database failures. Delivery failures are never this: they are data.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` does not parse.
    #[error("DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    /// A migration file failed to apply; nothing of the run was committed.
    #[error("migration {name} failed: {source}")]
    Migration {
        /// The migration's file name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Connecting, or a statement, failed.
    #[error("{context}: {}", server_message(source))]
    Postgres {
        /// What outboxd was doing.
        context: &'static str,
        /// The driver's error (SQLSTATE, message).
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The driver's text plus, for a server error, its SQLSTATE and message
/// (`db error` alone hides e.g. a missing grant). Never the DETAIL: for a
/// constraint violation it holds the failing row, secrets included.
fn server_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{error}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}

impl DbError {
    /// Attaches what outboxd was doing to a driver error.
    pub fn during(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Postgres { context, source }
    }

    /// Whether the connection is gone (as opposed to a statement failing),
    /// i.e. whether reconnecting is the cure.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::BadUrl(_) => false,
            Self::Migration { source, .. } | Self::Postgres { source, .. } => {
                source.is_closed()
                    || source.code().is_none()
                    || source.code().is_some_and(|c| {
                        // Class 08 (connection exception) and 57P01..57P03
                        // (admin shutdown, crash shutdown, cannot connect now).
                        c.code().starts_with("08") || c.code().starts_with("57P")
                    })
            }
        }
    }
}

/// Opens connections to one database, with the keepalives and timeouts a
/// long-lived sidecar needs to notice a silently dead peer.
#[derive(Clone)]
pub struct Db {
    config: tokio_postgres::Config,
}

impl Db {
    /// Parses the URL; connects lazily.
    pub fn new(url: &DatabaseUrl) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = url.expose().parse().map_err(DbError::BadUrl)?;
        if config.get_application_name().is_none() {
            config.application_name("outboxd");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        Ok(Self { config })
    }

    /// A new connection, driven by a background task until it closes.
    pub async fn connect(&self) -> Result<Client, DbError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(DbError::during("connecting to PostgreSQL"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "database connection closed");
            }
        });
        Ok(client)
    }

    /// The raw driver configuration, e.g. for a connection whose messages
    /// the caller drives itself (LISTEN).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// Exponential reconnect backoff: 100 ms doubling to 10 s, with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    /// Starts at the first step.
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay to wait now; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next.mul_f64(0.75 + fastrand::f64() / 2.0);
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
