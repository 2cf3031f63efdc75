//! PostgreSQL access: connecting ([`Db`]) over TLS as the connection
//! string asks ([`tls`]), the embedded migrations ([`migrate`]) and the
//! typed queries the sidecar runs ([`queries`]).
//!
//! Every component that talks to the database owns its own connection (the
//! listener, the claimer, the outcome writer), so none waits on another and
//! none holds a connection across an HTTP call. No pool is needed for that.

pub mod locks;
pub mod migrate;
pub mod queries;
pub mod slot;
pub mod tls;

use std::fmt;
use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{DatabaseUrl, Pooler};
use tls::TlsSettings;

/// The stream of an encrypted connection (a plain one does not use it).
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// Database failures. Delivery failures are never this: they are data.
///
/// The message carries the driver's whole cause chain on one line (the
/// driver's own `Display` says only "db error"), so a logged `%error`
/// tells what happened; for that reason the driver error is not also
/// exposed as `source()`, which would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` does not parse.
    #[error(
        "the database URL (--database-url, DATABASE_URL) is not a valid PostgreSQL connection \
         string: {}",
        Chain(.0)
    )]
    BadUrl(tokio_postgres::Error),
    /// The TLS settings of `DATABASE_URL` are wrong, or a certificate file
    /// they name cannot be used. The message includes the cause's, which is
    /// therefore not also its `source()` (it would print twice).
    #[error("the database URL (--database-url, DATABASE_URL): {0}")]
    Tls(tls::TlsError),
    /// A migration file failed to apply; nothing of the run was committed.
    #[error("migration {name} failed: {}", Chain(.cause))]
    Migration {
        /// The migration's file name.
        name: &'static str,
        /// The driver's error.
        cause: tokio_postgres::Error,
    },
    /// Connecting, or a statement, failed.
    #[error("{context}: {}", Chain(.cause))]
    Postgres {
        /// What outboxd was doing.
        context: &'static str,
        /// The driver's error (SQLSTATE, message).
        cause: tokio_postgres::Error,
    },
    /// The server refused the connection's startup options: a
    /// transaction-mode pooler (PgBouncer: `unsupported startup parameter:
    /// options`), which retrying will not change.
    #[error(
        "{context}: {}: a transaction-mode pooler refuses startup options; \
         `outboxd run` needs --pooler transaction (OUTBOXD_POOLER) there, \
         other commands but `migrate` a direct URL",
        Chain(.cause)
    )]
    StartupRefused {
        /// What outboxd was doing.
        context: &'static str,
        /// The driver's error.
        cause: tokio_postgres::Error,
    },
    /// The server closed the connection without saying why.
    #[error("{context}: the connection closed")]
    Closed {
        /// What outboxd was doing.
        context: &'static str,
    },
    /// A statement got no answer in time: the connection is presumed dead
    /// (a silently dropped connection never answers, and TCP may take many
    /// minutes to say so).
    #[error("{context}: no answer within {after:?}; the connection is presumed dead")]
    Unresponsive {
        /// What outboxd was doing.
        context: &'static str,
        /// How long it waited.
        after: Duration,
    },
}

/// A driver error and its causes on one line: the server's message with
/// its SQLSTATE, or e.g. `error connecting to server: Connection refused`.
/// Never the DETAIL: for a constraint violation it holds the failing row,
/// secrets included.
struct Chain<'a>(&'a tokio_postgres::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(db) = self.0.as_db_error() {
            write!(
                f,
                "{}: {} (SQLSTATE {})",
                db.severity(),
                db.message(),
                db.code().code()
            )?;
            return Ok(());
        }
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl From<tls::TlsError> for DbError {
    fn from(error: tls::TlsError) -> Self {
        Self::Tls(error)
    }
}

impl DbError {
    /// Attaches what outboxd was doing to a driver error.
    pub fn during(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |cause| Self::Postgres { context, cause }
    }

