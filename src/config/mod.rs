//! The sidecar's validated settings. Raw flags and environment variables
//! (the command line, or an embedding program) become a [`Config`] here, in one place, so every
//! cross-setting rule (the lease must outlast the request timeout, ...) is
//! checked once, before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

mod admin_limits;
mod console_token;
mod database_url;
mod egress_proxy;
mod since;
pub mod url_params;

pub use self::admin_limits::AdminLimits;
pub use self::console_token::{ConsoleToken, MIN_TOKEN_LEN};
pub use self::database_url::DatabaseUrl;
pub use self::egress_proxy::{EgressProxy, parse_network};
pub use self::since::Since;
use crate::retry::{self, RetryPolicy, ScheduleError};

/// Defaults, shared by the CLI's `--help` and [`Config::new`].
pub mod defaults {
    /// Safety-net poll for scheduled retries, `deliver_after` and missed
    /// wake-ups.
    pub const POLL_INTERVAL: &str = "5s";
    /// How often logical wake-up reads its replication slot.
    pub const LOGICAL_INTERVAL: &str = "20ms";
    /// How long a claim holds a delivery before another replica may take it.
    pub const LEASE: &str = "60s";
    /// Whole-request timeout (connect, send, response, body).
    pub const REQUEST_TIMEOUT: &str = "15s";
    /// TCP + TLS connect timeout.
    pub const CONNECT_TIMEOUT: &str = "5s";
    /// How long shutdown waits for in-flight requests before releasing them.
    pub const SHUTDOWN_GRACE: &str = "20s";
    /// Most rows one claim statement takes.
    pub const BATCH_SIZE: usize = 128;
    /// Longest wait between two attempts to reach the database.
    pub const RECONNECT_MAX: &str = "10s";
    /// Most HTTP requests in flight per sidecar.
    pub const CONCURRENCY: usize = 128;
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub const ADMIN_ADDR: &str = "127.0.0.1:9090";
    /// How long delivered and cancelled deliveries are kept.
    pub const RETENTION: &str = "7d";
    /// How long dead deliveries (and operational events) are kept.
    pub const DEAD_RETENTION: &str = "30d";
    /// How often the retention purge runs.
    pub const PURGE_INTERVAL: &str = "1m";
    /// An endpoint whose every attempt has failed for this long is disabled.
    pub const DISABLE_AFTER: &str = "5d";
}

/// The lease must outlast the request timeout by at least this much, so an
/// outcome is written before another replica may re-claim the row.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How the sidecar learns that new rows exist (the state poll runs in every
/// mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Wakeup {
    /// `LISTEN` on the channel that the insert trigger notifies.
    Notify,
    /// Poll a temporary logical replication slot (needs wal_level=logical).
    Logical,
    /// The state poll alone.
    Poll,
}

/// What stands between outboxd and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Pooler {
    /// A direct connection (or a session-mode pooler): session settings
    /// as startup options, statements prepared once per connection.
    #[default]
    None,
    /// A transaction-mode pooler (PgBouncer, RDS Proxy, Supavisor on
    /// 6543): no startup options, settings per transaction (`SET LOCAL`),
    /// no named statement reused across transactions, no `LISTEN` on it.
    Transaction,
}

/// What the retention purge deletes, and how often it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delivered and cancelled deliveries older than this go, with their
    /// attempts; then messages with no delivery left.
    pub finished: Duration,
    /// Dead deliveries (and operational events) older than this go.
    pub dead: Duration,
    /// Time between purge rounds.
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let parse = |text| humantime::parse_duration(text).expect("defaults are valid durations");
        Self {
            finished: parse(defaults::RETENTION),
            dead: parse(defaults::DEAD_RETENTION),
            every: parse(defaults::PURGE_INTERVAL),
        }
    }
}