    /// Whether the connection is gone (as opposed to a statement failing),
    /// i.e. whether reconnecting is the cure.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::BadUrl(_) | Self::Tls(_) | Self::StartupRefused { .. } => false,
            Self::Unresponsive { .. } | Self::Closed { .. } => true,
            Self::Migration { cause, .. } | Self::Postgres { cause, .. } => {
                cause.is_closed()
                    || cause.code().is_none()
                    || cause.code().is_some_and(|c| {
                        // Class 08 (connection exception) and 57P01..57P03
                        // (admin shutdown, crash shutdown, cannot connect now).
                        c.code().starts_with("08") || c.code().starts_with("57P")
                    })
            }
        }
    }

    /// Whether the server refused to write because it is read-only
    /// (SQLSTATE 25006, read_only_sql_transaction): a standby, or
    /// `default_transaction_read_only` during maintenance. Nothing was
    /// written, so no retry or lease was spent; reconnecting may reach the
    /// new primary (`target_session_attrs=read-write`).
    pub fn is_read_only(&self) -> bool {
        match self {
            Self::Migration { cause, .. } | Self::Postgres { cause, .. } => {
                cause.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
            }
            _ => false,
        }
    }

    /// Whether the statement failed on the data it was given (SQLSTATE
    /// classes 22, data exception, and 23, integrity constraint
    /// violation): running it again with the same data fails again.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::Migration { cause, .. } | Self::Postgres { cause, .. } => cause
                .code()
                .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23")),
            _ => false,
        }
    }
}

/// The longest a connection handshake (TCP, startup, authentication) may
/// take: the default TCP connect timeout plus as much again for the rest.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(20);

/// Opens connections to one database, with the keepalives and timeouts a
/// long-lived sidecar needs to notice a silently dead peer.
#[derive(Clone)]
pub struct Db {
    config: tokio_postgres::Config,
    /// Used when the server and `sslmode` agree on TLS.
    tls: MakeRustlsConnect,
    /// What a failed connection attempt was doing (names the sslmode).
    connect_context: &'static str,
    /// Cap of the reconnect backoff of every component using this database.
    reconnect_max: Duration,
    /// What the connections go through; decides how `settings` are sent.
    pooler: Pooler,
    /// Server settings of every session (name, value): startup options on
    /// a direct connection, `SET LOCAL` per transaction behind a pooler.
    settings: Vec<(&'static str, &'static str)>,
    /// The driver's settings as the URL gave them; `config` is this plus
    /// the startup options.
    base: tokio_postgres::Config,
}