/// Everything `outboxd run` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the outbox lives.
    pub database_url: DatabaseUrl,
    /// What `database_url` reaches: the server, or a transaction-mode
    /// pooler in front of it.
    pub pooler: Pooler,
    /// A direct (unpooled) URL for the wake-up alone (`LISTEN` or the
    /// logical slot); `None`: `database_url`. Without it, behind a
    /// transaction-mode pooler, the sidecar polls.
    pub listen_database_url: Option<DatabaseUrl>,
    /// How new rows are noticed between polls.
    pub wakeup: Wakeup,
    /// The safety-net state poll; new rows normally arrive by wake-up.
    pub poll_interval: Duration,
    /// How often the logical wake-up reads its replication slot.
    pub logical_interval: Duration,
    /// Claim lease; a crashed replica's rows are claimable after it.
    pub lease: Duration,
    /// Default per-request timeout (an endpoint's `timeout_ms` overrides).
    pub request_timeout: Duration,
    /// TCP and TLS connect timeout.
    pub connect_timeout: Duration,
    /// When to retry and when to give up.
    pub retry: RetryPolicy,
    /// Rows per claim statement.
    pub batch_size: usize,
    /// HTTP requests in flight at once, across all endpoints.
    pub concurrency: usize,
    /// Shutdown waits this long for in-flight requests, then releases them.
    pub shutdown_grace: Duration,
    /// Lease owner name; unique per process so fencing can tell replicas
    /// apart.
    pub worker_id: String,
    /// An endpoint whose every attempt has failed for this long is
    /// disabled (its deliveries stay pending).
    pub disable_after: Duration,
    /// Where the admin server listens; `None`: no admin server.
    pub admin_addr: Option<SocketAddr>,
    /// The admin server's timeouts and connection cap (not a flag: the
    /// defaults suit probes and scrapes; tests shorten them).
    pub admin_limits: AdminLimits,
    /// The retention purge; `None`: keep everything.
    pub retention: Option<Retention>,
    /// Non-public address ranges that endpoints may reach anyway (the SSRF
    /// guard refuses loopback, private, link-local, ... by default).
    pub allow_networks: Vec<IpNet>,
    /// Send every request through this HTTP proxy (static egress
    /// addresses); targets are still checked before each request.
    pub egress_proxy: Option<EgressProxy>,
    /// Cap of the reconnect backoff (100 ms, doubling): how long the
    /// sidecar may take to notice that the database is back.
    pub reconnect_max: Duration,
    /// Outcome writes do not wait for the WAL flush (claims never do):
    /// faster, at the price of re-sending some deliveries after a database
    /// crash.
    pub async_commit: bool,
    /// Serve the web console under `/console` of the admin server to whoever
    /// signs in with this token; `None`: no console (404).
    pub console_token: Option<ConsoleToken>,
}

/// A setting, or a combination of settings, that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// See [`ScheduleError`].
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The lease would expire while a request may still be running.
    #[error(
        "--lease ({lease:?}) must exceed --request-timeout ({timeout:?}) by at least {LEASE_MARGIN:?}, \
         or another replica could re-send a delivery that is still in flight"
    )]
    LeaseTooShort {
        /// The configured lease.
        lease: Duration,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// A count that must be positive is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A duration that must be positive is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// The console token is too easy to guess.
    #[error(
        "--console-token must be at least {MIN_TOKEN_LEN} characters (e.g. openssl rand -hex 24)"
    )]
    ConsoleTokenShort,
    /// A console without an admin server to serve it.
    #[error("--console-token needs the admin server (remove --no-admin)")]
    ConsoleWithoutAdmin,
}

impl Config {
    /// The defaults, for `database_url`. No admin server: an embedding
    /// process chooses its own port (the CLI defaults to
    /// [`defaults::ADMIN_ADDR`]).
    pub fn new(database_url: DatabaseUrl) -> Self {
        let parse = |text| humantime::parse_duration(text).expect("defaults are valid durations");
        Self {
            database_url,
            pooler: Pooler::None,
            listen_database_url: None,
            wakeup: Wakeup::Notify,
            poll_interval: parse(defaults::POLL_INTERVAL),
            logical_interval: parse(defaults::LOGICAL_INTERVAL),
            lease: parse(defaults::LEASE),
            request_timeout: parse(defaults::REQUEST_TIMEOUT),
            connect_timeout: parse(defaults::CONNECT_TIMEOUT),
            retry: RetryPolicy::parse(retry::DEFAULT_SCHEDULE, retry::DEFAULT_MAX_RETRY_AFTER)
                .expect("the default schedule is valid"),
            batch_size: defaults::BATCH_SIZE,
            concurrency: defaults::CONCURRENCY,
            shutdown_grace: parse(defaults::SHUTDOWN_GRACE),
            worker_id: default_worker_id(),
            disable_after: parse(defaults::DISABLE_AFTER),
            admin_addr: None,
            admin_limits: AdminLimits::default(),
            retention: Some(Retention::default()),
            allow_networks: Vec::new(),
            egress_proxy: None,
            reconnect_max: parse(defaults::RECONNECT_MAX),
            async_commit: false,
            console_token: None,
        }
    }

    /// The wake-up mode that will really run: behind a transaction-mode
    /// pooler without a direct listen URL, a pooled session cannot hold a
    /// `LISTEN` or a replication slot, so the sidecar polls.
    pub fn effective_wakeup(&self) -> Wakeup {
        if self.pooler == Pooler::Transaction && self.listen_database_url.is_none() {
            Wakeup::Poll
        } else {
            self.wakeup
        }
    }

    /// Checks the rules that span settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError::Zero("--batch-size"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::Zero("--concurrency"));
        }
        if self.poll_interval.is_zero() {
            return Err(ConfigError::ZeroDuration("--poll-interval"));
        }
        if self.logical_interval.is_zero() {
            return Err(ConfigError::ZeroDuration("--logical-interval"));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("--request-timeout"));
        }
        if let Some(retention) = &self.retention
            && (retention.finished.is_zero()
                || retention.dead.is_zero()
                || retention.every.is_zero())
        {
            return Err(ConfigError::ZeroDuration(
                "--retention, --dead-retention and --purge-interval",
            ));
        }
        if self.reconnect_max.is_zero() {
            return Err(ConfigError::ZeroDuration("--reconnect-max"));
        }
        if let Some(token) = &self.console_token {
            if token.len() < MIN_TOKEN_LEN {
                return Err(ConfigError::ConsoleTokenShort);
            }
            if self.admin_addr.is_none() {
                return Err(ConfigError::ConsoleWithoutAdmin);
            }
        }
        if self.lease < self.request_timeout + LEASE_MARGIN {
            return Err(ConfigError::LeaseTooShort {
                lease: self.lease,
                timeout: self.request_timeout,
            });
        }
        Ok(())
    }
}