impl Db {
    /// Parses the URL and reads the certificate files it names; connects
    /// lazily.
    pub fn new(url: &DatabaseUrl) -> Result<Self, DbError> {
        let split = crate::config::url_params::split(url.expose()).map_err(tls::TlsError::from)?;
        let tls = TlsSettings::from_params(&split.tls)?;
        let mut config: tokio_postgres::Config = split.driver.parse().map_err(DbError::BadUrl)?;
        config.ssl_mode(tls.driver_mode());
        if config.get_application_name().is_none() {
            config.application_name("outboxd");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Keepalives find a dead peer of an idle connection; the user
        // timeout one that stopped acknowledging a statement, which TCP
        // would otherwise retransmit for a quarter of an hour.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        Ok(Self {
            base: config.clone(),
            config,
            connect_context: tls.connect_context(),
            tls: tls.connector()?,
            reconnect_max: Backoff::DEFAULT_MAX,
            pooler: Pooler::None,
            settings: Vec::new(),
        })
    }

    /// Commits on these connections stop waiting for the WAL flush
    /// (`synchronous_commit = off` on these sessions only; producers are
    /// unaffected). A database crash may then forget their last fraction
    /// of a second: claims and outcomes lost that way only make deliveries
    /// due again (at least once still holds; nothing is lost).
    pub fn with_async_commit(mut self) -> Self {
        self.add_setting("synchronous_commit", "off");
        self
    }

    /// Names in these sessions resolve in `pg_catalog` (and `pg_temp`)
    /// only, never through `public` or another schema some role may
    /// create objects in: a function there that matches a call better
    /// than the built-in would otherwise run with the sidecar's rights.
    /// Every outboxd statement qualifies its own objects (`outbox.`).
    pub fn with_pinned_search_path(mut self) -> Self {
        self.add_setting("search_path", "pg_catalog, pg_temp");
        self
    }

    /// Connections go through `pooler`. Behind a transaction-mode pooler
    /// no session survives a transaction, so the settings above are sent
    /// per transaction ([`local_settings`](Self::local_settings)) instead
    /// of as startup options, which such a pooler refuses.
    pub fn with_pooler(mut self, pooler: Pooler) -> Self {
        self.pooler = pooler;
        self.apply_settings();
        self
    }

    /// What the connections go through.
    pub fn pooler(&self) -> Pooler {
        self.pooler
    }

    /// Whether every statement must carry its own settings and run
    /// without a named statement (a transaction-mode pooler).
    pub fn is_pooled(&self) -> bool {
        self.pooler == Pooler::Transaction
    }

    fn add_setting(&mut self, name: &'static str, value: &'static str) {
        self.settings.retain(|(n, _)| *n != name);
        self.settings.push((name, value));
        self.apply_settings();
    }

    /// The settings as startup options (`-c name=value`) after those of
    /// the URL, unless pooled: a transaction-mode pooler refuses any.
    fn apply_settings(&mut self) {
        let mut options: Vec<String> = self
            .base
            .get_options()
            .map(str::to_owned)
            .into_iter()
            .collect();
        if !self.is_pooled() {
            options.extend(
                self.settings
                    .iter()
                    .map(|(name, value)| format!("-c {name}={}", value.replace(' ', ""))),
            );
        }
        self.config = self.base.clone();
        // An empty `options` is still a startup option, which a
        // transaction-mode pooler refuses: set it only when there is one.
        if !options.is_empty() {
            self.config.options(options.join(" "));
        }
    }

    /// `SET LOCAL` statements for the settings (semicolon-separated, empty
    /// unless pooled), for the start of each transaction.
    pub fn local_settings(&self) -> String {
        if !self.is_pooled() {
            return String::new();
        }
        self.settings
            .iter()
            .map(|(name, value)| format!("SET LOCAL {name} = {value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Opens a transaction on `client` with this database's settings
    /// (`SET LOCAL`, when pooled; as startup options they already hold).
    pub async fn transaction<'a>(
        &self,
        client: &'a mut Client,
        context: &'static str,
    ) -> Result<tokio_postgres::Transaction<'a>, DbError> {
        let tx = client
            .transaction()
            .await
            .map_err(DbError::during(context))?;
        let settings = self.local_settings();
        if !settings.is_empty() {
            tx.batch_execute(&settings)
                .await
                .map_err(DbError::during(context))?;
        }
        Ok(tx)
    }

    /// Caps the reconnect backoff handed out by [`backoff`](Self::backoff).
    pub fn with_reconnect_max(mut self, max: Duration) -> Self {
        self.reconnect_max = max;
        self
    }

    /// A fresh reconnect backoff for one component.
    pub fn backoff(&self) -> Backoff {
        Backoff::with_max(self.reconnect_max)
    }

    /// A new connection, driven by a background task until it closes.
    pub async fn connect(&self) -> Result<Client, DbError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "database connection closed");
            }
        });
        Ok(client)
    }

    /// A new connection whose messages the caller drives (LISTEN). The
    /// whole handshake must finish within [`HANDSHAKE_DEADLINE`]: the
    /// driver's connect timeout covers only the TCP connect, and a
    /// connection that dies silently during startup would never finish.
    pub async fn open(&self) -> Result<(Client, Connection<Socket, TlsStream>), DbError> {
        let context = self.connect_context;
        let connecting = self.config.connect(self.tls.clone());
        match tokio::time::timeout(HANDSHAKE_DEADLINE, connecting).await {
            Ok(opened) => opened.map_err(|cause| {
                let refused = cause.as_db_error().is_some_and(|db| {
                    *db.code() == tokio_postgres::error::SqlState::PROTOCOL_VIOLATION
                        && db.message().contains("startup parameter")
                });
                if refused {
                    DbError::StartupRefused { context, cause }
                } else {
                    DbError::during(context)(cause)
                }
            }),
            Err(_) => Err(DbError::Unresponsive {
                context,
                after: HANDSHAKE_DEADLINE,
            }),
        }
    }

    /// Asks the server, on a new connection in the background, to cancel
    /// the statement `client` is running.
    pub fn cancel_in_background(&self, client: &Client) {
        let cancel = client.cancel_token();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            if let Err(error) = cancel.cancel_query(tls).await {
                tracing::debug!(%error, "could not cancel an unanswered statement");
            }
        });
    }
}