impl Config {
    /// The longest any request may take: the lease minus the margin the
    /// outcome write needs. An endpoint's `timeout_ms` above it is capped
    /// to it, or the lease would expire mid-request and another claim
    /// would send the same delivery again, in parallel.
    pub fn longest_request(&self) -> Duration {
        self.lease.saturating_sub(LEASE_MARGIN)
    }

    /// The effective settings as `name = value` lines, for
    /// `--print-config`; the database password is masked.
    pub fn describe(&self) -> String {
        let duration = |d: Duration| humantime::format_duration(d).to_string();
        let mut lines = vec![
            ("database_url", format!("{:?}", self.database_url)),
            ("pooler", format!("{:?}", self.pooler).to_lowercase()),
            (
                "listen_database_url",
                self.listen_database_url
                    .as_ref()
                    .map_or("(database_url)".into(), |url| format!("{url:?}")),
            ),
            ("wakeup", format!("{:?}", self.wakeup).to_lowercase()),
            ("poll_interval", duration(self.poll_interval)),
            ("logical_interval", duration(self.logical_interval)),
            ("lease", duration(self.lease)),
            ("request_timeout", duration(self.request_timeout)),
            ("connect_timeout", duration(self.connect_timeout)),
            ("retry_schedule", self.retry.describe()),
            ("batch_size", self.batch_size.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("shutdown_grace", duration(self.shutdown_grace)),
            ("disable_after", duration(self.disable_after)),
            ("async_commit", self.async_commit.to_string()),
            ("worker_id", self.worker_id.clone()),
            (
                "admin_addr",
                self.admin_addr.map_or("off".into(), |a| a.to_string()),
            ),
            (
                "console",
                match self.console_token {
                    Some(_) => "on (/console of the admin server; token set)".into(),
                    None => "off".into(),
                },
            ),
        ];
        let networks: Vec<String> = self.allow_networks.iter().map(|n| n.to_string()).collect();
        lines.extend([
            (
                "allow_networks",
                if networks.is_empty() {
                    "none (public addresses only)".into()
                } else {
                    networks.join(",")
                },
            ),
            (
                "egress_proxy",
                self.egress_proxy
                    .as_ref()
                    .map_or("none".into(), |p| p.shown()),
            ),
            ("reconnect_max", duration(self.reconnect_max)),
        ]);
        match &self.retention {
            Some(r) => lines.extend([
                ("retention", duration(r.finished)),
                ("dead_retention", duration(r.dead)),
                ("purge_interval", duration(r.every)),
            ]),
            None => lines.push(("retention", "off (nothing is purged)".into())),
        }
        lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    }
}

/// `hostname-pid-random`: readable in `lease_owner`, unique per process.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "outboxd".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(DatabaseUrl::new(
            "postgres://app:hunter2@db.internal:5432/shop",
        ))
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
        assert_eq!(config().retry.max_attempts(), 8);
    }

    #[test]
    fn lease_must_outlast_request_timeout() {
        let mut c = config();
        c.lease = Duration::from_secs(16);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::LeaseTooShort { .. })
        ));
        c.lease = Duration::from_secs(20);
        c.validate().unwrap();
    }

    #[test]
    fn zero_counts_are_refused() {
        let mut c = config();
        c.batch_size = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("--batch-size")));
        let mut c = config();
        c.reconnect_max = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroDuration("--reconnect-max"))
        );
    }

    #[test]
    fn behind_a_transaction_pooler_without_a_listen_url_the_sidecar_polls() {
        let mut c = config();
        assert_eq!(c.effective_wakeup(), Wakeup::Notify);
        c.pooler = Pooler::Transaction;
        assert_eq!(c.effective_wakeup(), Wakeup::Poll);
        c.wakeup = Wakeup::Logical;
        c.listen_database_url = Some(DatabaseUrl::new("postgres://u@direct/d"));
        assert_eq!(c.effective_wakeup(), Wakeup::Logical);
    }

    #[test]
    fn printed_config_masks_the_password() {
        let shown = config().describe();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("retry_schedule = 0s,5s,5m,30m,2h,5h,10h,10h (max 1h Retry-After)"),
            "{shown}"
        );
        assert!(shown.contains("lease = 1m"), "{shown}");
    }

    #[test]
    fn database_url_debug_hides_the_password() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }

    #[test]
    fn database_url_debug_shows_the_tls_settings() {
        let url = DatabaseUrl::new(
            "postgres://app:hunter2@db.internal/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        );
        assert_eq!(
            format!("{url:?}"),
            "postgres://app@db.internal/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        );
    }
}