/// Exponential reconnect backoff: 100 ms doubling up to a cap (by default
/// 10 s, `--reconnect-max`), with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    /// The default cap.
    pub const DEFAULT_MAX: Duration = Duration::from_secs(10);

    /// Starts at the first step, capped at [`DEFAULT_MAX`](Self::DEFAULT_MAX).
    pub fn new() -> Self {
        Self::with_max(Self::DEFAULT_MAX)
    }

    /// Starts at the first step; no delay exceeds `max` (before jitter).
    pub fn with_max(max: Duration) -> Self {
        Self {
            next: Self::FIRST.min(max),
            max,
        }
    }

    /// The delay to wait now; each call doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next.mul_f64(0.75 + fastrand::f64() / 2.0);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = Self::FIRST.min(self.max);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::with_max(Duration::from_millis(500));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        let nominal = [100, 200, 400, 500, 500, 500];
        for (delay, ms) in delays.iter().zip(nominal) {
            let ms = Duration::from_millis(ms);
            assert!(
                *delay >= ms.mul_f64(0.75) && *delay <= ms.mul_f64(1.25),
                "{delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(125));
        let mut tiny = Backoff::with_max(Duration::from_millis(20));
        assert!(tiny.next_delay() <= Duration::from_millis(25));
    }

    #[test]
    fn settings_are_startup_options_unless_behind_a_transaction_pooler() {
        let url = DatabaseUrl::new("postgres://u@h/d?options=-c%20work_mem%3D8MB");
        let direct = Db::new(&url)
            .unwrap()
            .with_pinned_search_path()
            .with_async_commit();
        assert_eq!(
            direct.config.get_options(),
            Some("-c work_mem=8MB -c search_path=pg_catalog,pg_temp -c synchronous_commit=off")
        );
        assert_eq!(direct.local_settings(), "");

        let plain = DatabaseUrl::new("postgres://u@h/d");
        let pooled = Db::new(&plain)
            .unwrap()
            .with_async_commit()
            .with_pooler(Pooler::Transaction)
            .with_pinned_search_path();
        assert_eq!(
            pooled.config.get_options(),
            None,
            "no startup option at all"
        );
        assert_eq!(
            pooled.local_settings(),
            "SET LOCAL synchronous_commit = off; SET LOCAL search_path = pg_catalog, pg_temp"
        );
    }

    #[tokio::test]
    async fn connection_errors_say_why_once() {
        // Bound then dropped: nothing listens on this port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let db = Db::new(&DatabaseUrl::new(format!(
            "postgres://u@127.0.0.1:{port}/d"
        )))
        .unwrap();
        let error = db.connect().await.unwrap_err();
        assert!(error.is_connection_lost());
        let shown = error.to_string();
        assert!(
            shown.starts_with("connecting to PostgreSQL: error connecting to server: "),
            "{shown}"
        );
        assert!(shown.contains("refused"), "the OS's reason: {shown}");
        assert!(
            std::error::Error::source(&error).is_none(),
            "the cause is in the message; as a source it would print twice"
        );
    }
}
